"""The metrics stage: measures along `step` from ntk.nc, into metrics.nc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import store


REACTIVATION = ("velocity_spike", "velocity_peak", "norm_dip", "recovery_steps",
                "alignment_deflection", "distance_jump")


def _metric_kernels(ds: Any, kernel: str) -> np.ndarray:
    """(probe, step, M, M) stack of the kernel the metrics use."""
    if kernel == "full":
        full = ds["ntk_full"].values.astype(np.float64)  # (probe, step, N, N, O, O)
        p, s, n, _, o, _ = full.shape
        return full.transpose(0, 1, 2, 4, 3, 5).reshape(p, s, n * o, n * o)
    name = f"ntk_{kernel}"
    if name not in ds:
        raise ValueError(f"metrics.kernel is {kernel!r} but ntk.nc has no {name}; add "
                         f"{kernel!r} to ntk.kernels")
    return ds[name].values.astype(np.float64)


def _targets(ds: Any, probe_index: int, kernel: str) -> np.ndarray:
    labels = ds["label"].values[probe_index]
    y = np.eye(ds.sizes.get("output", int(labels.max()) + 1))[labels]
    return y.reshape(-1, 1) if kernel == "full" else y  # full: one target per (sample, output)


def compute_metrics(ntk_path: str | Path, out: str | Path, *, metrics_cfg: dict[str, Any],
                    provenance: dict[str, str], sharpness_path: str | Path | None = None,
                    train_kernel_path: str | Path | None = None,
                    train_kernel_cfg: dict[str, Any] | None = None) -> None:
    """Spectral norm, kernel distance to init, velocity, alignments and the alignment spectrum
    along `step`, per probe; reactivation measures per boundary; loss and accuracy per task;
    the forgetting matrix; kernel specialization and per-layer alignment where ntk.nc has the
    kernels; and the sharpness and training-kernel analyses of the run when given."""
    import xarray as xr

    from ntkpipe import metrics as m

    ds = store.open_netcdf(ntk_path)
    centered, kernel = metrics_cfg["centered"], metrics_cfg["kernel"]
    stack = _metric_kernels(ds, kernel)
    steps = ds["step"].values
    boundaries = json.loads(ds.attrs["boundaries_json"])[1:]  # task 1 starts at step 0
    probes = ds["probe"].values
    norm, dist, vel, align, target, top_align = (np.full(stack.shape[:2], np.nan)
                                                 for _ in range(6))
    react = np.full((len(probes), len(boundaries), len(REACTIVATION)), np.nan)
    top = min(metrics_cfg["spectrum_top"], stack.shape[-1])
    eig_fraction, eig_align = (np.full(stack.shape[:2] + (top,), np.nan) for _ in range(2))
    for p in range(len(probes)):
        y = _targets(ds, p, kernel)
        values, eig_align[p] = m.eigen_alignment_stack(stack[p], y, top)  # one eigh per snapshot
        norm[p], top_align[p] = values[:, 0], eig_align[p, :, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            eig_fraction[p] = values / np.linalg.norm(stack[p], axis=(1, 2))[:, None]
        dist[p] = m.distances_to(stack[p], stack[p, 0], centered)
        vel[p] = m.kernel_velocity(stack[p], steps, centered)
        align[p] = m.alignments(stack[p], y, centered)
        target[p] = m.target_alignments(stack[p], y)
        for b, boundary in enumerate(boundaries):
            if boundary in steps:
                values = m.reactivation_measures(
                    steps, boundary, velocity=vel[p], norm=norm[p], alignment=align[p],
                    distance=dist[p], window=metrics_cfg["window"],
                    tolerance=metrics_cfg["recovery_tolerance"])
                react[p, b] = [values[k] for k in REACTIVATION]
    ends = [b for b in boundaries] + [int(steps[-1])]  # last snapshot of each trained task
    ends = [int(steps[steps <= e][-1]) if (steps <= e).any() else int(steps[0]) for e in ends]
    trained = np.arange(1, len(ends) + 1)
    acc = ds["test_accuracy"].sel(step=ends).values  # (trained task, task)
    pm = ("probe", "step")
    out_ds = xr.Dataset(
        {
            "spectral_norm": (pm, norm, {"long_name": "spectral norm ‖Θ_t‖₂ = λ_max"}),
            "kernel_distance": (pm, dist, {"long_name": "kernel distance S(Θ_0, Θ_t) = 1 − CKA",
                                           "units": "1"}),
            "kernel_velocity": (pm, vel, {"long_name": "kernel velocity S(Θ_t, Θ_t+dt)/dt",
                                          "units": "1/step"}),
            "kernel_alignment": (pm, align, {"long_name": "kernel alignment CKA(Θ_t, YYᵀ)",
                                             "units": "1"}),
            "target_alignment": (pm, target, {"long_name": "uncentred kernel-target alignment "
                                                           "yᵀΘy / (‖Θ‖_F ‖y‖²)", "units": "1"}),
            "top_eigenvector_alignment": (pm, top_align, {
                "long_name": "alignment of the top NTK eigenvector with the targets "
                             "(u₁ᵀy)² / ‖y‖²", "units": "1"}),
            "eigenvalue_fraction": (("probe", "step", "eigen"), eig_fraction, {
                "long_name": "leading NTK eigenvalues normalised by ‖Θ‖_F", "units": "1"}),
            "alignment_spectrum": (("probe", "step", "eigen"), eig_align, {
                "long_name": "eigenvector alignment spectrum a_i = (u_iᵀy)² / ‖y‖²",
                "units": "1"}),
            "test_loss": ds["test_loss"].variable, "test_accuracy": ds["test_accuracy"].variable,
            "train_loss": ds["train_loss"].variable,
            "train_accuracy": ds["train_accuracy"].variable,
            "accuracy_matrix": (("trained_task", "task"), acc,
                                {"long_name": "held-out accuracy on `task` after training "
                                              "on `trained_task` (forgetting matrix)"}),
            "boundary_step": ("boundary", np.array(boundaries, dtype=np.int64),
                              {"long_name": "first step of each later task"}),
            "diverged_step": ((), int(ds.attrs["diverged_step"]),
                              {"long_name": "step whose loss was not finite (-1: none)"}),
            **{name: (("probe", "boundary"), react[..., i], {"long_name": name.replace("_", " ")})
               for i, name in enumerate(REACTIVATION)},
        },
        coords={"step": ds["step"].variable, "phase": ds["phase"].variable,
                "epoch": ds["epoch"].variable, "probe": probes, "task": ds["task"].values,
                "trained_task": trained, "boundary": np.arange(1, len(boundaries) + 1),
                "eigen": np.arange(1, top + 1)},
    )
    out_ds = out_ds.merge(_specialization(ds))
    if sharpness_path is not None:
        out_ds = out_ds.merge(_sharpness(sharpness_path, ds["step"].values))
    if train_kernel_path is not None:
        out_ds = out_ds.merge(_train_kernel_measures(store.open_netcdf(train_kernel_path),
                                                     train_kernel_cfg or {}))
    out_ds.attrs.update(store.dataset_attrs("ntkpipe kernel metrics", provenance))
    for key in ("boundaries_json", "task_classes_json", "similarity_json",
                "normalisation_json"):
        out_ds.attrs[key] = ds.attrs.get(key, "{}")
    out_ds.attrs["metric_kernel"] = kernel
    out_ds.attrs["centered"] = int(centered)
    store.write_netcdf(out_ds, out)


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

    out = xr.Dataset(coords={"when": ["initial", "final"]})
    # "final" is the end of phase 1, as for the training-set kernel (later tasks shift it)
    phase1 = ds["phase"].values == 1
    onehot = [_targets(ds, p, "trace") for p in range(ds.sizes["probe"])]
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


def _sharpness(path: str | Path, steps: np.ndarray) -> Any:
    """The sharpness file's variables on the metrics' steps."""
    sharp = store.open_netcdf(path)
    if not np.array_equal(sharp["step"].values, steps):
        raise store.CorruptFileError(f"{path}: its steps differ from the NTK snapshots'; "
                                     "rerun the sharpness rule")
    keep = ["sharpness", "gauss_newton_sharpness", "sharpness_subset_loss",
            "stability_threshold"]
    return sharp[keep].drop_attrs(deep=False)


def _loss_grid(last: int, points: int) -> np.ndarray:
    """0, the last step, and log-spaced steps between (at most `points` in all)."""
    grid = np.round(np.geomspace(1, max(last, 1), max(points - 1, 1))).astype(np.int64)
    return np.unique(np.concatenate([[0], grid, [last]]))


def _train_kernel_measures(tk: Any, cfg: dict[str, Any]) -> Any:
    """KGD and aKGD loss curves beside the network's, eigen- and task-spectra with power-law
    fits, alignment and γ, from the training-set kernels (Shan & Bordelon 2021; science.md §3)."""
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
    # (I − ηK/n)^t is stable while η λ_max / n < 2 (science.md §3, discrete KGD)
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
            "long_name": "effective feature-learning rate γ (science.md §3, Eq. 20)"}),
        **{name: ("when", values, {"long_name": described.get(name, name.replace("_", " "))})
           for name, values in fits.items()},
    }
    return xr.Dataset(variables, coords={"when": ["initial", "final"],
                                         "mode": np.arange(1, n + 1)})
