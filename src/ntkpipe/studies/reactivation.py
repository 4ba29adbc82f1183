"""The Reactivation study: empirical NTK dynamics under task shifts (arXiv 2507.16039).

Question: does the NTK stay frozen across a task shift, as the continual-learning theories that
assume a static kernel need? The study finds that it "reactivates" at every task boundary, even
in the lazy regime. Every quantity is on the task-1 probe set (see `docs/science.md` §1):
spectral norm ‖Θ_t‖₂, distance from init S(Θ_0, Θ_t) = 1 − CKA, velocity S(Θ_t, Θ_t+dt)/dt,
alignment CKA(Θ_t, YYᵀ) (the metrics stage computes them along `step`). This module adds

- the **boundary measures** of each run (the study publishes no magnitudes, so ntkpipe
  defines them): velocity spike, norm dip and recovery, alignment deflection, distance jump;
- the **claims** 1–5 as scorecard rows;
- the **figures** that show them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe.metrics import as_array
from ntkpipe.scorecard import Row, check, nanmedian, spearman, subset
from ntkpipe.studies.base import Figure, Study, Threshold
from ntkpipe.summary import grid
from ntkpipe.sweep import SWEEP_KEYS

NAME = "reactivation"
MEASURES = ("velocity_spike", "velocity_peak", "norm_dip", "recovery_steps",
            "alignment_deflection", "distance_jump")


# ---- measures ---------------------------------------------------------------------------------

def reactivation_measures(steps: Any, boundary: int, *, velocity: Any, norm: Any,
                          alignment: Any, distance: Any, window: int = 10,
                          tolerance: float = 0.05) -> dict[str, float]:
    """Size of the reactivation at one task boundary (measures defined by ntkpipe, since the
    study publishes none): velocity spike = max velocity in the `window` snapshots from the
    boundary over the median velocity of the `window` snapshots before it; norm dip = 1 − min
    norm after / norm at the boundary; recovery = steps until the norm is back within
    `tolerance` (relative) of its boundary value (NaN if never); alignment deflection = largest
    |A_t − A_boundary| after; distance jump = S(Θ_0, ·) change over the window after."""
    steps, velocity, norm = as_array(steps), as_array(velocity), as_array(norm)
    alignment, distance = as_array(alignment), as_array(distance)
    b = int(np.searchsorted(steps, boundary))
    if b >= len(steps) or steps[b] != boundary:
        raise ValueError(f"boundary step {boundary} is not a snapshot step")
    before = slice(max(0, b - window), b)
    after = slice(b, min(len(steps), b + window + 1))
    baseline = np.nanmedian(velocity[before]) if b > 0 else np.nan
    peak = np.nanmax(velocity[after]) if np.isfinite(velocity[after]).any() else np.nan
    norm_b = norm[b]
    later = norm[b:]
    dip_index = b + int(np.nanargmin(later[: window + 1])) if np.isfinite(later).any() else b
    within = np.abs(norm - norm_b) <= tolerance * abs(norm_b)
    # no dip beyond the tolerance: nothing to recover from (recovery 0)
    recovered = [b] if within[dip_index] else \
        np.flatnonzero((np.arange(len(norm)) > dip_index) & within)
    return {
        "velocity_spike": float(peak / baseline) if baseline > 0 else float("nan"),
        "velocity_peak": float(peak),
        "norm_dip": float(1.0 - norm[dip_index] / norm_b) if norm_b else float("nan"),
        "recovery_steps": float(steps[recovered[0]] - boundary) if len(recovered) else float("nan"),
        "alignment_deflection": float(np.nanmax(np.abs(alignment[after] - alignment[b]))),
        "distance_jump": float(distance[after][-1] - distance[b]),
    }


def snapshot_mask(one: Any) -> np.ndarray:
    """Along the summary's `step`, the steps one run (`summary.isel(run=i)`) has a snapshot at."""
    return (np.isfinite(one["test_accuracy"]).any("task").values
            | np.isfinite(one["spectral_norm"]).any("probe").values)


def boundary_measures(summary: Any, files: dict[str, dict[str, str]],
                      settings: dict[str, Any]) -> Any:
    """The reactivation measures of every run at every boundary, per probe set: dims
    (run, probe, boundary)."""
    import xarray as xr

    probes, boundaries = summary["probe"].values, summary["boundary"].values \
        if "boundary" in summary.dims else np.array([], dtype=int)
    values = np.full((summary.sizes["run"], len(probes), len(boundaries), len(MEASURES)), np.nan)
    series = ("kernel_velocity", "spectral_norm", "kernel_alignment", "kernel_distance")
    for i in range(summary.sizes["run"]):
        one = summary.isel(run=i)
        has = snapshot_mask(one)
        steps = summary["step"].values[has]
        for b, boundary in enumerate(one["boundary_step"].values if len(boundaries) else []):
            if not np.isfinite(boundary) or int(boundary) not in steps:
                continue
            for p in range(len(probes)):
                velocity, norm, alignment, distance = (one[s].isel(probe=p).values[has]
                                                       for s in series)
                if not np.isfinite(norm).any():
                    continue  # a probe set this run does not have
                found = reactivation_measures(
                    steps, int(boundary), velocity=velocity, norm=norm, alignment=alignment,
                    distance=distance, window=settings["window"],
                    tolerance=settings["recovery_tolerance"])
                values[i, p, b] = [found[k] for k in MEASURES]
    names = {"velocity_spike": "velocity spike: peak velocity after the boundary over the "
                               "median before", "velocity_peak": "peak velocity after the boundary",
             "norm_dip": "norm dip: 1 − min norm after the boundary / norm at it",
             "recovery_steps": "steps until the norm is back within tolerance of its "
                               "boundary value", "alignment_deflection": "largest |A_t − A_b| "
                               "after the boundary", "distance_jump": "change of S(Θ_0, Θ_t) "
                               "over the window after the boundary"}
    return xr.Dataset({name: (("run", "probe", "boundary"), values[..., k],
                              {"long_name": names[name]}) for k, name in enumerate(MEASURES)},
                      coords={"probe": probes, "boundary": boundaries})


def headline(one: Any) -> dict[str, Any]:
    """A run's boundary measures on probe set 1, one value per boundary (`ntkpipe show`)."""
    if "boundary" not in one.dims or not one.sizes["boundary"]:
        return {}
    return {name: [float(v) for v in one[name].sel(probe=1).values]
            for name in ("velocity_spike", "norm_dip", "recovery_steps", "alignment_deflection")
            if name in one}


# ---- claims -----------------------------------------------------------------------------------

def _boundary(ds: Any, name: str, boundary: int = 1) -> Any:
    return ds[name].sel(probe=1, boundary=boundary)

def claim_spike_everywhere(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 1: spike, checkmark and deflection at the boundary, both regimes, every width;
    larger spikes with feature learning."""
    sub = subset(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0,
                  n_tasks=2)
    name = "1. boundary reactivation in both regimes at every width"
    if sub is None or sub.sizes["width"] * sub.sizes["regime"] < 2:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no width sweep")]
    per_cell = {m: nanmedian(_boundary(sub, m).transpose("regime", "width", "seed").values, 2)
                for m in ("velocity_spike", "norm_dip", "recovery_steps", "alignment_deflection")}
    cells = f"{sub.sizes['regime']} regimes × {sub.sizes['width']} widths, median over seeds"
    spike = float(np.nanmin(per_cell["velocity_spike"]))
    dip = float(np.nanmin(per_cell["norm_dip"]))
    recovered = float(np.mean(np.isfinite(per_cell["recovery_steps"])))
    deflection = float(np.nanmin(per_cell["alignment_deflection"]))
    feature = _boundary(sub, "velocity_spike").sel(regime="feature") \
        if "feature" in sub["regime"].values else None
    lazy = _boundary(sub, "velocity_spike").sel(regime="lazy") \
        if "lazy" in sub["regime"].values else None
    rows = [
        Row("reactivation", name + ": velocity spikes", "min over cells of the velocity spike "
            "(peak after / median before)", spike, f">= {t['spike']}",
            check(spike, t["spike"], ">="), cells),
        Row("reactivation", name + ": norm drops", "min over cells of the norm dip depth",
            dip, f">= {t['dip']}", check(dip, t["dip"], ">="), cells),
        Row("reactivation", name + ": norm recovers", "fraction of cells whose norm returns "
            "within tolerance of its boundary value", recovered, ">= 1.0",
            check(recovered, 1.0, ">="), cells),
        Row("reactivation", name + ": alignment deflects", "min over cells of the largest "
            "|A_t − A_boundary| in the window", deflection, f">= {t['deflection']}",
            check(deflection, t["deflection"], ">="), cells),
    ]
    if feature is not None and lazy is not None:
        wins = (feature > lazy).where(np.isfinite(feature) & np.isfinite(lazy))
        frac = float(wins.mean())
        rows.append(Row("reactivation", "1. larger spikes in the feature-learning regime",
                        "fraction of (width, seed) with feature spike > lazy spike", frac,
                        "> 0.5", check(frac, 0.5 + 1e-12, ">="),
                        f"{int(np.isfinite(wins).sum())} pairs"))
    return rows


def claim_similarity(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 2: the effect shrinks monotonically with similarity, with diminishing returns,
    and vanishes at similarity 1."""
    sub = subset(ds, ("regime", "shared_classes", "seed"), shift="conceptual", n_tasks=2)
    name = "2. reactivation shrinks as similarity grows"
    if sub is None or sub.sizes["shared_classes"] < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no similarity sweep")]
    similarity = np.asarray(sub["similarity"].values, dtype=float).reshape(-1)
    spike = _boundary(sub, "velocity_spike").transpose("shared_classes", "regime", "seed").values
    x = np.broadcast_to(similarity[:, None, None], spike.shape)
    ok = np.isfinite(spike)
    rho = spearman(x, spike)
    median = nanmedian(spike.reshape(len(similarity), -1), 1)  # over regimes and seeds
    order = np.argsort(similarity)
    total = median[order[0]] - median[order[-1]]
    first_new = median[order[-2]] - median[order[-1]]  # similarity 1 → one class fewer shared
    share = float(first_new / total) if total > 0 else np.nan
    linear = 1.0 / (len(similarity) - 1)
    at_one = float(median[order[-1]])
    return [
        Row("reactivation", name, "Spearman ρ of velocity spike vs similarity "
            "(all regimes and seeds)", rho, f"<= {t['similarity_rho']}",
            check(rho, t["similarity_rho"], "<="), f"{int(ok.sum())} runs"),
        Row("reactivation", "2. diminishing returns: the first new classes matter most",
            "share of the total spike change gained by the first new class", share,
            f"> {linear:.3g} (its linear share)", check(share, linear + 1e-12, ">="),
            "median over regimes and seeds"),
        Row("reactivation", "2. similarity 1 (no change) shows nothing",
            "median velocity spike at similarity 1", at_one, f"<= {t['no_spike']}",
            check(at_one, t["no_spike"], "<="), ""),
    ]


def claim_frequency(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 3: frequency shifts give low velocity and smooth evolution."""
    name = "3. frequency shifts: low velocity, no discontinuity"
    freq = subset(ds, ("alpha", "regime", "seed"), shift="frequency", n_tasks=2)
    if freq is None or freq.sizes["alpha"] < 2:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no frequency sweep")]
    spikes = _boundary(freq, "velocity_spike").where(freq["alpha"] > 0)
    value = float(nanmedian(spikes.values))
    rows = [Row("reactivation", name, "median velocity spike over α > 0 (all regimes, seeds)",
                value, f"<= {t['no_spike']}", check(value, t["no_spike"], "<="),
                f"α = {', '.join(str(a) for a in freq['alpha'].values)}")]
    concept = subset(ds, ("regime", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    if concept is not None:
        ratio = value / float(nanmedian(_boundary(concept, "velocity_spike").values))
        rows.append(Row("reactivation", "3. frequency spikes below class-incremental ones",
                        "median frequency spike / median class-incremental spike", ratio,
                        "<= 0.5", check(ratio, 0.5, "<="), ""))
    return rows


def claim_learning_rate(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 4: high lr → deeper checkmark, slower recovery; medium → fastest recovery."""
    name = "4. learning rate shapes the checkmark"
    sub = subset(ds, ("lr", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    if sub is None or sub.sizes["lr"] < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested",
                    "no sweep over ≥ 3 learning rates")]
    lrs = sub["lr"].values
    dip = _boundary(sub, "norm_dip").transpose("lr", "seed").values
    rho = spearman(np.broadcast_to(lrs[:, None], dip.shape).astype(float), dip)
    recovery = nanmedian(_boundary(sub, "recovery_steps").transpose("lr", "seed").values, 1)
    recovery = np.where(np.isfinite(recovery), recovery, np.inf)  # never recovered: slowest
    fastest = int(np.argmin(recovery))
    middle = 0 < fastest < len(lrs) - 1
    return [
        Row("reactivation", "4. higher learning rate, deeper norm dip",
            "Spearman ρ of norm dip vs lr", rho, f">= {t['lr_rho']}",
            check(rho, t["lr_rho"], ">="), f"lr = {', '.join(map(str, lrs))}"),
        Row("reactivation", "4. a medium learning rate recovers fastest",
            "index of the fastest-recovering lr (0 = lowest)", float(fastest),
            f"strictly between 0 and {len(lrs) - 1}", str(middle).lower(),
            "median recovery steps: " + ", ".join(f"{r:g}" for r in recovery)),
        Row("reactivation", "4. higher learning rate, slower recovery than medium",
            "recovery steps at the highest lr minus at the fastest lr",
            float(recovery[-1] - recovery[fastest]), "> 0",
            check(float(recovery[-1] - recovery[fastest]), 1e-12, ">="), ""),
    ]


def claim_sequence(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 5: reactivation repeats at every boundary of a longer task sequence."""
    name = "5. reactivation at every boundary of a task sequence"
    longest = int(ds["n_tasks"].max())
    if longest < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no sequence of ≥ 3 tasks")]
    sub = subset(ds, ("regime", "seed", "boundary"), n_tasks=longest)
    spikes = sub["velocity_spike"].sel(probe=1).transpose("boundary", ...).values
    per_boundary = nanmedian(spikes.reshape(spikes.shape[0], -1), 1)[: longest - 1]
    value = float(np.nanmin(per_boundary))
    return [Row("reactivation", name, "min over boundaries of the median velocity spike",
                value, f">= {t['spike']}", check(value, t["spike"], ">="),
                f"{longest} tasks; per boundary: "
                + ", ".join(f"{v:.3g}" for v in per_boundary))]


def claims(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims 1–5 of the study."""
    return [row for claim in (claim_spike_everywhere, claim_similarity, claim_frequency,
                              claim_learning_rate, claim_sequence) for row in claim(ds, t)]


# ---- figures ----------------------------------------------------------------------------------

METRICS = {"spectral_norm": "spectral norm ‖Θ‖₂", "kernel_distance": "distance from init S(Θ₀, Θₜ)",
           "kernel_velocity": "velocity S(Θₜ, Θₜ₊dt)/dt", "kernel_alignment": "alignment CKA(Θ, YYᵀ)"}
REGIME_NAMES = {"lazy": "lazy (NTK param., η ∝ 1/width)", "feature": "feature learning (standard param.)"}

def _metric_panel(ax: Any, name: str, regime: Any) -> None:
    plots.boundary_axis(ax)
    ax.set_title(f"{METRICS[name]}\n{REGIME_NAMES.get(str(regime), regime)}", fontsize=9)
    if name == "kernel_velocity":
        ax.set_yscale("log")


def curves(ds: Any, path: str | Path, *, line: str, title: str,
           metrics: tuple[str, ...] = tuple(METRICS), **fixed: Any) -> None:
    """Metrics against steps since the first boundary: one row per regime, one line per value
    of `line`, mean and min–max over seeds; later boundaries dotted."""
    plt = plots.pyplot()
    palette = np.unique(ds[line].values)
    ds = grid(ds, ("regime", line, "seed"), **fixed)
    regimes = [r for r in ds["regime"].values if plots.has_data(ds["spectral_norm"].sel(regime=r))]
    if not regimes:
        raise ValueError(f"no runs for this figure ({title}); is its sweep in the config?")
    fig, axes = plt.subplots(len(regimes), len(metrics), figsize=(4 * len(metrics),
                             3.4 * len(regimes)), squeeze=False)
    colors = plots.colors(plt.cm.viridis, 0.9, palette, ds[line].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(metrics, row):
            for value, color in zip(ds[line].values, colors):
                one = ds.sel(regime=regime, **{line: value})
                x, table = plots.relative_curves(one, name)
                if len(x):
                    plots.band(ax, x, table, f"{line} {value}{plots.diverged_note(one)}", color)
                    _later_boundaries(ax, one)
            _metric_panel(ax, name, regime)
        row[0].legend(fontsize=8)
    plots.finish(fig, title, path)


def _later_boundaries(ax: Any, one: Any) -> None:
    """Dotted lines at boundaries after the first (task sequences), relative to the first."""
    if "boundary" not in one.dims or one.sizes["boundary"] < 2:
        return
    steps = one["boundary_step"].values.reshape(-1, one.sizes["boundary"]) \
        if one["boundary_step"].ndim > 1 else one["boundary_step"].values[None]
    for row in steps:
        if np.isfinite(row).all():
            for b in row[1:]:
                ax.axvline(b - row[0], color="grey", ls=":", lw=0.8)
            return


def metrics_by_width(ds: Any, path: str | Path) -> None:
    """The four metrics around the boundary: one row per regime, one line per width."""
    curves(ds, path, line="width", shift="conceptual", shared_classes=0, n_tasks=2,
           title="NTK on task-1 probe data across a class-incremental task shift "
                 "(mean and min–max over seeds)")


def frequency_shift(ds: Any, path: str | Path) -> None:
    """Frequency shifts (lines per α) beside the class-incremental shift."""
    plt = plots.pyplot()
    palette = np.unique(ds["alpha"].values)
    freq = grid(ds, ("regime", "alpha", "seed"), shift="frequency", n_tasks=2)
    concept = grid(ds, ("regime", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    regimes = [r for r in freq["regime"].values if plots.has_data(freq["spectral_norm"].sel(regime=r))]
    names = ("spectral_norm", "kernel_velocity", "kernel_alignment")
    fig, axes = plt.subplots(len(regimes), len(names), figsize=(4.2 * len(names),
                             3.4 * len(regimes)), squeeze=False)
    colors = plots.colors(plt.cm.plasma, 0.85, palette, freq["alpha"].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(names, row):
            for alpha, color in zip(freq["alpha"].values, colors):
                one = freq.sel(regime=regime, alpha=alpha)
                x, table = plots.relative_curves(one, name)
                if len(x):
                    plots.band(ax, x, table, f"frequency α={alpha:g}{plots.diverged_note(one)}", color)
            if regime in concept["regime"].values:  # no such runs: no regimes
                x, table = plots.relative_curves(concept.sel(regime=regime), name)
                if len(x):
                    plots.band(ax, x, table, "class-incremental", "k")
            _metric_panel(ax, name, regime)
        row[0].legend(fontsize=7)
    plots.finish(fig, "Frequency shift (same classes, proportions D_α) vs class-incremental "
                 "shift", path)


def learning_rate(ds: Any, path: str | Path) -> None:
    """The checkmark for each learning rate."""
    curves(ds, path, line="lr", shift="conceptual", shared_classes=0, n_tasks=2,
           metrics=("spectral_norm", "kernel_velocity", "kernel_distance"),
           title="Learning rate and the checkmark (class-incremental shift)")


def task_sequence(ds: Any, path: str | Path) -> None:
    """A sequence of more than two tasks: reactivation at every boundary."""
    longest = int(ds["n_tasks"].max())
    if longest < 3:
        raise ValueError("no sequence of ≥ 3 tasks in the summary; add a sweep with n_tasks ≥ 3")
    curves(ds, path, line="width", n_tasks=longest,
           metrics=("spectral_norm", "kernel_velocity", "kernel_alignment"),
           title=f"A sequence of {longest} tasks (boundaries after the first dotted)")


def accuracy_by_task(ds: Any, path: str | Path) -> None:
    """Held-out accuracy on each task over time, one panel per regime and width."""
    plt = plots.pyplot()
    ds = grid(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    regimes = [r for r in ds["regime"].values if plots.has_data(ds["test_accuracy"].sel(regime=r))]
    widths = ds["width"].values
    fig, axes = plt.subplots(len(regimes), len(widths), figsize=(4 * len(widths), 3.2 * len(regimes)),
                             squeeze=False, sharey=True)
    for row, regime in zip(axes, regimes):
        for ax, width in zip(row, widths):
            one = ds.sel(regime=regime, width=width)
            for task in one["task"].values:
                x, table = plots.relative_curves(one.sel(task=task), "test_accuracy")
                if len(x):
                    plots.band(ax, x, table, f"task {task}", f"C{int(task) - 1}")
            plots.boundary_axis(ax)
            ax.set_title(f"{regime}, width {width}", fontsize=9)
            ax.set_ylim(0, 1.02)
        row[0].set_ylabel("held-out accuracy")
        row[0].legend(fontsize=8)
    plots.finish(fig, "Accuracy per task: task 1 is forgotten as task 2 is learnt", path)


def similarity_sweep(ds: Any, path: str | Path) -> None:
    """Reactivation measures at the boundary against task similarity, per regime."""
    plt = plots.pyplot()
    # Fix every other key first, then classes_per_task to its best-populated value among those.
    first = grid(ds, ("regime", "shared_classes", "seed", "classes_per_task"),
                 shift="conceptual", n_tasks=2)
    fixed = {k: first[k].item() for k in SWEEP_KEYS if k in first.coords and k not in first.dims}
    ds = grid(ds, ("regime", "shared_classes", "seed"), **fixed)
    measures = {"velocity_spike": "velocity spike (peak / pre-boundary median)",
                "norm_dip": "norm dip depth", "alignment_deflection": "alignment deflection",
                "distance_jump": "distance jump"}
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4))
    similarity = ds["similarity"].values
    for ax, (name, title) in zip(axes, measures.items()):
        for i, regime in enumerate(ds["regime"].values):
            values = ds[name].sel(regime=regime, probe=1, boundary=1).transpose(
                "shared_classes", "seed").values
            if not np.isfinite(values).any():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(values, 1), np.nanstd(values, 1)
            ok = np.isfinite(mean)
            ax.errorbar(similarity[ok], mean[ok], yerr=std[ok], marker="o", capsize=3,
                        label=f"{regime}{plots.diverged_note(ds.sel(regime=regime))}",
                        color=f"C{i}")
        ax.set_xlabel("similarity |C₁∩C₂| / |C₁∪C₂|")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    plots.finish(fig, "Reactivation shrinks as task 2 shares more classes with task 1 "
                 "(mean ± sd over seeds)", path)


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
    settings=lambda config: {"window": config["metrics"]["window"],
                             "recovery_tolerance": config["metrics"]["recovery_tolerance"]},
    headline=headline,
    thresholds={
        "spike": Threshold(2.0, "a velocity 'spike' is a peak at least this many times the "
                                "pre-boundary median"),
        "dip": Threshold(0.05, "the norm 'drops sharply': by at least this fraction of its "
                               "boundary value"),
        "deflection": Threshold(0.01, "the alignment 'deflects': moves by at least this much "
                                      "CKA"),
        "no_spike": Threshold(1.5, "'shows nothing': velocity spike at most this"),
        "similarity_rho": Threshold(-0.7, "'shrinks monotonically': Spearman ρ of spike vs "
                                          "similarity at most this"),
        "lr_rho": Threshold(0.5, "'high lr, more pronounced checkmark': Spearman ρ of dip vs lr "
                                 "at least this"),
    },
    figures=(
        Figure("metrics_by_width", metrics_by_width, "captions/metrics_by_width.rst",
               "width sweep", _has_class_incremental),
        Figure("accuracy_by_task", accuracy_by_task, "captions/accuracy_by_task.rst",
               "width sweep", _has_class_incremental),
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
