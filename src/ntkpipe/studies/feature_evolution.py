"""Rapid feature evolution accelerates learning (Shan & Bordelon 2021, arXiv 2105.14301).

On the training set's kernel: the kernel–target alignment A(t) rises early and saturates; the
network beats kernel gradient descent with the frozen initial kernel (KGD) and with it rescaled
to the final norm (aKGD); the eigenvalue and task spectra steepen; the kernel specialises per
class (the kernel specialization matrix, KSM) for non-linear nets but not for deep linear ones;
deeper nets have a larger effective feature-learning rate γ and align higher (see
`docs/science.md` §3). The `train_kernel` analysis stores the training-set kernels, the
`specialization` analysis the per-output and per-layer probe kernels; this module derives the
measures from them, checks the claims and draws the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe.scorecard import Row, check, final, per_value, runs_with, trend_row, untested
from ntkpipe.studies.base import Figure, Study, Threshold
from ntkpipe.summary import grid

NAME = "feature_evolution"


# ---- measures ---------------------------------------------------------------------------------

def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[labels]


def _ends(kernels: np.ndarray) -> list[int]:
    """Indices along `step` of the first and the last snapshot with a finite kernel."""
    finite = np.flatnonzero(np.isfinite(kernels.reshape(len(kernels), -1)).all(axis=1))
    return [int(finite[0]), int(finite[-1])] if len(finite) else [0, len(kernels) - 1]


def _specialization(ds: Any) -> Any:
    """KSM (initial and final) and its diagonal dominance along `step` from the per-output
    blocks; each layer's alignment to each class target (initial and final) from the per-layer
    kernels. Empty when ntk.nc has neither."""
    import xarray as xr

    from ntkpipe.specialization import (diagonal_dominance, kernel_specialization,
                                        layer_alignment)

    out = xr.Dataset(coords={"when": ["initial", "final"], "probe": ds["probe"].values,
                             "step": ds["step"].values})
    # "final" is the end of phase 1, as for the training-set kernel (later tasks shift it)
    phase1 = ds["phase"].values == 1
    onehot = [_onehot(ds["label"].values[p], ds.sizes["output"])
              for p in range(ds.sizes["probe"])]
    if "ntk_per_output" in ds:
        blocks = ds["ntk_per_output"].values.astype(np.float64)  # (probe, step, O, N, N)
        ksm = np.full(blocks.shape[:3] + blocks.shape[2:3], np.nan)
        dominance = np.full(blocks.shape[:2], np.nan)
        for p in range(blocks.shape[0]):
            # over the classes the probe set holds: a class-incremental task leaves the other
            # outputs of the shared head without a target
            present = np.unique(ds["label"].values[p])
            for s in range(blocks.shape[1]):
                if np.isfinite(blocks[p, s]).all():
                    sub = kernel_specialization(blocks[p, s][present], onehot[p][:, present])
                    ksm[p, s][np.ix_(present, present)] = sub
                    dominance[p, s] = diagonal_dominance(sub)
        ends = [_ends(b[phase1]) for b in blocks]
        out["specialization"] = (("probe", "when", "output", "output_j"),
                                 np.stack([ksm[p, e] for p, e in enumerate(ends)]), {
            "long_name": "kernel specialization matrix KSM(c, c'): alignment of block Θ^{c,c} "
                         "to class c' over its mean across blocks", "units": "1"})
        out["specialization_dominance"] = (("probe", "step"), dominance, {
            "long_name": "KSM mean diagonal minus mean off-diagonal", "units": "1"})
    if "ntk_per_layer" in ds:
        layers = ds["ntk_per_layer"].values.astype(np.float64)  # (probe, step, L, N, N)
        rows = np.full(layers.shape[:1] + (2,) + layers.shape[2:3] + (ds.sizes["output"],),
                       np.nan)
        for p in range(layers.shape[0]):
            present = np.unique(ds["label"].values[p])
            for w, s in enumerate(_ends(layers[p][phase1])):
                rows[p, w][:, present] = layer_alignment(layers[p, s], onehot[p][:, present])
        out["layer_alignment"] = (("probe", "when", "layer", "output"), rows, {
            "long_name": "alignment yᶜᵀΘ_l yᶜ / (‖Θ_l‖_F ‖yᶜ‖²) of each layer's part of the "
                         "traced NTK to each class target", "units": "1"})
        out = out.assign_coords(layer=ds["layer"].values)
    return out


def _loss_grid(last: int, points: int) -> np.ndarray:
    """0, the last step, and log-spaced steps between (at most `points` in all)."""
    grid = np.round(np.geomspace(1, max(last, 1), max(points - 1, 1))).astype(np.int64)
    return np.unique(np.concatenate([[0], grid, [last]]))


def _train_kernel_measures(tk: Any, cfg: dict[str, Any]) -> Any:
    """KGD and aKGD loss curves beside the network's, eigen- and task-spectra with power-law
    fits, alignment and γ, from the training-set kernels (Shan & Bordelon 2021, arXiv 2105.14301)."""
    import xarray as xr

    from ntkpipe import kgd, spectra
    from ntkpipe.specialization import effective_gamma, target_cosine

    k0, k_final = (tk["train_ntk"].values[i].astype(np.float64) for i in (0, 1))
    labels = tk["train_label"].values
    y = np.eye(tk.sizes["output"])[labels]
    f0 = tk["train_output"].values[0]
    loss_steps, network = tk["loss_step"].values, tk["network_loss"].values
    grid = _loss_grid(int(loss_steps[-1]), cfg.get("loss_points", 200))
    lr = float(tk.attrs["learning_rate"])
    kgd_curve, akgd_curve = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    usable = np.isfinite(k0).all() and np.isfinite(k_final).all()
    fit_range = tuple(cfg["fit_range"]) if cfg.get("fit_range") else None
    n = len(labels)
    eig, task = np.full((2, n), np.nan), np.full((2, n), np.nan)
    fits = {f"{kind}_{field}": np.full(2, np.nan) for kind in ("eigen", "task")
            for field in ("exponent", "fit_kmin", "fit_kmax", "fit_r2")}
    align = np.full(2, np.nan)
    initial_modes = None
    for w, k in enumerate((k0, k_final)):
        if not np.isfinite(k).all():
            continue
        eig[w], vecs = spectra.eigen_spectrum(k)
        initial_modes = vecs if w == 0 else initial_modes
        task[w] = np.sum((vecs.T @ y) ** 2, axis=1)
        align[w] = target_cosine(k, y)
        # beyond the kernel's numerical rank the eigenvectors are an arbitrary basis of its
        # null space: the task spectrum's fit stops where the eigenvalues' default range does
        rank_range = spectra.default_power_law_range(eig[w])
        for kind, values in (("eigen", eig[w]), ("task", task[w])):
            try:
                fit = spectra.power_law_fit(values, fit_range or rank_range)
            except ValueError:  # fewer than two positive values in the range
                continue
            for field, key in (("exponent", "exponent"), ("fit_kmin", "k_min"),
                               ("fit_kmax", "k_max"), ("fit_r2", "r2")):
                fits[f"{kind}_{field}"][w] = fit[key]
    gamma = effective_gamma(k0, k_final, y) if usable else np.nan
    # (I − ηK/n)^t is stable while η λ_max / n < 2 (kernel gradient descent in discrete steps)
    scale = np.linalg.norm(k_final) / np.linalg.norm(k0) if usable else np.nan
    stability = lr * eig[0, 0] / (2 * n) * np.array([1.0, scale])
    if tk.attrs["loss"] == "mse" and usable:  # KGD is gradient descent on the MSE loss
        # one eigendecomposition of K0 serves the spectra, KGD and aKGD (scale · K0)
        energy = np.sum((initial_modes.T @ (f0 - y)) ** 2, axis=1)
        kgd_curve = kgd.mode_loss_curve(eig[0], energy, lr, grid, n)
        akgd_curve = kgd.mode_loss_curve(scale * eig[0], energy, lr, grid, n)
    at = np.searchsorted(loss_steps, grid)
    net = np.where(at < len(loss_steps), network[np.minimum(at, len(network) - 1)], np.nan)
    described = {
        "eigen_exponent": "power-law exponent b of the eigenvalues, λ_k ∼ k^−b",
        "task_exponent": "power-law exponent a of the task spectrum, v_k² ∼ k^−a",
    }
    variables = {
        "loss_step": ("loss_point", grid, {"long_name": "step of each loss comparison point"}),
        "network_loss": ("loss_point", net, {"long_name": "network training loss"}),
        "kgd_loss": ("loss_point", kgd_curve, {
            "long_name": "training loss of kernel gradient descent with the frozen initial "
                         "kernel (KGD)"}),
        "akgd_loss": ("loss_point", akgd_curve, {
            "long_name": "training loss of KGD with the initial kernel rescaled to the final "
                         "kernel's norm (aKGD)"}),
        "train_eigenvalues": (("when", "mode"), eig, {
            "long_name": "eigenvalues of the traced NTK on the training set"}),
        "task_spectrum": (("when", "mode"), task, {
            "long_name": "task spectrum v_k² = Σ_c (u_k · yᶜ)²"}),
        "train_alignment": ("when", align, {
            "long_name": "kernel-target alignment on the training set, ⟨K, YYᵀ⟩_F / "
                         "(‖K‖_F ‖YYᵀ‖_F): the A of the γ equation", "units": "1"}),
        "kgd_stability": ((), stability[0], {
            "long_name": "η λ_max(K0) / 2n: at 1 or more KGD with the frozen kernel diverges",
            "units": "1"}),
        "akgd_stability": ((), stability[1], {
            "long_name": "η λ_max / 2n of aKGD's rescaled kernel: at 1 or more it diverges",
            "units": "1"}),
        "effective_gamma": ((), gamma, {
            "long_name": "effective feature-learning rate γ (Shan & Bordelon 2021, eq. 20)"}),
        **{name: ("when", values, {"long_name": described.get(name, name.replace("_", " "))})
           for name, values in fits.items()},
    }
    return xr.Dataset(variables, coords={"when": ["initial", "final"],
                                         "mode": np.arange(1, n + 1)})


def feature_measures(summary: Any, files: dict[str, dict[str, str]],
                     settings: dict[str, Any]) -> Any:
    """Per run, along the summary's runs: the KSM and per-layer alignment from the probe
    kernels of the `specialization` analysis, KGD/aKGD, spectra, fits and γ from the
    training-set kernels of the `train_kernel` analysis."""
    import xarray as xr

    from ntkpipe import store
    from ntkpipe.summary import along_runs, run_ids

    rows = {(r, s): i for i, (r, s) in enumerate(zip(summary["run_id"].values,
                                                     summary["shift_id"].values))}
    per_run: dict[int, Any] = {}
    for path in files.get("ntk", {}).values():
        ntk = store.open_netcdf(path)
        per_run[rows[run_ids(ntk)]] = _specialization(ntk)
    for (run, shift), path in files.get("train_kernel", {}).items():
        measures = _train_kernel_measures(store.open_netcdf(path), settings)
        row = rows[(run, shift)]
        per_run[row] = xr.merge([per_run[row], measures]) if row in per_run else measures
    return along_runs(summary, per_run)


def headline(one: Any) -> dict[str, Any]:
    """A run's kernel-descent losses, γ, exponents and KSM dominance (`ntkpipe show`)."""
    out: dict[str, Any] = {}
    if "kgd_loss" in one and np.isfinite(one["network_loss"]).any():
        last = int(np.flatnonzero(np.isfinite(one["network_loss"].values))[-1])
        for name in ("network_loss", "kgd_loss", "akgd_loss"):
            out[f"final_{name}"] = float(one[name].isel(loss_point=last))
        out["effective_gamma"] = float(one["effective_gamma"])
        for name in ("eigen_exponent", "task_exponent"):
            for when in ("initial", "final"):
                out[f"{name}_{when}"] = float(one[name].sel(when=when))
    if "specialization_dominance" in one:
        dominance = one["specialization_dominance"].sel(probe=1).dropna("step")
        if dominance.size:
            out["final_specialization_dominance"] = float(dominance[-1])
    return out


# ---- claims -----------------------------------------------------------------------------------

FE = "feature_evolution"
FE_CLAIMS = ["d. the network beats kernel gradient descent (KGD and aKGD)",
             "e. alignment A(t) rises (non-linear nets)",
             "e. alignment A(t) saturates (non-linear nets)",
             "f. KSM diagonal above off-diagonal (non-linear nets)",
             "f. KSM flat (linear nets)",
             "g. deeper nets, larger effective γ (non-linear nets)",
             "h. deeper nets align higher (non-linear nets)"]


def _nonlinear(ds: Any, runs: np.ndarray) -> np.ndarray:
    return runs[np.asarray(ds["activation"].values, dtype=str)[runs] != "linear"]


def _linear(ds: Any, runs: np.ndarray) -> np.ndarray:
    return runs[np.asarray(ds["activation"].values, dtype=str)[runs] == "linear"]


def _kernel_descent_ratio(ds: Any, run: int) -> float:
    """Network loss / min(KGD, aKGD loss) at a run's last comparison point."""
    network = ds["network_loss"].isel(run=run).values
    last = np.flatnonzero(np.isfinite(network))[-1]
    kernels = [ds[n].isel(run=run).values[last] for n in ("kgd_loss", "akgd_loss") if n in ds]
    best = np.nanmin(kernels) if np.isfinite(kernels).any() else np.nan
    return float(network[last] / best)


def _late_rise_share(steps: np.ndarray, alignment: np.ndarray) -> tuple[float, float]:
    """(A_T − A_0, (A_T − A_{T/2}) / (A_T − A_0)) of one run, A_{T/2} interpolated in step
    halfway between its first and last snapshots."""
    ok = np.isfinite(alignment)
    if ok.sum() < 2:
        return np.nan, np.nan
    steps, alignment = steps[ok], alignment[ok]
    rise = alignment[-1] - alignment[0]
    middle = np.interp((steps[0] + steps[-1]) / 2, steps, alignment)
    return float(rise), float((alignment[-1] - middle) / rise) if rise > 0 else np.nan


def _fe_alignment_rows(ds: Any, runs: np.ndarray, t: dict[str, float]) -> list[Row]:
    """Claim e: A(t) rises early and saturates, on the non-linear feature-evolution runs."""
    runs = _nonlinear(ds, runs)
    if not len(runs) or "target_alignment" not in ds:
        return untested(FE, FE_CLAIMS[1:3], "no non-linear feature-evolution runs with A(t)")
    steps = ds["step"].values.astype(float)
    rise, share = np.array([_late_rise_share(steps, ds["target_alignment"].isel(run=run)
                                             .sel(probe=1).values) for run in runs]).T
    smallest = float(np.nanmin(rise)) if np.isfinite(rise).any() else np.nan
    latest = float(np.nanmax(share)) if np.isfinite(share).any() else np.nan
    flat = int(np.sum(~np.isfinite(share)))
    return [
        Row(FE, FE_CLAIMS[1], "min over non-linear runs of A_T − A_0 (probe 1)", smallest,
            "> 0", check(smallest, 1e-12, ">="), f"{len(runs)} runs"),
        Row(FE, FE_CLAIMS[2], "max over non-linear runs of the share of the rise of A "
            "gained over the second half of the steps, (A_T − A_{T/2}) / (A_T − A_0)", latest,
            f"<= {t['saturation']}", check(latest, t["saturation"], "<="),
            f"{len(runs) - flat} rising runs" + (f"; {flat} without a rise left out"
                                                 if flat else "")),
    ]


def _specialization_rows(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim f: the KSM's diagonal dominates for non-linear nets and is flat for linear ones."""
    runs = runs_with(ds, "specialization_dominance")
    dominance = final(ds["specialization_dominance"].sel(probe=1)) if len(runs) else None
    margin = t["specialization_margin"]
    rows = []
    nonlinear, linear = _nonlinear(ds, runs), _linear(ds, runs)
    if len(nonlinear):
        value = float(np.min(dominance[nonlinear]))
        rows.append(Row(FE, FE_CLAIMS[3], "min over non-linear runs of the final KSM mean "
                        "diagonal − mean off-diagonal", value, f">= {margin}",
                        check(value, margin, ">="), f"{len(nonlinear)} runs; per depth: "
                        + per_value(ds, nonlinear, "depth", dominance, ".3g", np.nanmin)))
    else:
        rows += untested(FE, [FE_CLAIMS[3]], "no non-linear runs with the KSM")
    if len(linear):
        value = float(np.max(np.abs(dominance[linear])))
        rows.append(Row(FE, FE_CLAIMS[4], "max over linear runs of |final KSM mean diagonal "
                        "− mean off-diagonal|", value, f"<= {margin}",
                        check(value, margin, "<="), f"{len(linear)} runs; per depth: "
                        + per_value(ds, linear, "depth", dominance, ".3g",
                                     lambda v: v[np.argmax(np.abs(v))])))
    else:
        rows += untested(FE, [FE_CLAIMS[4]], "no linear runs with the KSM")
    return rows


def claim_feature_evolution(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Shan & Bordelon 2021: the network beats kernel gradient descent, A(t) rises
    and saturates, the KSM specialises for non-linear nets only, and deeper nets have a larger
    γ and align higher."""
    descent = runs_with(ds, "network_loss")
    runs = np.union1d(descent, runs_with(ds, "specialization_dominance"))
    if not len(runs):
        return untested(FE, FE_CLAIMS, "no feature-evolution runs (a sweep with analyses: "
                                        "[train_kernel] or [specialization])")
    rows = []
    nonlinear = _nonlinear(ds, descent)
    if len(nonlinear):
        ratio = np.full(ds.sizes["run"], np.nan)
        ratio[nonlinear] = [_kernel_descent_ratio(ds, run) for run in nonlinear]
        worst = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else np.nan
        rows.append(Row(FE, FE_CLAIMS[0], "max over non-linear runs of the final network loss "
                        "/ min(KGD loss, aKGD loss)", worst, "< 1", check(worst, 1 - 1e-12, "<="),
                        f"{len(nonlinear)} runs; largest per depth: "
                        + per_value(ds, nonlinear, "depth", ratio, ".3g", np.nanmax)))
    else:
        rows += untested(FE, [FE_CLAIMS[0]], "no non-linear runs with kernel gradient descent")
    rows += _fe_alignment_rows(ds, runs, t)
    rows += _specialization_rows(ds, t)
    gamma_runs = _nonlinear(ds, runs_with(ds, "effective_gamma"))
    if len(gamma_runs):
        rows.append(trend_row(FE, FE_CLAIMS[5], ds, gamma_runs, "depth",
                               ds["effective_gamma"].values.astype(float), "γ",
                               t["depth_rho"], "non-linear runs"))
    else:
        rows += untested(FE, [FE_CLAIMS[5]], "no non-linear runs with γ")
    aligned = _nonlinear(ds, runs)
    if len(aligned) and "target_alignment" in ds:
        rows.append(trend_row(FE, FE_CLAIMS[6], ds, aligned, "depth",
                               final(ds["target_alignment"].sel(probe=1)), "final A",
                               t["depth_rho"], "non-linear runs"))
    else:
        rows += untested(FE, [FE_CLAIMS[6]], "no non-linear runs with A(t)")
    return rows


# ---- figures ----------------------------------------------------------------------------------

def _fe_grid(ds: Any, variable: str, figure: str) -> Any:
    """The feature-evolution runs that measure `variable`, over (activation, depth, seed)."""
    return grid(plots.study_runs(ds, variable, figure), ("activation", "depth", "seed"), count=variable)


def _loss_curves(one: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, seeds × steps) of a loss recorded at the comparison points (`loss_step`)."""
    series = []
    for run in plots.per_seed(one, lambda r: r):
        ok = np.isfinite(run[name].values) & np.isfinite(run["loss_step"].values)
        if ok.any():
            series.append((run["loss_step"].values[ok], run[name].values[ok]))
    return plots.union_table(series)


def kernel_descent(ds: Any, path: str | Path) -> None:
    """Training loss of the network, of kernel gradient descent with the initial kernel (KGD)
    and with it rescaled to the final norm (aKGD): one panel per activation, colour per depth."""
    plt = plots.pyplot()
    fe = _fe_grid(ds, "network_loss", "kernel-descent")
    activations = plots.with_data(fe, "activation", "network_loss")
    fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 4),
                             squeeze=False)
    colors = plots.colors(plt.cm.plasma, 0.8, fe["depth"].values, fe["depth"].values)
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
                    label = f"depth {depth}{plots.diverged_note(one)}" if ls == "-" else None
                    plots.band(ax, x, np.where(table <= 10 * top, table, np.nan), label, color, ls=ls)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("log")
        ax.set_ylim(top=top)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title(f"{activation} MLP", fontsize=9)
        plots.style_legend(ax, styles, loc="lower left")
    plots.finish(fig, "Network vs kernel gradient descent with the initial kernel "
                 "(mean and min–max over seeds)", path)


def alignment_by_depth(ds: Any, path: str | Path) -> None:
    """Target alignment A(t) per depth (a panel per activation) and effective γ against depth."""
    plt = plots.pyplot()
    fe = _fe_grid(ds, "network_loss", "alignment-by-depth")
    activations = plots.with_data(fe, "activation", "network_loss")
    fig, axes = plt.subplots(1, len(activations) + 1, figsize=(4.6 * (len(activations) + 1), 3.8),
                             squeeze=False)
    colors = plots.colors(plt.cm.plasma, 0.8, fe["depth"].values, fe["depth"].values)
    for i, (ax, activation) in enumerate(zip(axes[0], activations)):
        for depth, color in zip(fe["depth"].values, colors):
            one = fe.sel(activation=activation, depth=depth)
            x, table = plots.seed_table(one["target_alignment"].sel(probe=1))
            if len(x):
                plots.band(ax, x, table, f"depth {depth}{plots.diverged_note(one)}", color)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("step")
        ax.set_ylabel("A(t)")
        ax.set_title(f"A(t) = yᵀΘy / (‖Θ‖_F ‖y‖²), {activation} MLP", fontsize=9)
        ax.legend(fontsize=7)
        depths = fe["depth"].values.astype(float)
        stats = [plots.mean_sd(plots.per_seed(fe.sel(activation=activation, depth=d),
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
    plots.finish(fig, "Kernel–target alignment by depth (mean and min–max over seeds)", path)


def _power_law(ax: Any, k: np.ndarray, spectrum: np.ndarray, fit: Any, prefix: str,
               symbol: str, color: Any) -> str:
    """Draw λ_k = C k^−b over the fit range (C by least squares in log space at the stored b);
    returns the legend text."""
    b, kmin, kmax, r2 = (plots.mean_sd(fit[n])[0] for n in ("exponent", "kmin", "kmax", "r2"))
    spread = plots.mean_sd(fit["exponent"])[1]
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
    plt = plots.pyplot()
    fe = _fe_grid(ds, "train_eigenvalues", "kernel-spectra")
    activations = plots.with_data(fe, "activation", "train_eigenvalues")
    fig, axes = plt.subplots(len(activations), 2, figsize=(10, 3.8 * len(activations)),
                             squeeze=False)
    panels = {"train_eigenvalues": ("eigen", "b", "eigenvalues λ_k", "λ_k"),
              "task_spectrum": ("task", "a", "task spectrum v_k² = Σ_c (u_k·yᶜ)²", "v_k²")}
    for row, activation in zip(axes, activations):
        sub = fe.sel(activation=activation)
        depth = max(d for d in sub["depth"].values
                    if plots.has_data(sub["train_eigenvalues"].sel(depth=d)))
        one = sub.sel(depth=depth)
        for ax, (name, (fit, symbol, title, ylabel)) in zip(row, panels.items()):
            for when, color in (("initial", "C0"), ("final", "C3")):
                k, table = plots.seed_table(one[name].sel(when=when), "mode")
                table = np.where(table > 0, table, np.nan)  # log axes; null-space noise ≤ 0
                fits = {n: plots.per_seed(one, lambda r: float(r[f"{fit}_{v}"].sel(when=when)))
                        for n, v in (("exponent", "exponent"), ("kmin", "fit_kmin"),
                                     ("kmax", "fit_kmax"), ("r2", "fit_r2"))}
                text = _power_law(ax, k.astype(float), plots.nanmean(table), fits, when,
                                  symbol, color)
                plots.band(ax, k, table, text, color)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("mode k")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, {activation} depth {depth}{plots.diverged_note(one)}", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
    plots.finish(fig, "Kernel spectra before and after training, power-law fits dashed "
                 "(λ_k ∼ k^−b, v_k² ∼ k^−a)", path)


def _layer_order(names: list[str]) -> list[str]:
    """Module names in network order (numeric where they are numbers)."""
    return sorted(names, key=lambda n: (0, int(n), "") if str(n).isdigit() else (1, 0, str(n)))


def specialization(ds: Any, path: str | Path) -> None:
    """Final kernel specialization matrix (deepest net per activation), the alignment of each
    layer's kernel to each class, and the KSM's diagonal dominance over training."""
    plt = plots.pyplot()
    sp = _fe_grid(ds, "specialization", "specialization")
    activations = plots.with_data(sp, "activation", "specialization")
    fig, axes = plt.subplots(len(activations), 3, figsize=(14, 3.9 * len(activations)),
                             squeeze=False)
    for ax in axes[1:, 2]:  # one scale: "flat" reads against the non-linear dominance
        ax.sharey(axes[0, 2])
    colors = plots.colors(plt.cm.plasma, 0.8, sp["depth"].values, sp["depth"].values)
    deepest = {a: max(d for d in sp["depth"].values
                      if plots.has_data(sp["specialization"].sel(activation=a, depth=d)))
               for a in activations}
    ksm = {a: plots.nanmean(np.stack(plots.per_seed(sp.sel(activation=a, depth=deepest[a]), lambda r:
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
                         f"{plots.diverged_note(one)}", fontsize=9)
        layers = one["layer_alignment"].sel(probe=1, when="final")
        names = _layer_order([n for n in layers["layer"].values if plots.has_data(layers.sel(layer=n))])
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
            x, table = plots.seed_table(cell["specialization_dominance"].sel(probe=1))
            if len(x):
                plots.band(row[2], x, table, f"depth {depth}{plots.diverged_note(cell)}", color)
        row[2].axhline(0, color="k", lw=0.8)
        row[2].set_xscale("symlog", linthresh=10)
        row[2].set_xlim(left=0)
        row[2].set_xlabel("step")
        row[2].set_ylabel("dominance")
        row[2].set_title(f"KSM mean diagonal − mean off-diagonal ({activation})", fontsize=9)
        row[2].legend(fontsize=7)
    plots.finish(fig, "Kernel specialization by class and by layer (mean over seeds; min–max shaded)",
            path)


STUDY = Study(
    name=NAME,
    title="Feature evolution",
    claims=claim_feature_evolution,
    measures=feature_measures,
    run_files={"ntk": "specialization", "train_kernel": "train_kernel"},
    settings=lambda config: dict(config["analysis"]["train_kernel"]),
    headline=headline,
    thresholds={
        "saturation": Threshold(0.2, "alignment 'saturates': the last half of training adds "
                                     "at most this fraction of the total rise of A(t)"),
        "specialization_margin": Threshold(0.05, "KSM 'diagonal above off-diagonal': mean "
                                                 "diagonal minus mean off-diagonal at least "
                                                 "this; 'flat' (linear nets): at most this in "
                                                 "absolute value"),
        "depth_rho": Threshold(0.5, "'deeper → larger γ': Spearman ρ of γ vs depth at least "
                                    "this"),
    },
    figures=(
        Figure("kernel_descent", kernel_descent, "captions/kernel_descent.rst", "depth sweep",
               lambda points, analyses: "train_kernel" in analyses),
        Figure("alignment_by_depth", alignment_by_depth, "captions/alignment_by_depth.rst",
               "depth sweep", lambda points, analyses: "train_kernel" in analyses),
        Figure("kernel_spectra", kernel_spectra, "captions/kernel_spectra.rst", "depth sweep",
               lambda points, analyses: "train_kernel" in analyses),
        Figure("specialization", specialization, "captions/specialization.rst", "depth sweep",
               lambda points, analyses: "specialization" in analyses),
    ),
)
