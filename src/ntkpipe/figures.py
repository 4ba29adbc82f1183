"""Figures from the sweep summary (`summary/metrics.nc`), each drawn from a dense `grid` view:
the Reactivation study (science.md §1), the edge of stability (§2) and rapid feature evolution
(§3)."""

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
    return union_table(series)


def union_table(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(x, table) of several (x, y) series on the union of their x (NaN where one has no point)."""
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


def _band(ax: Any, x: np.ndarray, table: np.ndarray, label: str | None, color: Any,
          ls: str = "-") -> None:
    """Mean over rows (seeds) as a line, their min–max as a shaded band."""
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = (np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0))
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color=color, label=label, lw=1.4, ls=ls)
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


# ---- Edge of stability (science.md §2) and rapid feature evolution (§3) ----------------------

def study_runs(ds: Any, variable: str, figure: str) -> Any:
    """The runs holding finite values of `variable`: the runs of the study that measures it."""
    if variable in ds:
        da = ds[variable]
        finite = np.isfinite(da)
        others = [d for d in da.dims if d != "run"]
        runs = np.flatnonzero((finite.any(others) if others else finite).values)
        if len(runs):
            return ds.isel(run=runs)
    raise ValueError(f"no runs with {variable!r} for the {figure} figure; is its sweep "
                     "(and its analysis) in the config?")


def seed_table(da: Any, dim: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(x, seeds × x) of a series over seeds along `dim`, positions no seed fills dropped."""
    da = da.transpose("seed", dim) if "seed" in da.dims else da.expand_dims("seed")
    keep = np.isfinite(da.values).any(0)
    return da[dim].values[keep], da.values[:, keep]


def last_snapshot(da: Any, dim: str = "step") -> Any:
    """`da` at its last `dim` position holding a finite value (the run's final snapshot)."""
    finite = np.isfinite(da)
    others = [d for d in da.dims if d != dim]
    ok = np.flatnonzero((finite.any(others) if others else finite).values)
    return da.isel({dim: int(ok[-1]) if len(ok) else -1})


def _per_seed(cell: Any, pick: Any) -> list[Any]:
    """`pick(one seed's cell)` for each seed of a grid cell."""
    return [pick(cell.sel(seed=s)) for s in cell["seed"].values] if "seed" in cell.dims \
        else [pick(cell)]


def _nanmean(table: np.ndarray) -> np.ndarray:
    """Mean over the first axis (seeds), NaN where no seed has a value."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(table, 0)


def _mean_sd(values: list[Any]) -> tuple[float, float]:
    """Mean and standard deviation of the finite values (NaN, NaN when none)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return (float(finite.mean()), float(finite.std())) if len(finite) else (np.nan, np.nan)


def _with_data(ds: Any, key: str, variable: str) -> list[Any]:
    """The values of grid dim `key` whose runs hold `variable`; linear activations last."""
    values = [v for v in ds[key].values if _has_data(ds[variable].sel({key: v}))]
    return sorted(values, key=lambda v: str(v) == "linear")


def _style_legend(ax: Any, styles: dict[str, str], lines: bool = True, **kw: Any) -> None:
    """A legend of one black line per line style, after the labelled lines on `ax` if `lines`."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels() if lines else ([], [])
    handles += [Line2D([], [], color="k", ls=ls, lw=1.2) for ls in styles.values()]
    ax.legend(handles, labels + list(styles), fontsize=7, **kw)


def _eos_grid(ds: Any) -> Any:
    """The edge-of-stability runs over (activation, lr, seed)."""
    return grid(study_runs(ds, "sharpness", "edge-of-stability"), ("activation", "lr", "seed"),
                count="sharpness")


def _eos_panels(ds: Any) -> tuple[Any, Any, list, Any, Any, list]:
    """pyplot, the edge-of-stability grid, its activations with data, a figure with a row of
    three panels per activation, and one colour per η."""
    plt = _pyplot()
    eos = _eos_grid(ds)
    activations = _with_data(eos, "activation", "sharpness")
    fig, axes = plt.subplots(len(activations), 3, figsize=(13.5, 3.8 * len(activations)),
                             squeeze=False)
    return plt, eos, activations, fig, axes, _colors(plt.cm.viridis, 0.85, eos["lr"].values,
                                                     eos["lr"].values)


def edge_of_stability(ds: Any, path: str | Path) -> None:
    """Sharpness against 2/η, training loss and target alignment over steps, one line per η."""
    plt, eos, activations, fig, axes, colors = _eos_panels(ds)
    for row, activation in zip(axes, activations):
        for lr, color in zip(eos["lr"].values, colors):
            one = eos.sel(activation=activation, lr=lr)
            if not _has_data(one["sharpness"]):
                continue
            threshold = float(np.nanmean(one["stability_threshold"].values))
            label = f"η={lr:g}{diverged_note(one)}"
            _band(row[0], *seed_table(one["sharpness"].max("hessian_eig")), label, color)
            row[0].axhline(threshold, color=color, ls="--", lw=1)
            if "gauss_newton_sharpness" in one:
                _band(row[0], *seed_table(one["gauss_newton_sharpness"]), None, color, ls=":")
            _band(row[1], *seed_table(one["train_loss"].isel(task=0)), label, color)
            _band(row[2], *seed_table(one["target_alignment"].sel(probe=1)), label, color)
        _style_legend(row[0], {"λ_max(H), Lanczos": "-", "2/η": "--",
                               "λ_max(Θ_full)/n (Gauss–Newton)": ":"}, lines=False,
                      loc="lower right")
        row[0].set_title(f"sharpness against 2/η ({activation})", fontsize=9)
        row[0].set_ylim(bottom=0)
        row[0].set_ylabel("top Hessian eigenvalue")
        row[1].set_title(f"training loss ({activation})", fontsize=9)
        row[1].set_yscale("log")
        row[1].set_ylabel("MSE")
        row[1].legend(fontsize=7)
        row[2].set_ylabel("A(t)")
        row[2].legend(fontsize=7)
        row[2].set_title(f"target alignment yᵀΘy / (‖Θ‖_F ‖y‖²) ({activation})", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
    _finish(fig, "Edge of stability: sharpness against 2/η under full-batch gradient descent "
                 "(mean and min–max over seeds)", path)


def _final_spectrum(run: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, λ_i / ‖Θ‖_F) at a run's last snapshot."""
    a = last_snapshot(run["alignment_spectrum"].sel(probe=1))
    return a.values, run["eigenvalue_fraction"].sel(probe=1, step=a["step"]).values


def eos_alignment(ds: Any, path: str | Path) -> None:
    """Final target and top-eigenvector alignment against η, and the final eigenvector
    alignment spectrum per η."""
    plt, eos, activations, fig, axes, colors = _eos_panels(ds)
    finals = {"target_alignment": ("target alignment A", "o", "-"),
              "top_eigenvector_alignment": ("top-eigenvector alignment a₁", "s", "--")}
    for row, activation in zip(axes, activations):
        cells = [(lr, color, eos.sel(activation=activation, lr=lr))
                 for lr, color in zip(eos["lr"].values, colors)]
        cells = [c for c in cells if _has_data(c[2]["sharpness"])]
        lrs = np.array([lr for lr, _, _ in cells], dtype=float)
        for name, (label, marker, ls) in finals.items():
            stats = [_mean_sd(_per_seed(one, lambda r: float(last_snapshot(
                r[name].sel(probe=1))))) for _, _, one in cells]
            mean, sd = np.array(stats).T
            row[0].errorbar(lrs, mean, yerr=sd, marker=marker, ls=ls, color="k", capsize=3,
                            label=label)
        for lr, color, one in cells:
            a, fraction = (np.array(side) for side in zip(*_per_seed(one, _final_spectrum)))
            label = f"η={lr:g}{diverged_note(one)}"
            _band(row[1], np.arange(1, a.shape[1] + 1), a, label, color)
            row[2].plot(_nanmean(fraction), _nanmean(a), "o-", ms=3, lw=0.8,
                        color=color, label=label)
        row[0].set_xscale("log")
        row[0].set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        row[0].minorticks_off()
        row[0].set_xlabel("learning rate η")
        row[0].set_ylabel("final alignment")
        row[0].set_title(f"final alignment against η ({activation})", fontsize=9)
        row[0].legend(fontsize=7)
        row[1].set_xlabel("eigenvector index i")
        row[1].set_title(f"final a_i = (u_iᵀy)² / ‖y‖², top eigenvectors ({activation})",
                         fontsize=9)
        row[2].set_xlabel("λ_i / ‖Θ‖_F")
        row[2].set_title(f"final a_i against the normalised eigenvalue ({activation})",
                         fontsize=9)
        for ax in row[1:]:
            ax.set_yscale("log")
            ax.set_ylabel("a_i")
            ax.legend(fontsize=7)
        row[2].set_xscale("log")
    _finish(fig, "Final kernel–target alignment against η (mean ± sd over seeds)", path)


def _fe_grid(ds: Any, variable: str, figure: str) -> Any:
    """The feature-evolution runs that measure `variable`, over (activation, depth, seed)."""
    return grid(study_runs(ds, variable, figure), ("activation", "depth", "seed"), count=variable)


def _loss_curves(one: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, seeds × steps) of a loss recorded at the comparison points (`loss_step`)."""
    series = []
    for run in _per_seed(one, lambda r: r):
        ok = np.isfinite(run[name].values) & np.isfinite(run["loss_step"].values)
        if ok.any():
            series.append((run["loss_step"].values[ok], run[name].values[ok]))
    return union_table(series)


def kernel_descent(ds: Any, path: str | Path) -> None:
    """Training loss of the network, of kernel gradient descent with the initial kernel (KGD)
    and with it rescaled to the final norm (aKGD): one panel per activation, colour per depth."""
    plt = _pyplot()
    fe = _fe_grid(ds, "network_loss", "kernel-descent")
    activations = _with_data(fe, "activation", "network_loss")
    fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 4),
                             squeeze=False)
    colors = _colors(plt.cm.plasma, 0.8, fe["depth"].values, fe["depth"].values)
    styles = {"network": "-", "KGD (initial kernel)": "--", "aKGD (rescaled to final norm)": ":"}
    for ax, activation in zip(axes[0], activations):
        panel = fe.sel(activation=activation)
        # A diverging run or kernel descent would squash the others: cut the axis at 3× the
        # largest initial loss and leave what climbs past it off the chart.
        top = 3 * float(np.nanmax(panel["network_loss"].isel(loss_point=0).values))
        for depth, color in zip(fe["depth"].values, colors):
            one = panel.sel(depth=depth)
            for name, ls in zip(("network_loss", "kgd_loss", "akgd_loss"), styles.values()):
                x, table = _loss_curves(one, name) if name in one else ([], None)
                if len(x):
                    label = f"depth {depth}{diverged_note(one)}" if ls == "-" else None
                    _band(ax, x, np.where(table <= 10 * top, table, np.nan), label, color, ls=ls)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title(f"{activation} MLP", fontsize=9)
        _style_legend(ax, styles, loc="lower left")
    _finish(fig, "Network vs kernel gradient descent with the initial kernel "
                 "(mean and min–max over seeds)", path)


def alignment_by_depth(ds: Any, path: str | Path) -> None:
    """Target alignment A(t) per depth (a panel per activation) and effective γ against depth."""
    plt = _pyplot()
    fe = _fe_grid(ds, "network_loss", "alignment-by-depth")
    activations = _with_data(fe, "activation", "network_loss")
    fig, axes = plt.subplots(1, len(activations) + 1, figsize=(4.6 * (len(activations) + 1), 3.8),
                             squeeze=False)
    colors = _colors(plt.cm.plasma, 0.8, fe["depth"].values, fe["depth"].values)
    for i, (ax, activation) in enumerate(zip(axes[0], activations)):
        for depth, color in zip(fe["depth"].values, colors):
            one = fe.sel(activation=activation, depth=depth)
            x, table = seed_table(one["target_alignment"].sel(probe=1))
            if len(x):
                _band(ax, x, table, f"depth {depth}{diverged_note(one)}", color)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("step")
        ax.set_ylabel("A(t)")
        ax.set_title(f"A(t) = yᵀΘy / (‖Θ‖_F ‖y‖²), {activation} MLP", fontsize=9)
        ax.legend(fontsize=7)
        depths = fe["depth"].values.astype(float)
        stats = [_mean_sd(_per_seed(fe.sel(activation=activation, depth=d),
                                    lambda r: float(r["effective_gamma"]))) for d in depths]
        mean, sd = np.array(stats).T
        axes[0, -1].errorbar(depths, mean, yerr=sd, marker="o", capsize=3, color=f"C{i}",
                             label=activation)
    gamma = axes[0, -1]
    gamma.set_xticks(fe["depth"].values)
    gamma.set_xlabel("depth (hidden layers)")
    gamma.set_ylabel("γ")
    gamma.set_title("effective feature-learning rate γ", fontsize=9)
    gamma.legend(fontsize=7)
    _finish(fig, "Kernel–target alignment by depth (mean and min–max over seeds)", path)


def _power_law(ax: Any, k: np.ndarray, spectrum: np.ndarray, fit: Any, prefix: str,
               symbol: str, color: Any) -> str:
    """Draw λ_k = C k^−b over the fit range (C by least squares in log space at the stored b);
    returns the legend text."""
    b, kmin, kmax, r2 = (_mean_sd(fit[n])[0] for n in ("exponent", "kmin", "kmax", "r2"))
    spread = _mean_sd(fit["exponent"])[1]
    if not np.isfinite(b):
        return "no fit"
    window = (k >= kmin) & (k <= kmax) & np.isfinite(spectrum) & (spectrum > 0)
    log_c = np.mean(np.log(spectrum[window]) + b * np.log(k[window]))
    span = np.geomspace(kmin, kmax, 50)
    ax.plot(span, np.exp(log_c) * span ** -b, color=color, ls="--", lw=1.2, zorder=3)
    pm = f" ± {spread:.2f}" if len(fit["exponent"]) > 1 else ""
    return f"{prefix}: {symbol} = {b:.2f}{pm} (k {kmin:g}–{kmax:g}, R² {r2:.2f})"


def kernel_spectra(ds: Any, path: str | Path) -> None:
    """Eigenvalue and task spectra of the training-set kernel before and after training, with
    their power-law fits, for the deepest net of each activation."""
    plt = _pyplot()
    fe = _fe_grid(ds, "train_eigenvalues", "kernel-spectra")
    activations = _with_data(fe, "activation", "train_eigenvalues")
    fig, axes = plt.subplots(len(activations), 2, figsize=(10, 3.8 * len(activations)),
                             squeeze=False)
    panels = {"train_eigenvalues": ("eigen", "b", "eigenvalues λ_k", "λ_k"),
              "task_spectrum": ("task", "a", "task spectrum v_k² = Σ_c (u_k·yᶜ)²", "v_k²")}
    for row, activation in zip(axes, activations):
        sub = fe.sel(activation=activation)
        depth = max(d for d in sub["depth"].values
                    if _has_data(sub["train_eigenvalues"].sel(depth=d)))
        one = sub.sel(depth=depth)
        for ax, (name, (fit, symbol, title, ylabel)) in zip(row, panels.items()):
            for when, color in (("initial", "C0"), ("final", "C3")):
                k, table = seed_table(one[name].sel(when=when), "mode")
                table = np.where(table > 0, table, np.nan)  # log axes; null-space noise ≤ 0
                fits = {n: _per_seed(one, lambda r: float(r[f"{fit}_{v}"].sel(when=when)))
                        for n, v in (("exponent", "exponent"), ("kmin", "fit_kmin"),
                                     ("kmax", "fit_kmax"), ("r2", "fit_r2"))}
                text = _power_law(ax, k.astype(float), _nanmean(table), fits, when,
                                  symbol, color)
                _band(ax, k, table, text, color)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("mode k")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, {activation} depth {depth}{diverged_note(one)}", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
    _finish(fig, "Kernel spectra before and after training, power-law fits dashed "
                 "(λ_k ∼ k^−b, v_k² ∼ k^−a)", path)


def _layer_order(names: list[str]) -> list[str]:
    """Module names in network order (numeric where they are numbers)."""
    return sorted(names, key=lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))


def specialization(ds: Any, path: str | Path) -> None:
    """Final kernel specialization matrix (deepest net per activation), the alignment of each
    layer's kernel to each class, and the KSM's diagonal dominance over training."""
    plt = _pyplot()
    sp = _fe_grid(ds, "specialization", "specialization")
    activations = _with_data(sp, "activation", "specialization")
    fig, axes = plt.subplots(len(activations), 3, figsize=(14, 3.9 * len(activations)),
                             squeeze=False)
    for ax in axes[1:, 2]:  # one scale: "flat" reads against the non-linear dominance
        ax.sharey(axes[0, 2])
    colors = _colors(plt.cm.plasma, 0.8, sp["depth"].values, sp["depth"].values)
    deepest = {a: max(d for d in sp["depth"].values
                      if _has_data(sp["specialization"].sel(activation=a, depth=d)))
               for a in activations}
    ksm = {a: _nanmean(np.stack(_per_seed(sp.sel(activation=a, depth=deepest[a]), lambda r:
                         r["specialization"].sel(probe=1, when="final").values)))
           for a in activations}
    reach = max(np.nanmax(np.abs(m - 1)) for m in ksm.values())
    for row, activation in zip(axes, activations):
        one = sp.sel(activation=activation, depth=deepest[activation])
        image = row[0].imshow(ksm[activation], cmap="RdBu_r", vmin=1 - reach, vmax=1 + reach)
        fig.colorbar(image, ax=row[0], fraction=0.046)
        classes = np.arange(len(ksm[activation]))
        row[0].set_xticks(classes)
        row[0].set_yticks(classes)
        row[1].set_xticks(classes)
        row[0].set_xlabel("target class c′")
        row[0].set_ylabel("kernel block c")
        row[0].set_title(f"final KSM(c, c′), {activation} depth {deepest[activation]}"
                         f"{diverged_note(one)}", fontsize=9)
        layers = one["layer_alignment"].sel(probe=1, when="final")
        names = _layer_order([n for n in layers["layer"].values if _has_data(layers.sel(layer=n))])
        for j, name in enumerate(names):
            readout = j == len(names) - 1
            per_class = layers.sel(layer=name)
            per_class = per_class.mean("seed") if "seed" in per_class.dims else per_class
            label = f"readout (module {name})" if readout else f"hidden {j + 1} (module {name})"
            row[1].plot(np.arange(per_class.sizes["output"]), per_class.values, "o-", ms=3,
                        color="k" if readout else plt.cm.viridis(0.15 + 0.6 * j / len(names)),
                        lw=2 if readout else 1.2, label=label)
        row[1].set_xlabel("class c")
        row[1].set_ylabel("yᶜᵀΘ_l yᶜ / (‖Θ_l‖_F ‖yᶜ‖²)")
        row[1].set_title(f"final alignment of each layer's kernel to each class ({activation})",
                         fontsize=9)
        row[1].legend(fontsize=7)
        for depth, color in zip(sp["depth"].values, colors):
            cell = sp.sel(activation=activation, depth=depth)
            x, table = seed_table(cell["specialization_dominance"].sel(probe=1))
            if len(x):
                _band(row[2], x, table, f"depth {depth}{diverged_note(cell)}", color)
        row[2].axhline(0, color="k", lw=0.8)
        row[2].set_xscale("symlog", linthresh=10)
        row[2].set_xlim(left=0)
        row[2].set_xlabel("step")
        row[2].set_ylabel("dominance")
        row[2].set_title(f"KSM mean diagonal − mean off-diagonal ({activation})", fontsize=9)
        row[2].legend(fontsize=7)
    _finish(fig, "Kernel specialization by class and by layer (mean over seeds; min–max shaded)",
            path)


FIGURES = {"metrics_by_width": metrics_by_width, "accuracy_by_task": accuracy_by_task,
           "similarity_sweep": similarity_sweep, "frequency_shift": frequency_shift,
           "learning_rate": learning_rate, "task_sequence": task_sequence,
           "edge_of_stability": edge_of_stability, "eos_alignment": eos_alignment,
           "kernel_descent": kernel_descent, "alignment_by_depth": alignment_by_depth,
           "kernel_spectra": kernel_spectra, "specialization": specialization}
# Figures a per-run analysis fills (`analyses` of a sweep in the config).
ANALYSIS_FIGURES = {"sharpness": ("edge_of_stability", "eos_alignment"),
                    "train_kernel": ("kernel_descent", "alignment_by_depth", "kernel_spectra"),
                    "specialization": ("specialization",)}


def applicable(points: list[dict[str, Any]],
               analyses: dict[tuple[str, str], list[str]] | None = None) -> list[str]:
    """The figures a set of runs can fill: a figure needs its sweep among the runs, or its
    analysis among `analyses` ({(run id, shift id): analysis names}, `sweep.run_analyses`)."""
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
    turned_on = {name for wanted in (analyses or {}).values() for name in wanted}
    return names + [figure for analysis, figures in ANALYSIS_FIGURES.items()
                    if analysis in turned_on for figure in figures]


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
