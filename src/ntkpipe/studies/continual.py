"""The continual study: what the Reactivation study leaves open (Lanzillotta et al. 2025, arXiv
2507.16039, §6) — practical continual-learning strategies, longer task sequences, and whether
the size of the reactivation at a boundary predicts what the new task does to the old ones.

Its rows are questions, not claims: each reports a measured effect with its uncertainty (a 95 %
bootstrap interval over seeds, or over runs for the across-run correlation) and the verdict
`measured` — never pass/fail against a threshold. The measures are the boundary measures of
`ntkpipe.boundaries` (velocity spike, norm dip) at every boundary, and per boundary the
forgetting it brings: the mean over the tasks learnt so far of their held-out accuracy just
before the boundary minus after the next task (a per-boundary version of Chaudhry et al.'s
2018 forgetting, arXiv 1801.10112, eq. 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe import stats
from ntkpipe.boundaries import boundary_measures, settings
from ntkpipe.scorecard import Row, untested
from ntkpipe.studies.base import Figure, Study

NAME = "continual"
# the study's variables: the boundary measures of `ntkpipe.boundaries` on the task-1 probe set
SOURCES = {"boundary_spike": "velocity_spike", "boundary_dip": "norm_dip"}
EFFECT_MEASURES = {"boundary_spike": "velocity spike", "boundary_dip": "norm dip"}
STRATEGIES = ("replay", "ewc", "lwf")


# ---- measures ---------------------------------------------------------------------------------

def boundary_forgetting(accuracy: np.ndarray) -> np.ndarray:
    """(boundary,) forgetting across each boundary b from an accuracy matrix A (trained task,
    task): mean over tasks j ≤ b of A[b, j] − A[b + 1, j] (1-based b; NaN past the run)."""
    trained = accuracy.shape[0]
    out = np.full(max(trained - 1, 0), np.nan)
    for b in range(1, trained):
        before, after = accuracy[b - 1, :b], accuracy[b, :b]
        if np.isfinite(before).all() and np.isfinite(after).all():
            out[b - 1] = float(np.mean(before - after))
    return out


def continual_measures(summary: Any, files: dict[str, dict[str, str]],
                       cfg: dict[str, Any]) -> Any:
    """Per run and boundary: velocity spike and norm dip on the task-1 probe set, and the
    forgetting across the boundary."""
    import xarray as xr

    measured = boundary_measures(summary, files, cfg)
    probe = measured["probe"].values[0]
    boundaries = measured["boundary"].values
    out = {name: (("run", "boundary"), measured[source].sel(probe=probe).values,
                  {"long_name": measured[source].attrs["long_name"] + " (task-1 probe set)"})
           for name, source in SOURCES.items()}
    acc = summary["accuracy_matrix"].transpose("run", "trained_task", "task").values
    forgetting = np.full((summary.sizes["run"], len(boundaries)), np.nan)
    for i in range(summary.sizes["run"]):
        found = boundary_forgetting(acc[i])[:len(boundaries)]
        forgetting[i, :len(found)] = found
    out["boundary_forgetting"] = (("run", "boundary"), forgetting, {
        "long_name": "forgetting across the boundary: mean over the tasks learnt so far of "
                     "their held-out accuracy before it minus after the next task"})
    return xr.Dataset(out, coords={"boundary": boundaries})


# ---- questions --------------------------------------------------------------------------------

def _canonical(ds: Any) -> Any:
    """The runs in an order fixed by what they are (their coordinates along `run`), not by how
    the summary happens to list them: the bootstrap draws positions, so its interval must not
    depend on that order."""
    names = sorted(c for c in ds.coords if ds[c].dims == ("run",))
    keys = [tuple(str(ds[c].values[i]) for c in names) for i in range(ds.sizes["run"])]
    return ds.isel(run=sorted(range(len(keys)), key=keys.__getitem__))


def _run_keys(ds: Any) -> list[tuple[str, ...]]:
    """Each run's sweep values but its strategy: what matches runs across strategies."""
    from ntkpipe.sweep import SWEEP_KEYS

    keys = [k for k in SWEEP_KEYS if k in ds.coords and k != "strategy"]
    return [tuple(str(ds[k].values[i]) for k in keys) for i in range(ds.sizes["run"])]


def _table(ds: Any, name: str, boundary: int = 1) -> dict[tuple, float]:
    """{(strategy, the run's other sweep values): value at `boundary`} of one measure."""
    if "boundary" not in ds.dims or boundary not in ds["boundary"].values:
        return {}
    values = ds[name].sel(boundary=boundary).values
    return {(str(s), key): float(v)
            for s, key, v in zip(ds["strategy"].values, _run_keys(ds), values)}


def _seed_axis(pairs: list[tuple[str, float]]) -> np.ndarray:
    """Differences as a (1, n) array whose last axis the bootstrap resamples."""
    return np.array([[d for _, d in pairs]], dtype=float)


def question_strategies(ds: Any) -> list[Row]:
    """Does each strategy reduce the velocity spike and the norm dip relative to fine-tuning at
    the same boundary (same phase 1, same task sequence, same seed)?"""
    if not _has_measures(ds):
        names = [f"does {s} reduce the {label} at a boundary (vs fine-tuning)?"
                 for s in STRATEGIES for label in EFFECT_MEASURES.values()]
        return untested(NAME, names, "no boundary measures (no run with a task boundary)")
    ds = _canonical(ds)
    rows = []
    present = set(ds["strategy"].values) if "strategy" in ds.coords else set()
    for strategy in STRATEGIES:
        for name, label in EFFECT_MEASURES.items():
            question = f"does {strategy} reduce the {label} at a boundary (vs fine-tuning)?"
            if strategy not in present or "finetune" not in present:
                rows += untested(NAME, [question],
                                 f"no ok {strategy} runs beside ok fine-tuned ones")
                continue
            table = _table(ds, name)
            pairs = [(key, _effect(name, value, table[("finetune", key)]))
                     for (s, key), value in table.items()
                     if s == strategy and ("finetune", key) in table]
            pairs = [(key, d) for key, d in pairs if np.isfinite(d)]
            if len(pairs) < 2:
                rows += untested(NAME, [question], f"{len(pairs)} matched pair(s) at boundary 1")
                continue
            diff = _seed_axis(pairs)
            median = float(np.median(diff))
            low, high = stats.bootstrap(lambda v: np.nanmedian(v), diff)
            rows.append(Row(NAME, question, f"median over matched runs of {EFFECTS[name]} "
                            f"(boundary 1)".replace("<s>", strategy), median, "—", "measured",
                            _effect_note(low, high, f"{strategy} reduces it",
                                         f"{strategy} raises it"),
                            n=len(pairs), low=low, high=high))
    return rows


# How a strategy's value is compared with fine-tuning's: the spike is a ratio with a heavy
# tail (a converged phase 1 leaves a tiny baseline velocity), so its effect is a log ratio;
# the dip is a fraction, so a difference.
EFFECTS = {"boundary_spike": "log₁₀(velocity spike with <s> / with fine-tuning)",
           "boundary_dip": "the norm dip with <s> minus with fine-tuning"}


def _effect(name: str, value: float, reference: float) -> float:
    if name == "boundary_spike":
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.log10(value / reference)) if value > 0 and reference > 0 else np.nan
    return float(value - reference)


def _effect_note(low: float, high: float, below: str, above: str) -> str:
    """What an interval says about the sign of an effect."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "interval undefined"
    if high < 0:
        return f"the interval lies below 0: {below}"
    if low > 0:
        return f"the interval lies above 0: {above}"
    return "the interval contains 0: no effect resolved"


def question_sequence(ds: Any) -> list[Row]:
    """How the measures change along a long sequence: Spearman ρ of each measure against the
    boundary index, per run of ≥ 3 tasks, its median over runs."""
    ds = _canonical(ds)
    rows = []
    long = np.flatnonzero(ds["n_tasks"].values >= 3) \
        if "n_tasks" in ds.coords and _has_measures(ds) else []
    for name, label in EFFECT_MEASURES.items():
        question = f"along a sequence of ≥ 3 tasks, does the {label} grow or shrink?"
        rhos = []
        for i in long:
            values = ds[name].isel(run=i).values
            index = np.arange(1, len(values) + 1)
            rho = stats.spearman(index, values)
            if np.isfinite(rho):
                rhos.append(rho)
        if len(rhos) < 2:
            rows += untested(NAME, [question],
                             f"{len(rhos)} run(s) with ≥ 3 boundaries measured")
            continue
        values = np.array([rhos])
        median = float(np.median(values))
        low, high = stats.bootstrap(lambda v: np.nanmedian(v), values)
        by_boundary = stats.quiet(np.nanmedian, ds[name].isel(run=long).values, axis=0)
        listed = ", ".join(f"{b}: {v:.3g}" for b, v in zip(ds["boundary"].values, by_boundary)
                           if np.isfinite(v))
        rows.append(Row(NAME, question, f"median over runs of Spearman ρ of the {label} "
                        "against the boundary index", median, "—", "measured",
                        f"{_effect_note(low, high, 'it shrinks', 'it grows')}; median per boundary: "
                        f"{listed}", n=len(rhos), low=low, high=high))
    return rows


def question_prediction(ds: Any) -> list[Row]:
    """Across all runs and boundaries: how strongly does the velocity spike predict the
    forgetting of the earlier tasks across that boundary?"""
    question = ("does a larger reactivation (velocity spike) at a boundary go with more "
                "forgetting?")
    if "boundary" not in ds.dims or not _has_measures(ds):
        return untested(NAME, [question], "no run with a task boundary")
    ds = _canonical(ds)
    spike = ds["boundary_spike"].transpose("run", "boundary").values
    forget = ds["boundary_forgetting"].transpose("run", "boundary").values
    ok = np.isfinite(spike) & np.isfinite(forget)
    if ok.sum() < 4:
        return untested(NAME, [question], f"{int(ok.sum())} (run, boundary) pairs")
    rho = stats.spearman(spike[ok], forget[ok])
    # resample runs (with all their boundaries): pairs of one run are not independent
    stacked = np.stack([spike, forget])  # (2, run, boundary)
    runs = np.flatnonzero(ok.any(axis=1))
    by_run = np.moveaxis(stacked[:, runs], 1, -1)  # (2, boundary, run)

    def rho_of(v: np.ndarray) -> float:
        return stats.spearman(v[0].ravel(), v[1].ravel())

    low, high = stats.bootstrap(rho_of, by_run)
    return [Row(NAME, question, "Spearman ρ of the boundary's velocity spike against the "
                "forgetting across it, over every (run, boundary) pair of the ok runs", rho, "—",
                "measured", _effect_note(low, high, "a larger spike goes with less forgetting",
                                         "a larger spike goes with more forgetting")
                + f"; bootstrap over {len(runs)} runs", n=int(ok.sum()), low=low, high=high)]


def questions(ds: Any, thresholds: dict[str, float]) -> list[Row]:
    """Every question of the study, as measured effects (untested without its measures)."""
    rows = question_strategies(ds) + question_sequence(ds) + question_prediction(ds)
    return rows


def _has_measures(ds: Any) -> bool:
    return all(name in ds for name in (*EFFECT_MEASURES, "boundary_forgetting"))


# ---- figures ----------------------------------------------------------------------------------

# the measures the figures draw, one panel each
PANELS = {**EFFECT_MEASURES, "boundary_forgetting": "forgetting across the boundary"}


def _strategies_present(ds: Any) -> list[str]:
    present = set(ds["strategy"].values) if "strategy" in ds.coords else {"finetune"}
    return [s for s in ("finetune", *STRATEGIES) if s in present]


def strategy_effects(ds: Any, path: str | Path) -> None:
    """Velocity spike, norm dip and forgetting at the first boundary per strategy, each run a
    point."""
    plt = plots.pyplot()
    names, labels = zip(*PANELS.items())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6))
    order = _strategies_present(ds)
    matched = _matched(ds)
    for ax, name, label in zip(axes, names, labels):
        for k, strategy in enumerate(order):
            pick = matched & (ds["strategy"].values == strategy)
            values = ds[name].sel(boundary=1).values[pick]
            values = values[np.isfinite(values)]
            ax.plot(np.full(len(values), k) + np.linspace(-0.12, 0.12, len(values)), values,
                    "o", color=f"C{k}", alpha=0.7)
            if len(values):
                ax.plot([k - 0.25, k + 0.25], [np.median(values)] * 2, color="k", lw=1.5)
        ax.set_xticks(range(len(order)), order)
        ax.set_ylabel(label)
    if any((line.get_ydata() > 0).any() for line in axes[0].lines):
        axes[0].set_yscale("log")
    plots.finish(fig, "Strategies at the first boundary (matched runs)"
                 f"{plots.status_note(ds)}", path)


def _matched(ds: Any) -> np.ndarray:
    """The runs of the strategy comparison: every run with a boundary whose other sweep values
    some run of another strategy shares (fine-tuned runs without a counterpart stay out)."""
    key = _run_keys(ds)
    strategy = ds["strategy"].values
    others = {key[i] for i in range(len(key)) if strategy[i] != "finetune"}
    return np.array([key[i] in others for i in range(len(key))]) & (ds["n_tasks"].values >= 2)


def sequence_measures(ds: Any, path: str | Path) -> None:
    """Each measure against the boundary index along the long sequences, per strategy (the
    mean over runs with their min–max band)."""
    plt = plots.pyplot()
    names, labels = zip(*PANELS.items())
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6))
    long = ds["n_tasks"].values >= 3
    boundaries = ds["boundary"].values
    for ax, name, label in zip(axes, names, labels):
        for k, strategy in enumerate(_strategies_present(ds)):
            pick = long & (ds["strategy"].values == strategy)
            if not pick.any():
                continue
            plots.band(ax, boundaries, ds[name].values[pick], strategy, f"C{k}")
        ax.set_xlabel("boundary (task b → b + 1)")
        ax.set_ylabel(label)
        ax.set_xticks(boundaries)
    axes[0].legend(fontsize=8)
    plots.finish(fig, f"Along the task sequence{plots.status_note(ds)}", path)


def reactivation_forgetting(ds: Any, path: str | Path) -> None:
    """The forgetting across each boundary against its velocity spike, every (run, boundary)
    a point, coloured by strategy."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.4, 4))
    for k, strategy in enumerate(_strategies_present(ds)):
        pick = ds["strategy"].values == strategy
        x = ds["boundary_spike"].values[pick].ravel()
        y = ds["boundary_forgetting"].values[pick].ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.plot(x[ok], y[ok], "o", color=f"C{k}", alpha=0.7, label=strategy)
    if any((line.get_xdata() > 0).any() for line in ax.lines):
        ax.set_xscale("log")
    ax.set_xlabel("velocity spike at the boundary")
    ax.set_ylabel("forgetting across the boundary")
    ax.legend(fontsize=8)
    plots.finish(fig, f"Reactivation and forgetting{plots.status_note(ds)}", path)


def _has_strategies(points: list[dict[str, Any]], analyses: set[str]) -> bool:
    return any(p.get("strategy", "finetune") != "finetune" for p in points)


def _has_sequences(points: list[dict[str, Any]], analyses: set[str]) -> bool:
    return any(p["n_tasks"] >= 3 for p in points)


def _has_boundaries(points: list[dict[str, Any]], analyses: set[str]) -> bool:
    return any(p["n_tasks"] >= 2 for p in points)


STUDY = Study(
    name=NAME,
    title="Continual learning: strategies, sequences, prediction",
    claims=questions,
    measures=continual_measures,
    settings=settings,
    figures=(
        Figure("strategy_effects", strategy_effects, "captions/strategy_effects.rst",
               "strategies sweep", _has_strategies),
        Figure("sequence_measures", sequence_measures, "captions/sequence_measures.rst",
               "long sequences", _has_sequences),
        Figure("reactivation_forgetting", reactivation_forgetting,
               "captions/reactivation_forgetting.rst", "every run", _has_boundaries),
    ),
)
