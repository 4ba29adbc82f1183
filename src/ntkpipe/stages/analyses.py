"""The per-run analyses a sweep turns on (`analyses:`), as file stages.

- `measure_sharpness` (edge of stability, docs/science.md §2): at every snapshot, the top Hessian
  eigenvalues of the loss of the task being trained, on a fixed class-balanced subset of its
  training set, and the Gauss–Newton part's top eigenvalue from the full NTK on that subset.
- `train_kernel` (feature evolution, docs/science.md §3): on task 1's training set at every
  phase-1 snapshot, the traced NTK's alignment and norm, and the per-layer kernels per output
  block (on a fixed subset) reduced to their alignment with each class target; the traced NTK
  and the outputs at the first and last snapshot, and the loss at every step: what kernel
  gradient descent, the spectra, the KSM and γ are computed from (by the study, without torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import store
from ntkpipe.progress import ProgressBar
from ntkpipe.stages.data import (Log, compute_device, load_data, load_split, quiet,
                                 target_matrix, task_subset, tensors)
from ntkpipe.stages.kernels import load_snapshots
from ntkpipe.stages.training import fit_targets, make_model, run_lr

def measure_sharpness(data_path: str | Path, split_path: str | Path,
                      snapshot_paths: list[str | Path], out: str | Path, *,
                      run: dict[str, Any], model_cfg: dict[str, Any],
                      train_cfg: dict[str, Any], sharpness_cfg: dict[str, Any],
                      provenance: dict[str, str], log: Log = quiet) -> None:
    """Edge of stability along phase 1: the sharpness the run measured as it trained (every
    few steps), and at every snapshot the full NTK on the same fixed training subset — its
    Gauss–Newton sharpness λ_max/n, its alignment with the flattened targets and the alignment
    spectrum of its top eigenvectors (Jiang, Cohen & Li 2025, arXiv 2507.12837)."""
    import torch
    import xarray as xr

    from ntkpipe.hessian import gauss_newton_sharpness
    from ntkpipe.metrics import full_to_matrix, target_alignment
    from ntkpipe.ntk import empirical_ntk
    from ntkpipe.spectra import alignment_spectrum
    from ntkpipe.train import loss_value

    data, split = load_data(data_path), load_split(split_path)
    snaps = load_snapshots(snapshot_paths)
    if not snaps["monitor_steps"]:
        raise store.CorruptFileError(
            f"{snapshot_paths[0]} holds no sharpness measured during training (written before "
            "the sharpness monitor existed?): delete it so that phase 1 reruns")
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    # float64 throughout: Lanczos needs exact products (states load into it converted)
    model = make_model(data, run, model_cfg).to(device, torch.float64).eval()
    chosen = torch.from_numpy(task_subset(data, split, 1, sharpness_cfg["subset"], run["seed"]))
    x = torch.from_numpy(data["x_train"])[chosen].to(device, torch.float64)
    y = fit_targets(data, run, {"x_train": torch.from_numpy(data["x_train"]).double(),
                                "y_train": torch.from_numpy(data["y_train"])})[chosen].to(device)
    phase1 = [s for s, task in enumerate(snaps["tasks"]) if task == 1]
    # the flattened targets, ordered (sample, output) like full_to_matrix's rows
    target = target_matrix(data, run, chosen.numpy()).ravel()
    top = min(sharpness_cfg["eigenvectors"], len(target))
    gauss_newton, subset_loss = np.full(len(phase1), np.nan), np.full(len(phase1), np.nan)
    alignment = np.full(len(phase1), np.nan)
    spectrum, fraction = np.full((len(phase1), top), np.nan), np.full((len(phase1), top), np.nan)
    bar = ProgressBar(len(phase1), "training-subset kernel")
    for i, s in enumerate(phase1):
        model.load_state_dict(snaps["states"][s])
        with torch.no_grad():
            outputs = model(x)
            subset_loss[i] = float(loss_value(outputs, y, run["loss"]))
        if np.isfinite(subset_loss[i]):
            full = empirical_ntk(model, x, mode="full", dtype=torch.float64)
            gauss_newton[i] = gauss_newton_sharpness(full, outputs, run["loss"])
            matrix = full_to_matrix(full)
            alignment[i] = target_alignment(matrix, target)
            fraction[i], spectrum[i] = alignment_spectrum(matrix, target, top)
        bar.update(i + 1, f"step {snaps['steps'][s]} A {alignment[i]:.4g}")
        if (i + 1) % 10 == 0 or i + 1 == len(phase1):
            log(f"snapshot {i + 1}/{len(phase1)} step {snaps['steps'][s]} "
                f"Gauss-Newton {gauss_newton[i]:.5g} alignment {alignment[i]:.5g}")
    bar.close()
    lr = run_lr(run, train_cfg)
    momentum = float(train_cfg.get("momentum", 0.0))
    monitored = np.array(snaps["monitor_values"], dtype=np.float64).reshape(
        len(snaps["monitor_steps"]), -1)
    full_name = "the full (P·O × P·O) NTK on the sharpness subset"
    ds = xr.Dataset(
        {
            "sharpness": (("sharpness_step", "hessian_eig"), monitored, {
                "long_name": "top eigenvalues of the training-loss Hessian on the sharpness "
                             "subset (Lanczos), measured while the run trained",
                "subset": int(len(chosen))}),
            "gauss_newton_sharpness": ("step", gauss_newton, {
                "long_name": "top eigenvalue of the Gauss–Newton part of the Hessian: "
                             + ("λ_max(Θ_full)/n" if run["loss"] == "mse" else
                                "λ_max(S Θ_full S)/n, S² the softmax Hessians")}),
            "sharpness_subset_loss": ("step", subset_loss, {
                "long_name": "training loss on the sharpness subset"}),
            "train_target_alignment": ("step", alignment, {
                "long_name": f"kernel–target alignment yᵀΘy / (‖Θ‖_F ‖y‖²) of {full_name}, y "
                             "the flattened one-hot targets", "units": "1"}),
            "train_alignment_spectrum": (("step", "eigenvector"), spectrum, {
                "long_name": f"a_i = (u_iᵀy)² / ‖y‖² of the top eigenvectors of {full_name}",
                "units": "1"}),
            "train_eigenvalue_fraction": (("step", "eigenvector"), fraction, {
                "long_name": f"λ_i / ‖Θ‖_F of the top eigenvalues of {full_name}",
                "units": "1"}),
            # heavy-ball momentum β moves the threshold to (2 + 2β)/η (Cohen et al. 2021, §3)
            "stability_threshold": ((), (2.0 + 2.0 * momentum) / lr, {
                "long_name": "(2 + 2β)/η, the stability threshold of gradient descent with "
                             "momentum β"}),
            "dense_window_step": ((), int(snaps["burst_step"]), {
                "long_name": "step at which the sharpness first reached the dense window's "
                             "trigger (−1: never)"}),
        },
        coords={"step": np.array([snaps["steps"][s] for s in phase1], dtype=np.int64),
                "sharpness_step": np.array(snaps["monitor_steps"], dtype=np.int64),
                "hessian_eig": np.arange(1, monitored.shape[1] + 1),
                "eigenvector": np.arange(1, top + 1)},
    )
    ds.attrs.update(store.dataset_attrs("ntkpipe sharpness along training", provenance))
    ds.attrs.update({"learning_rate": lr, "momentum": momentum, "loss": run["loss"],
                     "dense_from": float(sharpness_cfg["dense"]["from"])})
    store.write_netcdf(ds, out)


def train_kernel(data_path: str | Path, split_path: str | Path, snapshots_path: str | Path,
                 out: str | Path, *, run: dict[str, Any], model_cfg: dict[str, Any],
                 train_cfg: dict[str, Any], ntk_cfg: dict[str, Any],
                 settings: dict[str, Any], provenance: dict[str, str], log: Log = quiet) -> None:
    """Task 1's training-set kernel along phase 1 (Shan & Bordelon 2021, arXiv 2105.14301):
    at every snapshot the traced NTK's alignment with the targets and its norm on all P
    training points, and the per-layer kernels per output block on a fixed class-balanced
    subset (their alignment with each class target); the traced kernel itself and the outputs
    at the first and the last snapshot (for KGD, the spectra and γ); the loss of every step."""
    import torch
    import xarray as xr

    from ntkpipe.ntk import empirical_ntk, layer_names
    from ntkpipe.specialization import class_alignments, target_cosine

    data, split = load_data(data_path), load_split(split_path)
    snaps = load_snapshots([snapshots_path])
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    model = make_model(data, run, model_cfg).to(device).eval()
    idx = np.unique(split.train[0])
    x = tensors(data, device)["x_train"][torch.from_numpy(idx).to(device)]
    targets = target_matrix(data, run, idx)
    blocks_at = np.searchsorted(idx, task_subset(data, split, 1, settings["block_subset"],
                                                 run["seed"]))
    x_blocks = x[torch.from_numpy(blocks_at).to(device)]
    dtype = torch.float64 if ntk_cfg["dtype"] == "float64" else torch.float32
    budget = int(ntk_cfg["max_memory_gb"] * 2**30)
    phase1 = [s for s, task in enumerate(snaps["tasks"]) if task == 1]
    names = layer_names(model)
    outputs_n = data["num_classes"]
    alignment, norm = np.full(len(phase1), np.nan), np.full(len(phase1), np.nan)
    # the outputs with a target: a class-incremental task 1 leaves the others of the head idle
    present = np.flatnonzero(np.abs(targets).sum(axis=0) > 0)
    sub_targets = targets[blocks_at][:, present]
    c = len(present)
    block = np.full((len(phase1), c, c), np.nan)
    layer_block = np.full((len(phase1), len(names), c, c), np.nan)
    hidden = np.full((len(phase1), c, c), np.nan)
    ends = {phase1[0]: 0, phase1[-1]: 1}
    kernels = np.full((2, len(idx), len(idx)), np.nan)
    outputs = np.full((2, len(idx), outputs_n), np.nan)
    bar = ProgressBar(len(phase1), "training-set kernel")
    for i, s in enumerate(phase1):
        model.load_state_dict(snaps["states"][s])
        with torch.no_grad():
            f = model(x).double().cpu().numpy()
        if np.isfinite(f).all():
            k = empirical_ntk(model, x, mode="trace", dtype=dtype, max_memory=budget
                              ).double().cpu().numpy()
            alignment[i], norm[i] = target_cosine(k, targets), float(np.linalg.norm(k))
            per = empirical_ntk(model, x_blocks, mode="per_output", per_layer=True,
                                dtype=dtype, max_memory=budget).double().cpu().numpy()[:, present]
            block[i] = class_alignments(per.sum(0), sub_targets)
            if len(names) > 1:  # K_W, every layer below the readout together
                hidden[i] = class_alignments(per[:-1].sum(0), sub_targets)
            for layer in range(len(names)):
                layer_block[i, layer] = class_alignments(per[layer], sub_targets)
            if s in ends:
                kernels[ends[s]], outputs[ends[s]] = k, f
        bar.update(i + 1, f"step {snaps['steps'][s]} A {alignment[i]:.4g}")
        if (i + 1) % 10 == 0 or i + 1 == len(phase1):
            log(f"snapshot {i + 1}/{len(phase1)} step {snaps['steps'][s]} alignment "
                f"{alignment[i]:.5g} norm {norm[i]:.5g}")
    bar.close()
    target_kind = ("one-hot labels" if run.get("target", "labels") == "labels"
                   else "linear teacher outputs")
    blocks_name = (f"the per-output NTK blocks Θ^{{c,c}} on a fixed class-balanced subset of "
                   f"{len(blocks_at)} training samples")
    ds = xr.Dataset(
        {
            # kept in the compute dtype: float32 rounding would put a noise floor under the
            # spectrum (~1e-7 λ_max) that the power-law fits would read as its tail
            "train_ntk": (("when", "sample", "sample_j"), kernels.astype(
                np.float64 if ntk_cfg["dtype"] == "float64" else np.float32),
                          {"long_name": "traced NTK on task 1's training set",
                           "computed_in": ntk_cfg["dtype"]}),
            "train_output": (("when", "sample", "output"), outputs,
                             {"long_name": "network outputs on task 1's training set"}),
            "train_target": (("sample", "output"), targets,
                             {"long_name": f"training targets ({target_kind})"}),
            "train_alignment_t": ("step", alignment, {
                "long_name": "A(t) = ⟨Θ, YYᵀ⟩_F / (‖Θ‖_F ‖YYᵀ‖_F) of the traced NTK on task 1's "
                             "whole training set", "units": "1"}),
            "train_kernel_norm": ("step", norm, {
                "long_name": "‖Θ‖_F of the traced NTK on task 1's whole training set"}),
            "block_alignment": (("step", "block", "target_class"), block, {
                "long_name": f"A(Θ^{{c,c}}, y^{{c'}}) of {blocks_name}", "units": "1"}),
            "hidden_block_alignment": (("step", "block", "target_class"), hidden, {
                "long_name": f"A(K_W^{{c,c}}, y^{{c'}}) of the hidden layers' part (all layers "
                             f"but the readout) of {blocks_name}", "units": "1"}),
            "layer_block_alignment": (("step", "layer", "block", "target_class"), layer_block, {
                "long_name": f"A(Θ_l^{{c,c}}, y^{{c'}}) of each layer's part of {blocks_name}",
                "units": "1"}),
            "network_loss": ("loss_step", np.array(snaps["losses"], dtype=np.float64),
                             {"long_name": "training loss before the update of each step"}),
        },
        coords={"when": ["initial", "final"],
                "when_step": ("when", np.array([snaps["steps"][s] for s in ends], np.int64)),
                "step": np.array([snaps["steps"][s] for s in phase1], dtype=np.int64),
                "sample": np.arange(len(idx)), "sample_j": np.arange(len(idx)),
                "output": np.arange(outputs_n), "block": present, "target_class": present,
                "layer": np.array(names, dtype=object),
                "train_label": ("sample", data["y_train"][idx].astype(np.int64)),
                "train_index": ("sample", idx.astype(np.int64)),
                "block_sample": ("block_sample", blocks_at.astype(np.int64)),
                "loss_step": np.array(snaps["loss_steps"], dtype=np.int64)},
    )
    ds.attrs.update(store.dataset_attrs("ntkpipe NTK on the training set", provenance))
    full_batch = run["optimizer"] == "gd" or run["batch_size"] == "full"
    ds.attrs.update({"learning_rate": run_lr(run, train_cfg), "loss": run["loss"],
                     "optimizer": run["optimizer"], "batch_size": str(run["batch_size"]),
                     "target": run.get("target", "labels"),
                     # KGD is the full-batch dynamics: for SGD the recorded loss is the batch's
                     "network_loss_kind": "full batch" if full_batch else "mini-batch",
                     "diverged_step": int(snaps["diverged_step"]),
                     "run_json": json.dumps(run, sort_keys=True)})
    store.write_netcdf(ds, out)
