"""Figures from the sweep summary (`summary/metrics.nc`), each drawn from a dense `grid` view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe.summary import grid
from ntkpipe.sweep import SWEEP_KEYS

METRICS = {"spectral_norm": "spectral norm ‖Θ‖₂", "kernel_distance": "distance from init S(Θ₀, Θₜ)",
           "kernel_velocity": "velocity S(Θₜ, Θₜ₊dt)/dt", "kernel_alignment": "alignment CKA(Θ, YYᵀ)"}
REGIME_NAMES = {"lazy": "lazy (NTK param., η ∝ 1/width)", "feature": "feature learning (standard param.)"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _has_data(da: Any) -> bool:
    return bool(np.isfinite(da.values).any())


def relative_curves(ds: Any, variable: str, probe: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) per seed of `variable` against steps since the first boundary, on the union of
    their step grids (NaN where a seed has no snapshot)."""
    series = []
    for seed in ds["seed"].values:
        one = ds.sel(seed=seed)
        da = one[variable].sel(probe=probe) if "probe" in one[variable].dims else one[variable]
        ok = np.isfinite(da.values)
        if not ok.any():
            continue
        boundary = float(one["boundary_step"].sel(boundary=1)) if "boundary" in one.dims else 0.0
        series.append((one["step"].values[ok] - boundary, da.values[ok]))
    if not series:
        return np.array([]), np.empty((0, 0))
    grid = np.unique(np.concatenate([s[0] for s in series]))
    table = np.full((len(series), len(grid)), np.nan)
    for i, (x, y) in enumerate(series):
        table[i, np.searchsorted(grid, x)] = y
    return grid, table


def diverged_note(ds: Any) -> str:
    """' (k diverged)' when runs in `ds` diverged (they plot only up to the divergence)."""
    count = int((ds["diverged_step"] >= 0).sum()) if "diverged_step" in ds else 0
    return f" ({count} diverged)" if count else ""


def _colors(cmap: Any, top: float, palette: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Colours of `values` spread over every value in the summary: stable across figures."""
    return cmap(np.linspace(0, top, len(palette)))[np.searchsorted(palette, values)]


def _band(ax: Any, x: np.ndarray, table: np.ndarray, label: str, color: Any) -> None:
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0))
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color=color, label=label, lw=1.4)
    if len(table) > 1:
        ax.fill_between(x[ok], low[ok], high[ok], color=color, alpha=0.2, lw=0)


def _boundary_axis(ax: Any) -> None:
    ax.set_xscale("symlog", linthresh=10)
    ax.axvline(0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("steps since task boundary")


def _metric_panel(ax: Any, name: str, regime: Any) -> None:
    _boundary_axis(ax)
    ax.set_title(f"{METRICS[name]}\n{REGIME_NAMES.get(str(regime), regime)}", fontsize=9)
    if name == "kernel_velocity":
        ax.set_yscale("log")


def _finish(fig: Any, title: str, path: str | Path) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def curves(ds: Any, path: str | Path, *, line: str, title: str,
           metrics: tuple[str, ...] = tuple(METRICS), **fixed: Any) -> None:
    """Metrics against steps since the first boundary: one row per regime, one line per value
    of `line`, mean and min–max over seeds; later boundaries dotted."""
    plt = _pyplot()
    palette = np.unique(ds[line].values)
    ds = grid(ds, ("regime", line, "seed"), **fixed)
    regimes = [r for r in ds["regime"].values if _has_data(ds["spectral_norm"].sel(regime=r))]
    if not regimes:
        raise ValueError(f"no runs for this figure ({title}); is its sweep in the config?")
    fig, axes = plt.subplots(len(regimes), len(metrics), figsize=(4 * len(metrics),
                             3.4 * len(regimes)), squeeze=False)
    colors = _colors(plt.cm.viridis, 0.9, palette, ds[line].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(metrics, row):
            for value, color in zip(ds[line].values, colors):
                one = ds.sel(regime=regime, **{line: value})
                x, table = relative_curves(one, name)
                if len(x):
                    _band(ax, x, table, f"{line} {value}{diverged_note(one)}", color)
                    _later_boundaries(ax, one)
            _metric_panel(ax, name, regime)
        row[0].legend(fontsize=8)
    _finish(fig, title, path)


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
    plt = _pyplot()
    palette = np.unique(ds["alpha"].values)
    freq = grid(ds, ("regime", "alpha", "seed"), shift="frequency", n_tasks=2)
    concept = grid(ds, ("regime", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    regimes = [r for r in freq["regime"].values if _has_data(freq["spectral_norm"].sel(regime=r))]
    names = ("spectral_norm", "kernel_velocity", "kernel_alignment")
    fig, axes = plt.subplots(len(regimes), len(names), figsize=(4.2 * len(names),
                             3.4 * len(regimes)), squeeze=False)
    colors = _colors(plt.cm.plasma, 0.85, palette, freq["alpha"].values)
    for row, regime in zip(axes, regimes):
        for name, ax in zip(names, row):
            for alpha, color in zip(freq["alpha"].values, colors):
                one = freq.sel(regime=regime, alpha=alpha)
                x, table = relative_curves(one, name)
                if len(x):
                    _band(ax, x, table, f"frequency α={alpha:g}{diverged_note(one)}", color)
            if regime in concept["regime"].values:  # no such runs: no regimes
                x, table = relative_curves(concept.sel(regime=regime), name)
                if len(x):
                    _band(ax, x, table, "class-incremental", "k")
            _metric_panel(ax, name, regime)
        row[0].legend(fontsize=7)
    _finish(fig, "Frequency shift (same classes, proportions D_α) vs class-incremental "
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
    plt = _pyplot()
    ds = grid(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    regimes = [r for r in ds["regime"].values if _has_data(ds["test_accuracy"].sel(regime=r))]
    widths = ds["width"].values
    fig, axes = plt.subplots(len(regimes), len(widths), figsize=(4 * len(widths), 3.2 * len(regimes)),
                             squeeze=False, sharey=True)
    for row, regime in zip(axes, regimes):
        for ax, width in zip(row, widths):
            one = ds.sel(regime=regime, width=width)
            for task in one["task"].values:
                x, table = relative_curves(one.sel(task=task), "test_accuracy")
                if len(x):
                    _band(ax, x, table, f"task {task}", f"C{int(task) - 1}")
            _boundary_axis(ax)
            ax.set_title(f"{regime}, width {width}", fontsize=9)
            ax.set_ylim(0, 1.02)
        row[0].set_ylabel("held-out accuracy")
        row[0].legend(fontsize=8)
    _finish(fig, "Accuracy per task: task 1 is forgotten as task 2 is learnt", path)


def similarity_sweep(ds: Any, path: str | Path) -> None:
    """Reactivation measures at the boundary against task similarity, per regime."""
    plt = _pyplot()
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
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(values, 1), np.nanstd(values, 1)
            ok = np.isfinite(mean)
            ax.errorbar(similarity[ok], mean[ok], yerr=std[ok], marker="o", capsize=3,
                        label=f"{regime}{diverged_note(ds.sel(regime=regime))}",
                        color=f"C{i}")
        ax.set_xlabel("similarity |C₁∩C₂| / |C₁∪C₂|")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    _finish(fig, "Reactivation shrinks as task 2 shares more classes with task 1 "
                 "(mean ± sd over seeds)", path)


FIGURES = {"metrics_by_width": metrics_by_width, "accuracy_by_task": accuracy_by_task,
           "similarity_sweep": similarity_sweep, "frequency_shift": frequency_shift,
           "learning_rate": learning_rate, "task_sequence": task_sequence}


def applicable(points: list[dict[str, Any]]) -> list[str]:
    """The figures a set of runs can fill (a figure needs its sweep among the runs)."""
    conceptual = [p for p in points if p["shift"] == "conceptual" and p["n_tasks"] == 2]
    names = ["metrics_by_width", "accuracy_by_task"] \
        if any(p["shared_classes"] == 0 for p in conceptual) else []
    if len({p["shared_classes"] for p in conceptual}) >= 3:
        names.append("similarity_sweep")
    if any(p["shift"] == "frequency" for p in points):
        names.append("frequency_shift")
    if len({p["lr"] for p in conceptual}) >= 2:
        names.append("learning_rate")
    if any(p["n_tasks"] >= 3 for p in points):
        names.append("task_sequence")
    return names


def draw_all(summary_path: str | Path, outputs: list[str | Path]) -> None:
    """Draw each requested figure (its file name names it) atomically from the summary."""
    from ntkpipe import store

    unknown = [Path(out).stem for out in outputs if Path(out).stem not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; known: {', '.join(FIGURES)}")
    ds = store.open_netcdf(summary_path)
    for out in outputs:
        name = Path(out).stem
        with store.atomic_path(out) as tmp:
            FIGURES[name](ds, tmp.with_suffix(".png"))
            tmp.with_suffix(".png").replace(tmp)
