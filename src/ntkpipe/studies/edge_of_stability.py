"""Edge of stability: NTK evolution at the edge of stability (Jiang, Cohen & Li 2025,
arXiv 2507.12837), on top of Cohen et al. 2021 (arXiv 2103.00065).

With full-batch gradient descent the sharpness (top Hessian eigenvalue) rises until it reaches
≈ 2/η and hovers there; larger η makes the leading NTK eigenvectors, and the whole NTK, more
aligned with the training target (see `docs/science.md` §2). The `sharpness` analysis measures
the sharpness by Lanczos on Hessian-vector products and the Gauss–Newton bound
λ_max(Θ_full)/n at every snapshot; this module gathers them along `run`, checks the claims and
draws the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe import stats
from ntkpipe.scorecard import Row, final, runs_with, trend_row, untested
from ntkpipe.studies.base import Figure, Study, Threshold
from ntkpipe.summary import grid

NAME = "edge_of_stability"
SHARPNESS = ("sharpness", "gauss_newton_sharpness", "sharpness_subset_loss",
             "stability_threshold", "train_target_alignment", "train_alignment_spectrum",
             "train_eigenvalue_fraction", "dense_window_step")


# ---- measures ---------------------------------------------------------------------------------

def sharpness_measures(summary: Any, files: dict[str, dict[str, str]],
                       settings: dict[str, Any]) -> Any:
    """Each run's sharpness along training (`sharpness_step`) and its training-subset kernel
    along `step` (its `sharpness` analysis), along the summary's runs."""
    from ntkpipe import store
    from ntkpipe.summary import along_runs, run_ids

    rows = {(r, s): i for i, (r, s) in enumerate(zip(summary["run_id"].values,
                                                     summary["shift_id"].values))}
    per_run = {}
    for path in files.get("sharpness", {}).values():
        sharp = store.open_netcdf(path)
        missing = [name for name in SHARPNESS if name not in sharp]
        if missing:
            raise store.CorruptFileError(f"{path} lacks {', '.join(missing)} (an older format): "
                                         "delete it so that it is measured again")
        per_run[rows[run_ids(sharp)]] = sharp[list(SHARPNESS)].drop_attrs(deep=False)
    return along_runs(summary, per_run)


def headline(one: Any) -> dict[str, Any]:
    """A run's initial and final sharpness against its threshold (`ntkpipe show`)."""
    if "sharpness" not in one or not np.isfinite(one["sharpness"]).any():
        return {}
    top = one["sharpness"].isel(hessian_eig=0).dropna("sharpness_step")
    out = {"initial_sharpness": float(top[0]), "final_sharpness": float(top[-1]),
           "stability_threshold": float(one["stability_threshold"])}
    alignment = one["train_target_alignment"].dropna("step")
    if alignment.size:
        out["final_train_target_alignment"] = float(alignment[-1])
    return out


# ---- claims -----------------------------------------------------------------------------------

EOS = "edge_of_stability"
EOS_CLAIMS = ["a. final target alignment increases with η",
              "b. final top-eigenvector alignment increases with η",
              "c. progressive sharpening: the sharpness rises from below 2/η to it",
              "d. the sharpness then hovers at 2/η",
              "e. alignment jumps while the sharpness falls back"]


def _trace(ds: Any, run: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(steps, top Hessian eigenvalue / (2/η)) of the sharpness a run measured as it trained,
    and its threshold (2 + 2β)/η."""
    threshold = float(ds["stability_threshold"].values[run])
    top = ds["sharpness"].isel(run=run, hessian_eig=0).values
    steps = ds["sharpness_step"].values
    ok = np.isfinite(top)
    return steps[ok], top[ok] / threshold, threshold


def _first_reach(ratio: np.ndarray, level: float) -> int | None:
    """Index of the first measurement at or above `level` · 2/η (None: never)."""
    hit = np.flatnonzero(ratio >= level)
    return int(hit[0]) if len(hit) else None


def sharpening(ds: Any, run: int, band: float) -> dict[str, float]:
    """A run's edge-of-stability trace in units of 2/η: where it starts, its peak, the step it
    first comes within `band` of 2/η, and the median afterwards (NaN where not reached)."""
    steps, ratio, _ = _trace(ds, run)
    if not len(ratio):
        return {"start": np.nan, "peak": np.nan, "reach_step": np.nan, "hover": np.nan}
    first = _first_reach(ratio, 1 - band)
    return {"start": float(ratio[0]), "peak": float(np.max(ratio)),
            "reach_step": np.nan if first is None else float(steps[first]),
            # the median of λ/(2/η) from the first arrival on: 1 when it hovers at the threshold
            "hover": np.nan if first is None or first + 2 > len(ratio)
            else float(np.median(ratio[first:]))}


def alignment_jump(ds: Any, run: int, band: float) -> float:
    """Mean change per step of the training-kernel target alignment over snapshot intervals
    in which the sharpness fell, minus that over intervals in which it rose, from the first
    arrival within `band` of 2/η on (NaN without both kinds of interval)."""
    steps, ratio, _ = _trace(ds, run)
    first = _first_reach(ratio, 1 - band) if len(ratio) else None
    if first is None:
        return np.nan
    sharp = dict(zip(steps.tolist(), ratio.tolist()))
    alignment = ds["train_target_alignment"].isel(run=run).values
    snap_steps = ds["step"].values
    ok = np.isfinite(alignment) & np.isin(snap_steps, steps) & (snap_steps >= steps[first])
    at, a = snap_steps[ok], alignment[ok]
    if len(at) < 3:
        return np.nan
    gaps = np.diff(at)
    # equal intervals only: the dense window's, the snapshot grid the trend is read on
    dense = gaps == np.min(gaps)
    change = np.diff(a)[dense] / gaps[dense]
    falls = np.array([sharp[t1] < sharp[t0] for t0, t1 in zip(at[:-1], at[1:])])[dense]
    if falls.all() or not falls.any():
        return np.nan
    return float(np.mean(change[falls]) - np.mean(change[~falls]))


def _level_cells(ds: Any, runs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(η levels, η × (group, seed)) of per-run values over `runs`."""
    from ntkpipe.scorecard import level_table

    return level_table(ds, runs, "lr", values)


def _worst_cell_row(name: str, what: str, ds: Any, runs: np.ndarray, values: np.ndarray,
                    threshold: float, sense: str, note: str,
                    transform: Any = lambda v: v) -> Row:
    """A row on the worst η: the min (sense '>=') or max over η of the median over seeds of
    `transform(values)`, with its bootstrap interval over seeds."""
    levels, table = _level_cells(ds, runs, values)
    sign = 1.0 if sense == ">=" else -1.0

    def statistic(v: np.ndarray) -> float:
        medians = stats.quiet(np.nanmedian, transform(v), axis=1)
        return float(sign * np.min(sign * medians)) if np.isfinite(medians).all() else np.nan

    value = statistic(table)
    interval = stats.bootstrap(statistic, table)
    medians = stats.quiet(np.nanmedian, transform(table), axis=1)
    word = "min" if sense == ">=" else "max"
    per = ", ".join(f"{lr:g}: {m:.3g}" for lr, m in zip(levels, medians))
    return Row(EOS, name, f"{word} over η of the median over seeds of {what}", value,
               f"{sense} {threshold:g}", stats.verdict(value, interval, threshold, sense),
               f"{note}; median per η: {per}", n=int(np.isfinite(table).sum()),
               low=interval[0], high=interval[1])


def unconverged(ds: Any, runs: np.ndarray) -> np.ndarray:
    """The runs among `runs` whose phase 1 ran out of steps before its stopping rule."""
    if "task_converged" not in ds:
        return np.array([], dtype=int)
    converged = ds["task_converged"].isel(trained_task=0).values[runs]
    return runs[converged == 0]


def claim_edge_of_stability(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Jiang, Cohen & Li 2025 on the training subset's full NTK: final alignment and
    top-eigenvector alignment grow with η, and alignment jumps while the sharpness falls back;
    and the edge of stability itself (Cohen et al. 2021): progressive sharpening to 2/η, then
    hovering there."""
    runs = runs_with(ds, "sharpness")
    if not len(runs):
        return untested(EOS, EOS_CLAIMS, "no edge-of-stability runs (a sweep with "
                                          "analyses: [sharpness])")
    band = t["sharpness_band"]
    traces = {run: sharpening(ds, run, band) for run in runs}
    start = np.full(ds.sizes["run"], np.nan)
    for run, trace in traces.items():
        start[run] = trace["start"]
    # a run that starts at or above 2/η has no progressive sharpening to show: left out
    below = runs[start[runs] < 1]
    above = len(runs) - len(below)
    left_out = f"; {above} runs starting at or above 2/η left out" if above else ""
    rows = []
    finals = {"train_target_alignment": final(ds["train_target_alignment"]),
              "top": final(ds["train_alignment_spectrum"].sel(eigenvector=1))}
    # "final" compares the η at the same loss: a run whose step budget ran out first is not
    stopped = unconverged(ds, runs)
    same_loss = np.setdiff1d(runs, stopped)
    cut = (f"; {len(stopped)} runs that stopped at their step budget before the target loss "
           "left out") if len(stopped) else ""
    for name, values, symbol in zip(EOS_CLAIMS, finals.values(),
                                    ("final A(Θ_train, y)", "final a₁ = (u₁ᵀy)²/‖y‖²")):
        row = trend_row(EOS, name, ds, same_loss, "lr", values, symbol, t["eta_rho"],
                        "edge-of-stability runs")
        row.note += cut
        rows.append(row)
    peak, hover, jump = (np.full(ds.sizes["run"], np.nan) for _ in range(3))
    for run in below:
        peak[run], hover[run] = traces[run]["peak"], traces[run]["hover"]
        jump[run] = alignment_jump(ds, run, band)
    starts = ", ".join(f"{lr:g}: {m:.2f}" for lr, m in zip(*_medians(ds, runs, start)))
    if len(below):
        rows.append(_worst_cell_row(
            EOS_CLAIMS[2], "the peak sharpness / (2/η)", ds, below, peak, 1 - band, ">=",
            f"initial sharpness / (2/η) per η: {starts}{left_out}"))
        rows.append(_worst_cell_row(
            EOS_CLAIMS[3], "|median sharpness / (2/η) − 1| from its first arrival within the "
            "band on", ds, below, hover, band, "<=", "runs that reach 2/η" + left_out,
            transform=lambda v: np.abs(v - 1)))
        levels, table = _level_cells(ds, below, jump)
        statistic = lambda v: float(stats.quiet(np.nanmedian, v))  # noqa: E731
        value, interval = statistic(table), stats.bootstrap(statistic, table)
        rows.append(Row(EOS, EOS_CLAIMS[4], "median over runs of the mean change per step of "
                        "A(Θ_train, y) while the sharpness falls minus while it rises (dense "
                        "window)", value, "> 0", stats.verdict(value, interval, 1e-12, ">="),
                        f"snapshot intervals of the dense window after the sharpness first "
                        f"reaches 2/η{left_out}", n=int(np.isfinite(table).sum()),
                        low=interval[0], high=interval[1]))
    else:
        rows += untested(EOS, EOS_CLAIMS[2:], f"every run starts at or above 2/η (initial "
                                              f"sharpness / (2/η) per η: {starts}): choose "
                                              "smaller learning rates")
    return rows


def _medians(ds: Any, runs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(η levels, median over their runs of `values`)."""
    levels, table = _level_cells(ds, runs, values)
    return levels, stats.quiet(np.nanmedian, table, axis=1)


# ---- figures ----------------------------------------------------------------------------------

def _eos_grid(ds: Any) -> Any:
    """The edge-of-stability runs over (activation, lr, seed)."""
    return grid(plots.study_runs(ds, "sharpness", "edge-of-stability"), ("activation", "lr", "seed"),
                count="sharpness")


def _eos_panels(ds: Any) -> tuple[Any, Any, list, Any, Any, list]:
    """pyplot, the edge-of-stability grid, its activations with data, a figure with a row of
    three panels per activation, and one colour per η."""
    plt = plots.pyplot()
    eos = _eos_grid(ds)
    activations = plots.with_data(eos, "activation", "sharpness")
    fig, axes = plt.subplots(len(activations), 3, figsize=(13.5, 3.8 * len(activations)),
                             squeeze=False)
    return plt, eos, activations, fig, axes, plots.colors(plt.cm.viridis, 0.85, eos["lr"].values,
                                                     eos["lr"].values)


def edge_of_stability(ds: Any, path: str | Path) -> None:
    """Sharpness against 2/η, training loss and target alignment over steps, one line per η."""
    plt, eos, activations, fig, axes, colors = _eos_panels(ds)
    for row, activation in zip(axes, activations):
        for lr, color in zip(eos["lr"].values, colors):
            one = eos.sel(activation=activation, lr=lr)
            if not plots.has_data(one["sharpness"]):
                continue
            threshold = float(np.nanmean(one["stability_threshold"].values))
            label = f"η={lr:g}{plots.status_note(one)}"
            plots.band(row[0], *plots.seed_table(one["sharpness"].max("hessian_eig"),
                                                 "sharpness_step"), label, color)
            row[0].axhline(threshold, color=color, ls="--", lw=1)
            if "gauss_newton_sharpness" in one:
                plots.band(row[0], *plots.seed_table(one["gauss_newton_sharpness"]), None, color, ls=":")
            plots.band(row[1], *plots.seed_table(one["train_loss"].isel(task=0)), label, color)
            plots.band(row[2], *plots.seed_table(one["train_target_alignment"]), label, color)
        plots.style_legend(row[0], {"λ_max(H), Lanczos": "-", "2/η": "--",
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
        row[2].set_title(f"training-subset full NTK: yᵀΘy / (‖Θ‖_F ‖y‖²) ({activation})",
                         fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
    plots.finish(fig, "Edge of stability: sharpness against 2/η under full-batch gradient descent "
                 "(mean and min–max over seeds)", path)


def _final_spectrum(run: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, λ_i / ‖Θ‖_F) at a run's last snapshot."""
    a = plots.last_snapshot(run["train_alignment_spectrum"])
    return a.values, run["train_eigenvalue_fraction"].sel(step=a["step"]).values


def eos_alignment(ds: Any, path: str | Path) -> None:
    """Final target and top-eigenvector alignment against η, and the final eigenvector
    alignment spectrum per η."""
    plt, eos, activations, fig, axes, colors = _eos_panels(ds)
    finals = {"train_target_alignment": ("target alignment A", "o", "-"),
              "top": ("top-eigenvector alignment a₁", "s", "--")}
    for row, activation in zip(axes, activations):
        cells = [(lr, color, eos.sel(activation=activation, lr=lr))
                 for lr, color in zip(eos["lr"].values, colors)]
        cells = [c for c in cells if plots.has_data(c[2]["sharpness"])]
        lrs = np.array([lr for lr, _, _ in cells], dtype=float)
        for name, (label, marker, ls) in finals.items():
            pick = (lambda r: r["train_alignment_spectrum"].sel(eigenvector=1)) if name == "top" \
                else (lambda r: r["train_target_alignment"])
            spread = [plots.mean_sd(plots.per_seed(one, lambda r: float(plots.last_snapshot(
                pick(r))))) for _, _, one in cells]
            mean, sd = np.array(spread).T
            row[0].errorbar(lrs, mean, yerr=sd, marker=marker, ls=ls, color="k", capsize=3,
                            label=label)
        for lr, color, one in cells:
            a, fraction = (np.array(side) for side in zip(*plots.per_seed(one, _final_spectrum)))
            label = f"η={lr:g}{plots.status_note(one)}"
            plots.band(row[1], np.arange(1, a.shape[1] + 1), a, label, color)
            row[2].plot(plots.nanmean(fraction), plots.nanmean(a), "o-", ms=3, lw=0.8,
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
    plots.finish(fig, "Final alignment of the training-subset full NTK with the target against η "
                 "(mean ± sd over seeds)", path)


STUDY = Study(
    name=NAME,
    title="Edge of stability",
    claims=claim_edge_of_stability,
    measures=sharpness_measures,
    run_files={"sharpness": "sharpness"},
    headline=headline,
    thresholds={
        "eta_rho": Threshold(0.5, "'final alignment increases with η': Spearman ρ of the final "
                                  "alignment vs η at least this"),
        "sharpness_band": Threshold(0.1, "sharpness 'reaches 2/η': its peak is at least 1 − "
                                         "this of 2/η; 'hovers at 2/η': its median from its "
                                         "first arrival there on is within this fraction of "
                                         "2/η, for every η"),
    },
    figures=(
        Figure("edge_of_stability", edge_of_stability, "captions/edge_of_stability.rst",
               "learning-rate sweep", lambda points, analyses: "sharpness" in analyses),
        Figure("eos_alignment", eos_alignment, "captions/eos_alignment.rst",
               "learning-rate sweep", lambda points, analyses: "sharpness" in analyses),
    ),
)
