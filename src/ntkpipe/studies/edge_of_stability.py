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
from ntkpipe.scorecard import Row, check, final, per_value, runs_with, trend_row, untested
from ntkpipe.studies.base import Figure, Study, Threshold
from ntkpipe.summary import grid

NAME = "edge_of_stability"
SHARPNESS = ("sharpness", "gauss_newton_sharpness", "sharpness_subset_loss",
             "stability_threshold")


# ---- measures ---------------------------------------------------------------------------------

def sharpness_measures(summary: Any, files: dict[str, dict[str, str]],
                       settings: dict[str, Any]) -> Any:
    """Each run's sharpness along `step` (its `sharpness` analysis), along the summary's runs."""
    from ntkpipe import store
    from ntkpipe.summary import along_runs, run_ids

    rows = {(r, s): i for i, (r, s) in enumerate(zip(summary["run_id"].values,
                                                     summary["shift_id"].values))}
    per_run = {}
    for path in files.get("sharpness", {}).values():
        sharp = store.open_netcdf(path)
        per_run[rows[run_ids(sharp)]] = sharp[list(SHARPNESS)].drop_attrs(deep=False)
    return along_runs(summary, per_run)


def headline(one: Any) -> dict[str, Any]:
    """A run's final sharpness against its threshold (`ntkpipe show`)."""
    if "sharpness" not in one or not np.isfinite(one["sharpness"]).any():
        return {}
    top = one["sharpness"].isel(hessian_eig=0).dropna("step")
    return {"final_sharpness": float(top[-1]),
            "stability_threshold": float(one["stability_threshold"])}


# ---- claims -----------------------------------------------------------------------------------

EOS = "edge_of_stability"
EOS_CLAIMS = ["a. final target alignment increases with η",
              "b. final top-eigenvector alignment increases with η",
              "c. sharpness reaches 2/η"]


def _sharpness_deviation(ds: Any, run: int) -> float:
    """(median sharpness over the later half of a run's steps − 2/η) / (2/η)."""
    top = ds["sharpness"].isel(run=run).max("hessian_eig").values
    steps = ds["step"].values[np.isfinite(top)]
    top = top[np.isfinite(top)]
    threshold = float(ds["stability_threshold"].values[run])
    # by step, not snapshot index: snapshots are log-spaced, dense while sharpness still rises
    late = top[steps >= (steps[0] + steps[-1]) / 2]
    return float((np.median(late) - threshold) / threshold)


def claim_edge_of_stability(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Jiang, Cohen & Li 2025: final alignment and top-eigenvector alignment grow
    with η, and the sharpness settles at 2/η (Cohen et al. 2021)."""
    runs = runs_with(ds, "sharpness")
    if not len(runs):
        return untested(EOS, EOS_CLAIMS, "no edge-of-stability runs (a sweep with "
                                          "analyses: [sharpness])")
    rows = []
    for name, variable, symbol in zip(EOS_CLAIMS, ("target_alignment",
                                                   "top_eigenvector_alignment"),
                                      ("final A", "final (u₁ᵀy)²/‖y‖²")):
        if variable not in ds:
            rows += untested(EOS, [name], f"no {variable} in the summary")
            continue
        values = final(ds[variable].sel(probe=1))
        rows.append(trend_row(EOS, name, ds, runs, "lr", values, symbol, t["eta_rho"],
                               "edge-of-stability runs"))
    deviation = np.full(ds.sizes["run"], np.nan)
    deviation[runs] = [_sharpness_deviation(ds, run) for run in runs]
    worst = float(np.max(np.abs(deviation[runs])))
    rows.append(Row(EOS, EOS_CLAIMS[2], "max over runs of |median sharpness over the later half "
                    "of its steps − 2/η| / (2/η)", worst, f"<= {t['sharpness_band']}",
                    check(worst, t["sharpness_band"], "<="),
                    f"{len(runs)} runs; signed deviation per η (largest over its runs): "
                    + per_value(ds, runs, "lr", deviation, "+.1%",
                                 lambda v: v[np.argmax(np.abs(v))])))
    return rows


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
            label = f"η={lr:g}{plots.diverged_note(one)}"
            plots.band(row[0], *plots.seed_table(one["sharpness"].max("hessian_eig")), label, color)
            row[0].axhline(threshold, color=color, ls="--", lw=1)
            if "gauss_newton_sharpness" in one:
                plots.band(row[0], *plots.seed_table(one["gauss_newton_sharpness"]), None, color, ls=":")
            plots.band(row[1], *plots.seed_table(one["train_loss"].isel(task=0)), label, color)
            plots.band(row[2], *plots.seed_table(one["target_alignment"].sel(probe=1)), label, color)
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
        row[2].set_title(f"target alignment yᵀΘy / (‖Θ‖_F ‖y‖²) ({activation})", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
    plots.finish(fig, "Edge of stability: sharpness against 2/η under full-batch gradient descent "
                 "(mean and min–max over seeds)", path)


def _final_spectrum(run: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a_i, λ_i / ‖Θ‖_F) at a run's last snapshot."""
    a = plots.last_snapshot(run["alignment_spectrum"].sel(probe=1))
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
        cells = [c for c in cells if plots.has_data(c[2]["sharpness"])]
        lrs = np.array([lr for lr, _, _ in cells], dtype=float)
        for name, (label, marker, ls) in finals.items():
            stats = [plots.mean_sd(plots.per_seed(one, lambda r: float(plots.last_snapshot(
                r[name].sel(probe=1))))) for _, _, one in cells]
            mean, sd = np.array(stats).T
            row[0].errorbar(lrs, mean, yerr=sd, marker=marker, ls=ls, color="k", capsize=3,
                            label=label)
        for lr, color, one in cells:
            a, fraction = (np.array(side) for side in zip(*plots.per_seed(one, _final_spectrum)))
            label = f"η={lr:g}{plots.diverged_note(one)}"
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
    plots.finish(fig, "Final kernel–target alignment against η (mean ± sd over seeds)", path)


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
        "sharpness_band": Threshold(0.1, "sharpness 'reaches 2/η': its median over the later "
                                         "half of the steps is within this fraction of 2/η, "
                                         "for every η"),
    },
    figures=(
        Figure("edge_of_stability", edge_of_stability, "captions/edge_of_stability.rst",
               "learning-rate sweep", lambda points, analyses: "sharpness" in analyses),
        Figure("eos_alignment", eos_alignment, "captions/eos_alignment.rst",
               "learning-rate sweep", lambda points, analyses: "sharpness" in analyses),
    ),
)
