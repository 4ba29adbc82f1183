"""The Reactivation study: empirical NTK dynamics under task shifts (G. Lanzillotta et al.
2025, arXiv 2507.16039; `docs/science.md` §1).

Question: does the NTK stay frozen across a task shift, as the continual-learning theories that
assume a static kernel need? The study finds that it "reactivates" at every task boundary, even
in the lazy regime. Every quantity is on the task-1 probe set: spectral norm ‖Θ_t‖₂, distance
from init S(Θ_0, Θ_t) = 1 − CKA, velocity S(Θ_t, Θ_t+dt)/dt and alignment CKA(Θ_t, YYᵀ) come
from the metrics stage along `step`. This module adds

- the **boundary measures** of each run — defined by ntkpipe, since the study publishes no
  magnitudes — on the snapshots every boundary has whatever the rest of the schedule: the k
  steps at dt = 1 on each side (velocities) and the fixed grid after it (norm, alignment,
  distance), so that no measure depends on how densely the rest of training was sampled;
- the **claims** 1–5 as scorecard rows, each with n, a bootstrap interval over seeds or a
  permutation p-value, and a verdict that needs them;
- the **figures** that show them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe.boundaries import MEASURES  # noqa: F401 -- re-exported: the measures it reads
from ntkpipe.boundaries import boundary_measures, settings, snapshot_mask
from ntkpipe import stats
from ntkpipe.scorecard import Row, subset, untested
from ntkpipe.studies.base import Figure, Study, Threshold
from ntkpipe.summary import grid
from ntkpipe.sweep import SWEEP_KEYS

NAME = "reactivation"
CLASS_INCREMENTAL = {"shift": "conceptual", "shared_classes": 0, "n_tasks": 2}


def headline(one: Any) -> dict[str, Any]:
    """A run's boundary measures on probe set 1, one value per boundary, and its backward
    transfer and forgetting (`ntkpipe show`)."""
    if "boundary" not in one.dims or not one.sizes["boundary"] or "velocity_spike" not in one:
        return {}
    out: dict[str, Any] = {
        name: [float(v) for v in one[name].sel(probe=1).values]
        for name in ("velocity_spike", "velocity_excess", "norm_dip", "norm_recovered",
                     "recovery_steps", "alignment_deflection")}
    for name in ("backward_transfer", "forgetting"):  # the accuracy matrix, summarised
        if name in one and np.isfinite(float(one[name])):
            out[name] = float(one[name])
    return out


# ---- claims -----------------------------------------------------------------------------------

def _at(ds: Any, name: str, boundary: int = 1) -> Any:
    return ds[name].sel(probe=1, boundary=boundary)


def _seeds_last(da: Any, *dims: str) -> np.ndarray:
    """`da` as an array with `dims` first and `seed` last (a missing seed dim: one seed)."""
    if "seed" not in da.dims:
        da = da.expand_dims("seed")
    return da.transpose(*dims, "seed").values


def _seed_count(values: np.ndarray) -> int:
    return int(np.isfinite(values).sum())


def _min_of_medians(values: np.ndarray, skip_empty: bool = False) -> float:
    """The smallest median over seeds among the cells; NaN if a cell has none (with
    `skip_empty`, such cells are left out: a measure that does not apply there)."""
    medians = stats.quiet(np.nanmedian, values.reshape(-1, values.shape[-1]), axis=1)
    if skip_empty:
        medians = medians[np.isfinite(medians)]
    return float(np.min(medians)) if len(medians) and np.isfinite(medians).all() else np.nan


def _cells_row(claim: str, what: str, values: np.ndarray, threshold: float, sense: str,
               note: str, skip_empty: bool = False) -> Row:
    """A row on the worst cell: min (sense '>=') or max over cells of the median over seeds,
    with its bootstrap interval over seeds."""
    sign = 1.0 if sense == ">=" else -1.0
    statistic = lambda v: sign * _min_of_medians(sign * v, skip_empty)  # noqa: E731
    value = statistic(values)
    interval = stats.bootstrap(statistic, values)
    word = "min" if sense == ">=" else "max"
    return Row(NAME, claim, f"{word} over cells of the median over seeds of {what}", value,
               f"{sense} {threshold}", stats.verdict(value, interval, threshold, sense), note,
               n=_seed_count(values), low=interval[0], high=interval[1])


def claim_spike_everywhere(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 1: spike, checkmark and deflection at the boundary, both regimes, every width;
    larger spikes with feature learning."""
    sub = subset(ds, ("regime", "width", "seed"), **CLASS_INCREMENTAL)
    name = "1. boundary reactivation in both regimes at every width"
    if sub is None or sub.sizes["width"] * sub.sizes["regime"] < 2:
        return untested(NAME, [name], "no width sweep")
    cells = (f"{sub.sizes['regime']} regimes × {sub.sizes['width']} widths; windows of "
             f"{int(ds.attrs.get('dense_steps', 0) or 0) or 'k'} dt = 1 steps")
    get = {m: _seeds_last(_at(sub, m), "regime", "width") for m in (
        "velocity_spike", "velocity_excess", "norm_dip", "norm_recovered",
        "alignment_deflection")}
    rows = [
        _cells_row(name + ": velocity spikes", "the velocity spike (peak after / median before, "
                   "dt = 1)", get["velocity_spike"], t["spike"], ">=", cells),
    ]
    excess = get["velocity_excess"]
    if np.isfinite(excess).any():
        rows.append(_cells_row(name + ": the shift, not training, moves the kernel",
                               "the velocity excess over the matched similarity-1 control",
                               excess, t["spike"], ">=", cells))
    else:
        rows += untested(NAME, [name + ": the shift, not training, moves the kernel"],
                         "no matched control: add shared_classes = classes_per_task to the "
                         "width sweep")
    rows += [
        _cells_row(name + ": norm drops", "the norm dip depth", get["norm_dip"], t["dip"],
                   ">=", cells),
        _cells_row(name + ": norm recovers", "whether the norm is back within tolerance "
                   "inside the post-boundary window (1/0; runs that dipped)",
                   get["norm_recovered"], 0.5, ">=", cells + "; cells without a dip left out",
                   skip_empty=True),
        _cells_row(name + ": alignment deflects", "the largest |A_t − A_b| after the boundary",
                   get["alignment_deflection"], t["deflection"], ">=", cells),
    ]
    if {"feature", "lazy"} <= set(sub["regime"].values):
        spikes = _at(sub, "velocity_spike")
        wins = _seeds_last(spikes.sel(regime="feature") - spikes.sel(regime="lazy"), "width")
        pairs = np.isfinite(wins)
        share = float(np.mean(wins[pairs] > 0)) if pairs.any() else np.nan
        from scipy.stats import binomtest

        p = (float(binomtest(int((wins[pairs] > 0).sum()), int(pairs.sum()), 0.5,
                             alternative="greater").pvalue) if pairs.any() else np.nan)
        holds = ("true" if share > 0.5 and p <= stats.ALPHA else
                 "untested" if not np.isfinite(share) else
                 "false" if share < 0.5 else "inconclusive")
        rows.append(Row(NAME, "1. larger spikes in the feature-learning regime",
                        "share of (width, seed) pairs with a larger feature-regime spike",
                        share, "> 0.5 (sign test)", holds, "one-sided sign test",
                        n=int(pairs.sum()), p_value=p))
    rows += _laziness_rows(sub, t)
    return rows


def _log_slope(widths: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of log(value) against log(width), pooled over seeds."""
    x = np.broadcast_to(np.log(widths)[:, None], values.shape)
    ok = np.isfinite(values) & (values > 0)
    if len(np.unique(x[ok])) < 2:
        return np.nan
    return float(np.polyfit(x[ok], np.log(values[ok]), 1)[0])


def _laziness_rows(sub: Any, t: dict[str, float]) -> list[Row]:
    """The lazy regime is lazy: S(Θ_0, Θ_b) ∝ 1/width and a phase 1 that does not lengthen
    with width; the feature regime's kernel moves more at every width."""
    names = ["1. the lazy regime is lazy: S(Θ_0, Θ_b) falls like 1/width",
             "1. the lazy regime is lazy: phase 1 does not lengthen with width",
             "1. the feature-learning kernel moves more than the lazy one at every width"]
    if "lazy" not in sub["regime"].values or sub.sizes["width"] < 3:
        return untested(NAME, names, "needs the lazy regime at ≥ 3 widths")
    lazy = sub.sel(regime="lazy")
    widths = sub["width"].values.astype(float)
    moved = _seeds_last(_at(lazy, "boundary_kernel_distance"), "width")
    length = _seeds_last(lazy["task_steps"].sel(trained_task=1), "width")
    band = t["lazy_slope_band"]
    slope = _log_slope(widths, moved)
    interval = stats.bootstrap(lambda v: _log_slope(widths, v), moved)
    grow = _log_slope(widths, length)
    grow_interval = stats.bootstrap(lambda v: _log_slope(widths, v), length)
    rows = [
        Row(NAME, names[0], "log–log slope of S(Θ_0, Θ_b) against width (lazy)", slope,
            f"in [{-1 - band:g}, {-1 + band:g}]",
            stats.band_verdict(slope, interval, -1 - band, -1 + band),
            f"widths {', '.join(f'{w:g}' for w in widths)}; S ∝ width^slope",
            n=_seed_count(moved), low=interval[0], high=interval[1]),
        Row(NAME, names[1], "log–log slope of phase 1's steps against width (lazy)", grow,
            f"<= {t['length_slope']}", stats.verdict(grow, grow_interval, t["length_slope"],
                                                     "<="),
            "phase 1 stops on its convergence rule; steps ∝ width^slope",
            n=_seed_count(length), low=grow_interval[0], high=grow_interval[1]),
    ]
    if "feature" in sub["regime"].values:
        ratio = _seeds_last(_at(sub.sel(regime="feature"), "boundary_kernel_distance")
                            / _at(lazy, "boundary_kernel_distance"), "width")
        rows.append(_cells_row(names[2], "S(Θ_0, Θ_b) feature / lazy (per width, seed)", ratio,
                               1.0, ">=", f"{len(widths)} widths"))
    else:
        rows += untested(NAME, names[2:], "no feature-regime runs in the width sweep")
    return rows


def _similarity_view(ds: Any) -> Any | None:
    """The similarity sweep over (regime, shared_classes, seed), classes_per_task at its
    best-populated value."""
    first = subset(ds, ("regime", "shared_classes", "seed", "classes_per_task"),
                   shift="conceptual", n_tasks=2)
    if first is None:
        return None
    fixed = {k: first[k].item() for k in SWEEP_KEYS if k in first.coords and k not in first.dims}
    return grid(ds, ("regime", "shared_classes", "seed"), **fixed)


def claim_similarity(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 2: the effect shrinks monotonically with similarity, with diminishing returns,
    and vanishes at similarity 1."""
    sub = _similarity_view(ds)
    names = ["2. reactivation shrinks as similarity grows",
             "2. diminishing returns: the first new classes matter most",
             "2. similarity 1 (no change) shows nothing"]
    if sub is None or sub.sizes["shared_classes"] < 3:
        return untested(NAME, names, "no similarity sweep")
    similarity = np.asarray(sub["similarity"].values, dtype=float).reshape(-1)
    order = np.argsort(similarity)
    spike = _seeds_last(_at(sub, "velocity_spike"), "shared_classes", "regime")
    per_level = spike.reshape(len(similarity), -1)  # (level, regime × seed)
    rho, p, interval = stats.trend_test(similarity, per_level, "<=")

    def share(v: np.ndarray) -> float:
        median = stats.quiet(np.nanmedian, v.reshape(len(similarity), -1), axis=1)
        total = median[order[0]] - median[order[-1]]
        return float((median[order[-2]] - median[order[-1]]) / total) if total > 0 else np.nan

    linear = 1.0 / (len(similarity) - 1)
    value = share(spike)
    share_interval = stats.bootstrap(share, spike)
    at_one = spike[order[-1]][None]
    one = _cells_row(names[2], "the velocity spike at similarity 1", at_one, t["no_spike"],
                     "<=", "every regime")
    one.statistic = "max over regimes of the median over seeds of the velocity spike at " \
                    "similarity 1"
    return [
        Row(NAME, names[0], "Spearman ρ of the velocity spike against similarity", rho,
            f"<= {t['similarity_rho']}",
            stats.trend_verdict(rho, p, interval, t["similarity_rho"], "<="),
            "permutation p-value (levels shuffled within regime and seed)",
            n=_seed_count(spike), low=interval[0], high=interval[1], p_value=p),
        Row(NAME, names[1], "share of the spike's fall from similarity 0 to 1 made by the "
            "first new class", value, f">= {linear:.3g} (its linear share)",
            stats.verdict(value, share_interval, linear, ">="),
            "median over regimes and seeds", n=_seed_count(spike), low=share_interval[0],
            high=share_interval[1]),
        one,
    ]


def claim_frequency(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 3: frequency shifts give low velocity and smooth evolution."""
    name = "3. frequency shifts: low velocity, no discontinuity"
    freq = subset(ds, ("alpha", "regime", "seed"), shift="frequency", n_tasks=2)
    if freq is None or freq.sizes["alpha"] < 2:
        return untested(NAME, [name, "3. frequency spikes below class-incremental ones"],
                        "no frequency sweep")
    shifted = freq.sel(alpha=freq["alpha"].values[freq["alpha"].values > 0])
    spikes = _seeds_last(_at(shifted, "velocity_spike"), "alpha", "regime")
    rows = [_cells_row(name, "the velocity spike (α > 0, every regime)", spikes,
                       t["no_spike"], "<=", "α = " + ", ".join(
                           f"{a:g}" for a in shifted["alpha"].values))]
    concept = subset(ds, ("regime", "seed"), **CLASS_INCREMENTAL)
    if concept is not None:
        base = _seeds_last(_at(concept, "velocity_spike"), "regime")
        seeds = min(spikes.shape[-1], base.shape[-1])
        both = np.concatenate([spikes.reshape(-1, spikes.shape[-1])[:, :seeds],
                               base.reshape(-1, base.shape[-1])[:, :seeds]])
        cut = spikes.reshape(-1, spikes.shape[-1]).shape[0]
        ratio = lambda v: float(stats.quiet(np.nanmedian, v[:cut])  # noqa: E731
                                / stats.quiet(np.nanmedian, v[cut:]))
        value, interval = ratio(both), stats.bootstrap(ratio, both)
        rows.append(Row(NAME, "3. frequency spikes below class-incremental ones",
                        "median frequency spike / median class-incremental spike", value,
                        "<= 0.5", stats.verdict(value, interval, 0.5, "<="),
                        "seeds paired", n=_seed_count(both), low=interval[0], high=interval[1]))
    return rows


def claim_learning_rate(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 4: high lr → deeper checkmark, slower recovery; medium → fastest recovery; low →
    change concentrated in the first steps."""
    names = ["4. higher learning rate, deeper norm dip",
             "4. a medium learning rate recovers fastest",
             "4. higher learning rate, slower recovery than medium",
             "4. low learning rate: the change concentrated in the first steps"]
    sub = subset(ds, ("lr", "seed"), **CLASS_INCREMENTAL)
    if sub is None or sub.sizes["lr"] < 3:
        return untested(NAME, names, "no sweep over ≥ 3 learning rates")
    lrs = sub["lr"].values.astype(float)
    units = (f"windows in steps, not matched in optimisation time η·t (the highest lr covers "
             f"{lrs[-1] / lrs[0]:g}× the η·t of the lowest)")
    dip = _seeds_last(_at(sub, "norm_dip"), "lr")
    rho, p, interval = stats.trend_test(lrs, dip, ">=")
    recovered = _seeds_last(_at(sub, "norm_recovered"), "lr")
    steps = _seeds_last(_at(sub, "recovery_steps"), "lr")
    # a dipped run that never recovers within the window counts as slowest
    recovery = np.where(recovered == 0, np.inf, steps)

    def fastest(v: np.ndarray) -> float:
        median = stats.quiet(np.nanmedian, v, axis=1)
        return float(np.argmin(np.where(np.isnan(median), np.inf, median))) \
            if np.isfinite(median).any() else np.nan

    middle = lambda v: 0 < fastest(v) < len(lrs) - 1  # noqa: E731
    share = stats.support(middle, recovery)
    median = stats.quiet(np.nanmedian, recovery, axis=1)
    times = stats.quiet(np.nanmedian, _seeds_last(_at(sub, "recovery_time"), "lr"), axis=1)
    best = fastest(recovery)
    slower = lambda v: float(stats.quiet(np.nanmedian, v[-1])  # noqa: E731
                             - stats.quiet(np.nanmedian, v[int(fastest(v))])) \
        if np.isfinite(fastest(v)) else np.nan
    gap = slower(recovery) if np.isfinite(best) else np.nan
    gap_interval = stats.bootstrap(slower, recovery)
    early = _seeds_last(_at(sub, "early_share"), "lr")
    lead = lambda v: float(stats.quiet(np.nanmedian, v[0])  # noqa: E731
                           - np.nanmax(stats.quiet(np.nanmedian, v[1:], axis=1)))
    lead_value, lead_interval = lead(early), stats.bootstrap(lead, early)
    listed = ", ".join(f"{lr:g}: {m:g} steps (η·t {tau:.3g})" for lr, m, tau in
                       zip(lrs, median, times))
    return [
        Row(NAME, names[0], "Spearman ρ of the norm dip against lr", rho, f">= {t['lr_rho']}",
            stats.trend_verdict(rho, p, interval, t["lr_rho"], ">="),
            "permutation p-value (lrs shuffled within seeds); lr = "
            + ", ".join(f"{lr:g}" for lr in lrs), n=_seed_count(dip), low=interval[0],
            high=interval[1], p_value=p),
        Row(NAME, names[1], "share of seed resamplings in which a middle lr recovers fastest",
            share, f">= {stats.LEVEL}", stats.support_verdict(share),
            "median recovery per lr: " + listed + "; " + units, n=_seed_count(steps)),
        Row(NAME, names[2], "recovery steps at the highest lr minus at the fastest lr", gap,
            "> 0", stats.verdict(gap, gap_interval, 1e-12, ">="), units,
            n=_seed_count(steps), low=gap_interval[0], high=gap_interval[1]),
        Row(NAME, names[3], "early share S(Θ_b, Θ_b+k)/S(Θ_b, Θ_b+W) at the lowest lr minus "
            "the largest at a higher lr", lead_value, "> 0",
            stats.verdict(lead_value, lead_interval, 1e-12, ">="), units,
            n=_seed_count(early), low=lead_interval[0], high=lead_interval[1]),
    ]


def _sequence_row(ds: Any, t: dict[str, float], classes: int, tasks: int, shared: int,
                  label: str) -> list[Row]:
    name = f"5. reactivation at every boundary of a task sequence: {label}"
    sub = subset(ds, ("regime", "seed", "boundary"), n_tasks=tasks, classes_per_task=classes,
                 shared_classes=shared, shift="conceptual")
    if sub is None:
        return untested(NAME, [name], f"no sequence of {tasks} tasks of {classes} classes "
                                      f"sharing {shared}")
    spikes = sub["velocity_spike"].sel(probe=1, boundary=list(range(1, tasks)))
    values = _seeds_last(spikes, "boundary", "regime")
    per_boundary = stats.quiet(np.nanmedian, values.reshape(tasks - 1, -1), axis=1)
    row = _cells_row(name, "the velocity spike (every boundary and regime)", values,
                     t["spike"], ">=", f"{tasks} tasks of {classes} classes sharing {shared}; "
                     "median per boundary: " + ", ".join(f"{v:.3g}" for v in per_boundary))
    return [row]


def claim_sequence(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 5: reactivation repeats at every boundary of a longer task sequence — on a
    sequence of disjoint tasks and on one whose tasks overlap."""
    if int(ds["n_tasks"].max()) < 3:
        return untested(NAME, ["5. reactivation at every boundary of a task sequence"],
                        "no sequence of ≥ 3 tasks")
    long = ds["n_tasks"].values >= 3
    kinds = sorted({(int(c), int(n), int(k)) for c, n, k in zip(
        ds["classes_per_task"].values[long], ds["n_tasks"].values[long],
        ds["shared_classes"].values[long])}, key=lambda kind: (kind[2] > 0, kind))
    rows = []
    for classes, tasks, shared in kinds:
        label = "disjoint" if shared == 0 else f"overlapping ({shared} of {classes} shared)"
        rows += _sequence_row(ds, t, classes, tasks, shared, label)
    return rows


def claims(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims 1–5 of the study."""
    return [row for claim in (claim_spike_everywhere, claim_similarity, claim_frequency,
                              claim_learning_rate, claim_sequence) for row in claim(ds, t)]


# ---- figures ----------------------------------------------------------------------------------

METRICS = {"spectral_norm": "spectral norm ‖Θ‖₂",
           "kernel_distance": "distance from init S(Θ₀, Θₜ)",
           "kernel_velocity": "velocity S(Θₜ, Θₜ₊₁) at dt = 1",
           "kernel_alignment": "alignment CKA(Θ, YYᵀ)"}
REGIME_NAMES = {"lazy": "lazy (NTK param., width-independent η)",
                "feature": "feature learning (standard param.)",
                "ntk": "NTK param. at the given η"}


def seed_series(one: Any, variable: str, boundary: int = 1,
                probe: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """(steps since the boundary, values) per seed of one grid cell at its own snapshots; a
    velocity only where it spans one step (dt = 1: the only velocities comparable to each
    other)."""
    out = []
    for seed in (one["seed"].values if "seed" in one.dims else [None]):
        cell = one.sel(seed=seed) if seed is not None else one
        da = cell[variable].sel(probe=probe) if "probe" in cell[variable].dims else cell[variable]
        has = snapshot_mask(cell) if "spectral_norm" in cell else np.isfinite(da.values)
        steps, values = cell["step"].values[has], da.values[has]
        if variable == "kernel_velocity":
            keep = np.zeros(len(steps), dtype=bool)
            keep[:-1] = np.diff(steps) == 1
            steps, values = steps[keep], values[keep]
        ok = np.isfinite(values)
        if not ok.any():
            continue
        start = float(cell["boundary_step"].sel(boundary=boundary)) \
            if "boundary" in cell.dims else 0.0
        out.append((steps[ok] - start, values[ok]))
    return out


def draw_series(ax: Any, series: list[tuple[np.ndarray, np.ndarray]], color: Any,
                label: str | None, join: int = 1) -> None:
    """Each seed's measured points (markers; lines only between steps at most `join` apart,
    never across a gap), and the seed mean with its min–max band where every seed has a
    snapshot at the same step since the boundary."""
    for x, y in series:
        ax.plot(x, y, ".", ms=2, color=color, alpha=0.35, lw=0)
    if not series:
        return
    common = sorted(set.intersection(*(set(x.tolist()) for x, _ in series)))
    if not common:
        return
    table = np.array([[y[np.searchsorted(x, c)] for c in common] for x, y in series])
    x = np.array(common, dtype=float)
    mean, low, high = table.mean(0), table.min(0), table.max(0)
    breaks = np.flatnonzero(np.diff(x) > join) + 1
    for k, part in enumerate(np.split(np.arange(len(x)), breaks)):
        style = "-" if len(part) > 1 else "o"
        ax.plot(x[part], mean[part], style, color=color, lw=1.4, ms=3,
                label=label if k == 0 else None)
        if len(series) > 1 and len(part) > 1:
            ax.fill_between(x[part], low[part], high[part], color=color, alpha=0.2, lw=0)


def _window_axis(ax: Any, dense: int) -> None:
    """Steps since the boundary on a symlog axis, the dense dt = 1 windows shaded."""
    ax.set_xscale("symlog", linthresh=max(dense, 1))
    if dense:
        ax.axvspan(-dense, dense, color="0.92", zorder=0, lw=0)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("steps since task boundary")


def _dense(ds: Any) -> int:
    return int(ds.attrs.get("dense_steps", 0) or 0)


def _join(ds: Any) -> int:
    return max(1, int(ds.attrs.get("after_boundary_every", 1) or 1))


def _metric_panel(ax: Any, name: str, regime: Any, dense: int) -> None:
    _window_axis(ax, dense)
    ax.set_title(f"{METRICS[name]}\n{REGIME_NAMES.get(str(regime), regime)}", fontsize=9)
    if name == "kernel_velocity":
        ax.set_yscale("log")


def curves(ds: Any, path: str | Path, *, line: str, title: str,
           metrics: tuple[str, ...] = tuple(METRICS), **fixed: Any) -> None:
    """Metrics against steps since the first boundary: one row per regime, one colour per
    value of `line`; seeds as points, their mean where all have a snapshot."""
    plt = plots.pyplot()
    palette = np.unique(ds[line].values)
    dense, join = _dense(ds), _join(ds)
    view = grid(ds, ("regime", line, "seed"), **fixed)
    regimes = [r for r in view["regime"].values
               if plots.has_data(view["spectral_norm"].sel(regime=r))]
    if not regimes:
        raise ValueError(f"no runs for this figure ({title}); is its sweep in the config?")
    fig, axes = plt.subplots(len(regimes), len(metrics), figsize=(4.3 * len(metrics),
                             3.6 * len(regimes)), squeeze=False)
    colors = plots.colors(plt.cm.viridis, 0.9, palette, view[line].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(metrics, row):
            for value, color in zip(view[line].values, colors):
                one = view.sel(regime=regime, **{line: value})
                draw_series(ax, seed_series(one, name), color,
                            f"{line} {value}{plots.status_note(one)}", join)
                _later_boundaries(ax, one)
            _metric_panel(ax, name, regime, dense)
        row[0].legend(fontsize=8)
    plots.finish(fig, title, path)


def _later_boundaries(ax: Any, one: Any) -> None:
    """Dotted lines at boundaries after the first (task sequences), relative to the first."""
    if "boundary" not in one.dims or one.sizes["boundary"] < 2:
        return
    steps = one["boundary_step"].values.reshape(-1, one.sizes["boundary"])
    for row in steps:
        if np.isfinite(row).all():
            for b in row[1:]:
                ax.axvline(b - row[0], color="grey", ls=":", lw=0.8)
            return


def metrics_by_width(ds: Any, path: str | Path) -> None:
    """The four metrics around the boundary: one row per regime, one line per width."""
    curves(ds, path, line="width", **CLASS_INCREMENTAL,
           title="NTK on task-1 probe data across a class-incremental task shift "
                 "(seeds as points; mean and min–max where all have a snapshot)")


def frequency_shift(ds: Any, path: str | Path) -> None:
    """Frequency shifts (colours per α) beside the class-incremental shift (black)."""
    plt = plots.pyplot()
    palette = np.unique(ds["alpha"].values)
    dense, join = _dense(ds), _join(ds)
    freq = grid(ds, ("regime", "alpha", "seed"), shift="frequency", n_tasks=2)
    concept = grid(ds, ("regime", "seed"), **CLASS_INCREMENTAL)
    regimes = [r for r in freq["regime"].values
               if plots.has_data(freq["spectral_norm"].sel(regime=r))]
    names = ("spectral_norm", "kernel_velocity", "kernel_alignment")
    fig, axes = plt.subplots(len(regimes), len(names), figsize=(4.3 * len(names),
                             3.6 * len(regimes)), squeeze=False)
    colors = plots.colors(plt.cm.plasma, 0.85, palette, freq["alpha"].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(names, row):
            for alpha, color in zip(freq["alpha"].values, colors):
                one = freq.sel(regime=regime, alpha=alpha)
                draw_series(ax, seed_series(one, name), color,
                            f"frequency α={alpha:g}{plots.status_note(one)}", join)
            if regime in concept["regime"].values:  # no such runs: no regimes
                draw_series(ax, seed_series(concept.sel(regime=regime), name), "k",
                            "class-incremental", join)
            _metric_panel(ax, name, regime, dense)
        row[0].legend(fontsize=7)
    plots.finish(fig, "Frequency shift (same classes, proportions D_α) vs class-incremental "
                      "shift", path)


def learning_rate(ds: Any, path: str | Path) -> None:
    """The checkmark for each learning rate."""
    curves(ds, path, line="lr", **CLASS_INCREMENTAL,
           metrics=("spectral_norm", "kernel_velocity", "kernel_distance"),
           title="Learning rate and the checkmark (class-incremental shift; steps, not η·t)")


def task_sequence(ds: Any, path: str | Path) -> None:
    """Sequences of more than two tasks: reactivation at every boundary, one row per kind."""
    plt = plots.pyplot()
    long = ds["n_tasks"].values >= 3
    if not long.any():
        raise ValueError("no sequence of ≥ 3 tasks in the summary; add a sweep with n_tasks ≥ 3")
    kinds = sorted({(int(c), int(n), int(k)) for c, n, k in zip(
        ds["classes_per_task"].values[long], ds["n_tasks"].values[long],
        ds["shared_classes"].values[long])}, key=lambda kind: (kind[2] > 0, kind))
    names = ("spectral_norm", "kernel_velocity", "kernel_alignment")
    fig, axes = plt.subplots(len(kinds), len(names), figsize=(4.3 * len(names),
                             3.6 * len(kinds)), squeeze=False)
    dense, join = _dense(ds), _join(ds)
    for row, (classes, tasks, shared) in zip(axes, kinds):
        view = grid(ds, ("regime", "seed"), n_tasks=tasks, classes_per_task=classes,
                    shared_classes=shared, shift="conceptual")
        label = "disjoint" if shared == 0 else f"{shared} of {classes} classes shared"
        for name, ax in zip(names, row):
            for i, regime in enumerate(view["regime"].values):
                one = view.sel(regime=regime)
                draw_series(ax, seed_series(one, name), f"C{i}",
                            f"{regime}{plots.status_note(one)}", join)
                _later_boundaries(ax, one)
            _window_axis(ax, dense)
            if name == "kernel_velocity":
                ax.set_yscale("log")
            ax.set_title(f"{METRICS[name]}\n{tasks} tasks of {classes} classes, {label}",
                         fontsize=9)
        row[0].legend(fontsize=8)
    plots.finish(fig, "Task sequences: reactivation at every boundary (later boundaries "
                      "dotted)", path)


def accuracy_by_task(ds: Any, path: str | Path) -> None:
    """Held-out accuracy on each task over time, one panel per regime and width."""
    plt = plots.pyplot()
    view = grid(ds, ("regime", "width", "seed"), **CLASS_INCREMENTAL)
    regimes = [r for r in view["regime"].values
               if plots.has_data(view["test_accuracy"].sel(regime=r))]
    widths = view["width"].values
    fig, axes = plt.subplots(len(regimes), len(widths), figsize=(4 * len(widths),
                             3.2 * len(regimes)), squeeze=False, sharey=True)
    dense, join = _dense(ds), _join(ds)
    for row, regime in zip(axes, regimes):
        for ax, width in zip(row, widths):
            one = view.sel(regime=regime, width=width)
            for task in one["task"].values:
                draw_series(ax, seed_series(one.sel(task=task), "test_accuracy"),
                            f"C{int(task) - 1}", f"task {task}", join)
            _window_axis(ax, dense)
            scores = ", ".join(
                f"{label} {plots.mean_sd(np.atleast_1d(one[name].values))[0]:.2f}"
                for name, label in (("backward_transfer", "BWT"), ("forgetting", "forgetting"))
                if name in one and np.isfinite(one[name].values).any())
            ax.set_title(f"{regime}, width {width}" + (f" ({scores}, mean over seeds)"
                                                      if scores else ""), fontsize=9)
            ax.set_ylim(0, 1.02)
        row[0].set_ylabel("held-out accuracy")
        row[0].legend(fontsize=8)
    plots.finish(fig, "Accuracy per task: task 1 is forgotten as task 2 is learnt", path)


def similarity_sweep(ds: Any, path: str | Path) -> None:
    """Boundary measures against task similarity, per regime."""
    plt = plots.pyplot()
    view = _similarity_view(ds)
    measures = {"velocity_spike": "velocity spike (peak / pre-boundary median, dt = 1)",
                "velocity_excess": "velocity excess over the similarity-1 control",
                "norm_dip": "norm dip depth", "alignment_deflection": "alignment deflection"}
    fig, axes = plt.subplots(1, len(measures), figsize=(4.3 * len(measures), 3.6))
    similarity = view["similarity"].values
    for ax, (name, title) in zip(axes, measures.items()):
        for i, regime in enumerate(view["regime"].values):
            values = _seeds_last(view[name].sel(regime=regime, probe=1, boundary=1),
                                 "shared_classes")
            if not np.isfinite(values).any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(values, 1), np.nanstd(values, 1)
            for level, row in zip(similarity, values):
                ax.plot(np.full(len(row), level), row, ".", color=f"C{i}", alpha=0.35, ms=3)
            ok = np.isfinite(mean)
            ax.errorbar(similarity[ok], mean[ok], yerr=std[ok], marker="o", capsize=3,
                        label=f"{regime}{plots.status_note(view.sel(regime=regime))}",
                        color=f"C{i}")
        ax.set_xlabel("similarity |C₁∩C₂| / |C₁∪C₂|")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    plots.finish(fig, "Reactivation shrinks as task 2 shares more classes with task 1 "
                      "(seeds as points; mean ± sd)", path)


def laziness(ds: Any, path: str | Path) -> None:
    """How far the kernel moves over task 1, and how long task 1 trains, against width: the
    lazy regime's S(Θ_0, Θ_b) should fall like 1/width at a width-independent length."""
    plt = plots.pyplot()
    view = grid(ds, ("regime", "width", "seed"), **CLASS_INCREMENTAL)
    widths = view["width"].values.astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for i, regime in enumerate(view["regime"].values):
        one = view.sel(regime=regime)
        moved = _seeds_last(_at(one, "boundary_kernel_distance"), "width")
        length = _seeds_last(one["task_steps"].sel(trained_task=1), "width")
        for ax, values in zip(axes, (moved, length)):
            for w, row in zip(widths, values):
                ax.plot(np.full(len(row), w), row, ".", color=f"C{i}", alpha=0.4, ms=4)
            ax.plot(widths, stats.quiet(np.nanmedian, values, axis=1), "o-", color=f"C{i}",
                    label=REGIME_NAMES.get(str(regime), regime))
    reference = stats.quiet(np.nanmedian, _seeds_last(_at(view.sel(regime=view["regime"].values[0]),
                                                          "boundary_kernel_distance"), "width"),
                            axis=1)
    if np.isfinite(reference[0]):
        axes[0].plot(widths, reference[0] * widths[0] / widths, "k:", lw=1, label="∝ 1/width")
    for ax, label in zip(axes, ("S(Θ₀, Θ_b) at the end of task 1", "phase-1 steps")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(widths, [f"{w:g}" for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("width")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    plots.finish(fig, "Is the lazy regime lazy? Kernel movement and phase-1 length by width",
                 path)


# ---- the study --------------------------------------------------------------------------------

def _two_task_conceptual(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in points if p["shift"] == "conceptual" and p["n_tasks"] == 2]


def _has_class_incremental(points: list[dict[str, Any]], analyses: set[str]) -> bool:
    return any(p["shared_classes"] == 0 for p in _two_task_conceptual(points))


STUDY = Study(
    name=NAME,
    title="Reactivation",
    claims=claims,
    measures=boundary_measures,
    settings=settings,
    headline=headline,
    thresholds={
        "spike": Threshold(2.0, "a velocity 'spike' is a peak at least this many times the "
                                "pre-boundary median (and the shift moves the kernel at least "
                                "this many times as fast as its matched control)"),
        "dip": Threshold(0.05, "the norm 'drops sharply': by at least this fraction of its "
                               "boundary value"),
        "deflection": Threshold(0.01, "the alignment 'deflects': moves by at least this much "
                                      "CKA"),
        "no_spike": Threshold(1.5, "'shows nothing': velocity spike at most this"),
        "similarity_rho": Threshold(-0.7, "'shrinks monotonically': Spearman ρ of spike vs "
                                          "similarity at most this"),
        "lr_rho": Threshold(0.5, "'high lr, more pronounced checkmark': Spearman ρ of dip vs lr "
                                 "at least this"),
        "lazy_slope_band": Threshold(0.5, "'the lazy regime is lazy': the log–log slope of "
                                          "S(Θ_0, Θ_b) against width within this of −1"),
        "length_slope": Threshold(0.2, "'phase 1 does not lengthen with width': the log–log "
                                       "slope of its steps against width at most this"),
    },
    figures=(
        Figure("metrics_by_width", metrics_by_width, "captions/metrics_by_width.rst",
               "width sweep", _has_class_incremental),
        Figure("accuracy_by_task", accuracy_by_task, "captions/accuracy_by_task.rst",
               "width sweep", _has_class_incremental),
        Figure("laziness", laziness, "captions/laziness.rst", "width sweep",
               lambda points, analyses: len({p["width"] for p in _two_task_conceptual(points)
                                             if p["shared_classes"] == 0}) >= 2),
        Figure("similarity_sweep", similarity_sweep, "captions/similarity_sweep.rst",
               "similarity sweep",
               lambda points, analyses: len({p["shared_classes"] for p in
                                             _two_task_conceptual(points)}) >= 3),
        Figure("frequency_shift", frequency_shift, "captions/frequency_shift.rst",
               "frequency shift",
               lambda points, analyses: any(p["shift"] == "frequency" for p in points)),
        Figure("learning_rate", learning_rate, "captions/learning_rate.rst",
               "learning-rate sweep",
               lambda points, analyses: len({p["lr"] for p in
                                             _two_task_conceptual(points)}) >= 2),
        Figure("task_sequence", task_sequence, "captions/task_sequence.rst", "task sequence",
               lambda points, analyses: any(p["n_tasks"] >= 3 for p in points)),
    ),
)
