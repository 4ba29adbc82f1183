"""Rapid feature evolution accelerates learning (Shan & Bordelon 2021, arXiv 2105.14301).

Everything on the training set's kernel, as the paper measures it: the kernel–target alignment
A(t) rises early and saturates over a fixed horizon; the network beats kernel gradient descent
with the frozen initial kernel (KGD) and with it rescaled to the final norm (aKGD); after
training the eigenvalues decay more slowly (b falls) and the targets load the top modes more
(a rises); the kernel specialises per class (the kernel specialization matrix, KSM) for
non-linear nets but not for deep linear ones on linear teacher targets, in the hidden layers'
part K_W while the readout part K_V aligns with every target alike; deeper nets have a larger
effective feature-learning rate γ and align higher (see `docs/science.md` §3). The
`train_kernel` analysis reduces the training-set kernel at every snapshot; the `specialization`
analysis' probe-set KSM is kept under `probe_*` names. This module derives the measures,
checks the claims and draws the figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe.scorecard import (Row, change_row, check, final, per_value, runs_with, trend_row,
                               untested)
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
        out["probe_specialization"] = (("probe", "when", "output", "output_j"),
                                 np.stack([ksm[p, e] for p, e in enumerate(ends)]), {
            "long_name": "probe-set kernel specialization matrix KSM(c, c'): alignment of block "
                         "Θ^{c,c} "
                         "to class c' over its mean across blocks", "units": "1"})
        out["probe_specialization_dominance"] = (("probe", "step"), dominance, {
            "long_name": "probe-set KSM mean diagonal minus mean off-diagonal", "units": "1"})
    if "ntk_per_layer" in ds:
        layers = ds["ntk_per_layer"].values.astype(np.float64)  # (probe, step, L, N, N)
        rows = np.full(layers.shape[:1] + (2,) + layers.shape[2:3] + (ds.sizes["output"],),
                       np.nan)
        for p in range(layers.shape[0]):
            present = np.unique(ds["label"].values[p])
            for w, s in enumerate(_ends(layers[p][phase1])):
                rows[p, w][:, present] = layer_alignment(layers[p, s], onehot[p][:, present])
        out["probe_layer_alignment"] = (("probe", "when", "probe_layer", "output"), rows, {
            "long_name": "probe-set alignment yᶜᵀΘ_l yᶜ / (‖Θ_l‖_F ‖yᶜ‖²) of each layer's part "
                         "of the traced NTK to each class target", "units": "1"})
        out = out.assign_coords(probe_layer=ds["layer"].values)
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
    y = (tk["train_target"].values.astype(np.float64) if "train_target" in tk
         else np.eye(tk.sizes["output"])[labels])
    f0 = tk["train_output"].values[0]
    loss_steps, network = tk["loss_step"].values, tk["network_loss"].values
    grid = _loss_grid(int(loss_steps[-1]), cfg.get("loss_points", 200))
    lr = float(tk.attrs["learning_rate"])
    kgd_curve, akgd_curve = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    usable = np.isfinite(k0).all() and np.isfinite(k_final).all()
    n = len(labels)
    chosen = tuple(cfg["fit_range"]) if cfg.get("fit_range") else fixed_fit_range(n)
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
        # null space: neither fit reaches past it
        rank = spectra.default_power_law_range(eig[w])[1]
        fit_range = (chosen[0], min(chosen[1], rank))
        for kind, values in (("eigen", eig[w]), ("task", task[w])):
            try:
                fit = spectra.power_law_fit(values, fit_range)
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
    out = xr.Dataset(variables, coords={"when": ["initial", "final"],
                                        "mode": np.arange(1, n + 1)})
    return out.merge(_along_training(tk)) if "train_alignment_t" in tk else out


def fixed_fit_range(samples: int) -> tuple[int, int]:
    """The power-law fit range chosen before looking at any spectrum: modes 2 … ⌊P/10⌋ of P
    (mode 1, the kernel's near-constant direction, left out; the finite-size tail, where a
    spectrum of P points bends down, cut)."""
    return 2, max(3, samples // 10)


def _ksm(alignment: np.ndarray) -> np.ndarray:
    """KSM(c, c') from A(Θ^{c,c}, y^{c'}) (..., block, target): each column over its mean
    across blocks (Shan & Bordelon 2021, §4.3)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return alignment / alignment.mean(axis=-2, keepdims=True)


def _dominance(ksm: np.ndarray) -> np.ndarray:
    """Mean diagonal minus mean off-diagonal of KSMs (..., O, O)."""
    o = ksm.shape[-1]
    diag = np.trace(ksm, axis1=-2, axis2=-1) / o
    return diag - (ksm.sum(axis=(-2, -1)) - diag * o) / (o * o - o)


def _along_training(tk: Any) -> Any:
    """A(t), ‖Θ(t)‖_F and the kernel specialization along phase 1 from the training-set
    kernels at every snapshot: the whole kernel, its hidden-layer part K_W and its readout
    part K_V, and each layer alone."""
    import xarray as xr

    ksm = _ksm(tk["block_alignment"].values)
    hidden = _ksm(tk["hidden_block_alignment"].values)
    layers = _ksm(tk["layer_block_alignment"].values)  # (step, layer, O, O)
    last = _ends(ksm)[1]
    mean = "mean diagonal minus mean off-diagonal of the training-set KSM"
    return xr.Dataset({
        "fe_alignment": ("step", tk["train_alignment_t"].values, {
            "long_name": "A(t) of the traced NTK on the whole training set, ⟨Θ, YYᵀ⟩_F / "
                         "(‖Θ‖_F ‖YYᵀ‖_F)", "units": "1"}),
        "fe_kernel_norm": ("step", tk["train_kernel_norm"].values, {
            "long_name": "‖Θ(t)‖_F of the traced NTK on the whole training set"}),
        "train_ksm": (("block", "target_class"), ksm[last], {
            "long_name": "final training-set KSM(c, c') of the per-output blocks Θ^{c,c}",
            "units": "1"}),
        "train_ksm_hidden": (("block", "target_class"), hidden[last], {
            "long_name": "final training-set KSM of the hidden layers' part K_W^{c,c}",
            "units": "1"}),
        "train_ksm_readout": (("block", "target_class"), layers[last, -1], {
            "long_name": "final training-set KSM of the readout layer's part K_V^{c,c}",
            "units": "1"}),
        "train_ksm_dominance": ("step", _dominance(ksm), {"long_name": mean, "units": "1"}),
        "hidden_ksm_dominance": ("step", _dominance(hidden), {
            "long_name": f"{mean}, hidden layers' part K_W", "units": "1"}),
        "readout_ksm_dominance": ("step", _dominance(layers[:, -1]), {
            "long_name": f"{mean}, readout layer's part K_V", "units": "1"}),
        "layer_ksm_dominance": (("step", "fe_layer"), _dominance(layers), {
            "long_name": f"{mean}, each layer's part alone", "units": "1"}),
        "layer_class_alignment": (("fe_layer", "target_class"), np.diagonal(
            tk["layer_block_alignment"].values[last], axis1=-2, axis2=-1), {
            "long_name": "final A(Θ_l^{c,c}, y^c) of each layer's own block for class c",
            "units": "1"}),
    }, coords={"step": tk["step"].values, "block": tk["block"].values,
               "target_class": tk["target_class"].values,
               "fe_layer": np.arange(1, tk.sizes["layer"] + 1)})


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
    if "train_ksm_dominance" in one:
        for name in ("train_ksm_dominance", "hidden_ksm_dominance", "readout_ksm_dominance"):
            series = one[name].dropna("step")
            if series.size:
                out[f"final_{name}"] = float(series[-1])
    return out


# ---- claims -----------------------------------------------------------------------------------

FE = "feature_evolution"
FE_CLAIMS = ["d. the network beats kernel gradient descent (KGD and aKGD)",
             "e. alignment A(t) rises (non-linear nets)",
             "e. alignment A(t) saturates (non-linear nets)",
             "f. KSM diagonal above off-diagonal (non-linear nets)",
             "f. KSM flat (linear nets)",
             "g. deeper nets, larger effective γ (non-linear nets)",
             "h. deeper nets align higher (non-linear nets)",
             "f. readout part K_V aligns with every target alike, hidden part K_W specialises "
             "(non-linear nets)",
             "c. eigenvalue exponent b falls after training (non-linear nets)",
             "c. task-spectrum exponent a rises after training (non-linear nets)"]


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
    if not len(runs) or "fe_alignment" not in ds:
        return untested(FE, FE_CLAIMS[1:3], "no non-linear feature-evolution runs with A(t)")
    steps = ds["step"].values.astype(float)
    rise, share = np.array([_late_rise_share(steps, ds["fe_alignment"].isel(run=run).values)
                            for run in runs]).T
    smallest = float(np.nanmin(rise)) if np.isfinite(rise).any() else np.nan
    latest = float(np.nanmax(share)) if np.isfinite(share).any() else np.nan
    flat = int(np.sum(~np.isfinite(share)))
    return [
        Row(FE, FE_CLAIMS[1], "min over non-linear runs of A_T − A_0 (training set)", smallest,
            "> 0", check(smallest, 1e-12, ">="), f"{len(runs)} runs", n=len(runs)),
        Row(FE, FE_CLAIMS[2], "max over non-linear runs of the share of the rise of A "
            "gained over the second half of the steps, (A_T − A_{T/2}) / (A_T − A_0)", latest,
            f"<= {t['saturation']}", check(latest, t["saturation"], "<="),
            f"{len(runs) - flat} rising runs" + (f"; {flat} without a rise left out"
                                                 if flat else ""), n=len(runs) - flat),
    ]


def _specialization_rows(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim f: the KSM's diagonal dominates for non-linear nets and is flat for linear ones."""
    runs = runs_with(ds, "train_ksm_dominance")
    dominance = final(ds["train_ksm_dominance"]) if len(runs) else None
    margin = t["specialization_margin"]
    rows = []
    nonlinear, linear = _nonlinear(ds, runs), _linear(ds, runs)
    if len(nonlinear):
        value = float(np.min(dominance[nonlinear]))
        rows.append(Row(FE, FE_CLAIMS[3], "min over non-linear runs of the final KSM mean "
                        "diagonal − mean off-diagonal", value, f">= {margin}",
                        check(value, margin, ">="), f"{len(nonlinear)} runs; per depth: "
                        + per_value(ds, nonlinear, "depth", dominance, ".3g", np.nanmin),
                        n=len(nonlinear)))
    else:
        rows += untested(FE, [FE_CLAIMS[3]], "no non-linear runs with the KSM")
    if len(linear):
        value = float(np.max(np.abs(dominance[linear])))
        rows.append(Row(FE, FE_CLAIMS[4], "max over linear runs of |final KSM mean diagonal "
                        "− mean off-diagonal|", value, f"<= {margin}",
                        check(value, margin, "<="), f"{len(linear)} runs; per depth: "
                        + per_value(ds, linear, "depth", dominance, ".3g",
                                     lambda v: v[np.argmax(np.abs(v))]), n=len(linear)))
    else:
        rows += untested(FE, [FE_CLAIMS[4]], "no linear runs with the KSM")
    if len(nonlinear):
        hidden = final(ds["hidden_ksm_dominance"])[nonlinear]
        readout = np.abs(final(ds["readout_ksm_dominance"])[nonlinear])
        value = float(np.nanmin(hidden))
        alike = float(np.nanmax(readout))
        holds = ("untested" if not np.isfinite(value) else
                 str(bool(value >= margin and alike <= margin)).lower())
        rows.append(Row(FE, FE_CLAIMS[7], "min over non-linear runs of the final KSM dominance "
                        "of the hidden layers' part K_W", value, f">= {margin}, and readout "
                        f"|dominance| <= {margin}", holds,
                        f"{len(nonlinear)} runs; readout part K_V: max |dominance| "
                        f"{alike:.3g}; hidden part per depth: "
                        + per_value(ds, nonlinear, "depth", final(ds["hidden_ksm_dominance"]),
                                    ".3g", np.nanmin), n=len(nonlinear)))
    else:
        rows += untested(FE, [FE_CLAIMS[7]], "no non-linear runs with the per-layer KSM")
    return rows


def _spectrum_rows(ds: Any, runs: np.ndarray) -> list[Row]:
    """Claim c: after training the eigenvalues decay more slowly (b falls) and the targets
    concentrate on the top modes (a rises), on fit ranges fixed before looking."""
    runs = _nonlinear(ds, runs)
    if not len(runs) or "eigen_exponent" not in ds:
        return untested(FE, FE_CLAIMS[8:10], "no non-linear runs with spectra")
    rows = []
    for claim, name, symbol, sense in ((FE_CLAIMS[8], "eigen", "b", "<="),
                                       (FE_CLAIMS[9], "task", "a", ">=")):
        fit = ds[f"{name}_exponent"].isel(run=runs)
        r2 = ds[f"{name}_fit_r2"].isel(run=runs)
        kmin, kmax = (ds[f"{name}_fit_{k}"].isel(run=runs) for k in ("kmin", "kmax"))
        span = f"modes {np.nanmin(kmin.values):g}–{np.nanmax(kmax.values):g}"
        rows.append(change_row(FE, claim, fit.sel(when="initial").values,
                               fit.sel(when="final").values, symbol, sense, "non-linear runs",
                               f"fits on {span}; r² min {np.nanmin(r2.values):.3g}, median "
                               f"{np.nanmedian(r2.values):.3g}"))
    return rows


def claim_feature_evolution(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Shan & Bordelon 2021: the network beats kernel gradient descent, A(t) rises
    and saturates, the KSM specialises for non-linear nets only, and deeper nets have a larger
    γ and align higher."""
    descent = runs_with(ds, "network_loss")
    runs = np.union1d(descent, runs_with(ds, "train_ksm_dominance"))
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
                        + per_value(ds, nonlinear, "depth", ratio, ".3g", np.nanmax),
                        n=len(nonlinear)))
    else:
        rows += untested(FE, [FE_CLAIMS[0]], "no non-linear runs with kernel gradient descent")
    rows += _fe_alignment_rows(ds, runs, t)
    rows += _specialization_rows(ds, t)
    rows += _spectrum_rows(ds, descent)
    gamma_runs = _nonlinear(ds, runs_with(ds, "effective_gamma"))
    if len(gamma_runs):
        rows.append(trend_row(FE, FE_CLAIMS[5], ds, gamma_runs, "depth",
                               ds["effective_gamma"].values.astype(float), "γ",
                               t["depth_rho"], "non-linear runs"))
    else:
        rows += untested(FE, [FE_CLAIMS[5]], "no non-linear runs with γ")
    aligned = _nonlinear(ds, runs_with(ds, "fe_alignment"))
    if len(aligned):
        rows.append(trend_row(FE, FE_CLAIMS[6], ds, aligned, "depth",
                               final(ds["fe_alignment"]), "final A",
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
                    label = f"depth {depth}{plots.status_note(one)}" if ls == "-" else None
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
    """A(t) and ‖Θ(t)‖_F of the training-set kernel per depth (a column per activation), and γ
    and the final A against depth (Shan & Bordelon 2021, Figs. 1 and 6)."""
    plt = plots.pyplot()
    fe = _fe_grid(ds, "fe_alignment", "alignment-by-depth")
    activations = plots.with_data(fe, "activation", "fe_alignment")
    columns = len(activations) + 1
    fig, axes = plt.subplots(2, columns, figsize=(4.6 * columns, 7.4), squeeze=False)
    colors = plots.colors(plt.cm.plasma, 0.8, fe["depth"].values, fe["depth"].values)
    depths = fe["depth"].values.astype(float)
    for i, activation in enumerate(activations):
        for row, (name, label) in enumerate((("fe_alignment", "A(t)"),
                                             ("fe_kernel_norm", "‖Θ(t)‖_F"))):
            ax = axes[row, i]
            for depth, color in zip(fe["depth"].values, colors):
                one = fe.sel(activation=activation, depth=depth)
                x, table = plots.seed_table(one[name])
                if len(x):
                    plots.band(ax, x, table, f"depth {depth}{plots.status_note(one)}", color)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(left=0)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.set_title(f"{label} of the training-set NTK, {activation} MLP", fontsize=9)
            ax.legend(fontsize=7)
        for row, (name, pick) in enumerate((
                ("γ", lambda r: float(r["effective_gamma"])),
                ("final A", lambda r: final_value(r["fe_alignment"])))):
            stats = [plots.mean_sd(plots.per_seed(fe.sel(activation=activation, depth=d), pick))
                     for d in depths]
            mean, sd = np.array(stats).T
            axes[row, -1].errorbar(depths, mean, yerr=sd, marker="o", capsize=3,
                                   color=f"C{i}", label=activation)
    for row, (label, title) in enumerate((("γ", "effective feature-learning rate γ"),
                                          ("final A", "final alignment A(T)"))):
        ax = axes[row, -1]
        ax.set_xticks(fe["depth"].values)
        ax.set_xlabel("depth (hidden layers)")
        ax.set_ylabel(label)
        ax.set_title(f"{title} (mean ± sd over seeds)", fontsize=9)
        ax.legend(fontsize=7)
    plots.finish(fig, "Kernel–target alignment and kernel norm on the training set, by depth "
                 "(mean and min–max over seeds)", path)


def final_value(da: Any) -> float:
    """The last finite value of a series (NaN when none)."""
    values = np.asarray(da.values, dtype=float)
    finite = np.flatnonzero(np.isfinite(values))
    return float(values[finite[-1]]) if len(finite) else np.nan


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
            ax.set_title(f"{title}, {activation} depth {depth}{plots.status_note(one)}", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
    plots.finish(fig, "Kernel spectra before and after training, power-law fits dashed "
                 "(λ_k ∼ k^−b, v_k² ∼ k^−a)", path)


def specialization(ds: Any, path: str | Path) -> None:
    """Final training-set KSM of the whole kernel, of its readout part K_V and of its hidden
    part K_W (deepest net per activation), and the three dominances over training (Shan &
    Bordelon 2021, Figs. 4 and 5)."""
    plt = plots.pyplot()
    sp = _fe_grid(ds, "train_ksm", "specialization")
    activations = plots.with_data(sp, "activation", "train_ksm")
    fig, axes = plt.subplots(len(activations), 4, figsize=(18, 3.9 * len(activations)),
                             squeeze=False)
    for ax in axes[1:, 3]:  # one scale: "flat" reads against the non-linear dominance
        ax.sharey(axes[0, 3])
    deepest = {a: max(d for d in sp["depth"].values
                      if plots.has_data(sp["train_ksm"].sel(activation=a, depth=d)))
               for a in activations}
    parts = {"train_ksm": "whole kernel Θ", "train_ksm_readout": "readout part K_V",
             "train_ksm_hidden": "hidden part K_W"}
    matrices = {(a, name): plots.nanmean(np.stack(plots.per_seed(
        sp.sel(activation=a, depth=deepest[a]), lambda r, n=name: r[n].values)))
        for a in activations for name in parts}
    reach = max(float(np.nanmax(np.abs(m - 1))) for m in matrices.values()
                if np.isfinite(m).any())
    reach = reach if np.isfinite(reach) and reach > 0 else 1.0
    styles = {"train_ksm_dominance": ("whole kernel", "-"),
              "hidden_ksm_dominance": ("hidden part K_W", "--"),
              "readout_ksm_dominance": ("readout part K_V", ":")}
    for row, activation in zip(axes, activations):
        one = sp.sel(activation=activation, depth=deepest[activation])
        for ax, (name, title) in zip(row[:3], parts.items()):
            image = ax.imshow(matrices[(activation, name)], cmap="RdBu_r", vmin=1 - reach,
                              vmax=1 + reach)
            fig.colorbar(image, ax=ax, fraction=0.046)
            ax.set_xlabel("target class c′")
            ax.set_ylabel("kernel block c")
            ax.set_title(f"final KSM, {title}, {activation} depth {deepest[activation]}"
                         f"{plots.status_note(one)}", fontsize=8)
        for name, (label, ls) in styles.items():
            x, table = plots.seed_table(one[name])
            if len(x):
                plots.band(row[3], x, table, label, "k", ls=ls)
        row[3].axhline(0, color="0.5", lw=0.8)
        row[3].set_xscale("symlog", linthresh=10)
        row[3].set_xlim(left=0)
        row[3].set_xlabel("step")
        row[3].set_ylabel("KSM mean diagonal − mean off-diagonal")
        row[3].set_title(f"specialization over training ({activation} depth "
                         f"{deepest[activation]})", fontsize=8)
        row[3].legend(fontsize=7)
    plots.finish(fig, "Kernel specialization on the training set: whole kernel, readout and "
                 "hidden parts (mean over seeds; min–max shaded)", path)


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
               lambda points, analyses: "train_kernel" in analyses),
    ),
)
