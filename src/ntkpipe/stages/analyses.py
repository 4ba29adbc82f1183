"""The per-run analyses a sweep turns on (`analyses:`), as file stages.

- `measure_sharpness` (edge of stability, docs/science.md §2): at every snapshot, the top Hessian
  eigenvalues of the loss of the task being trained, on a fixed class-balanced subset of its
  training set, and the Gauss–Newton part's top eigenvalue from the full NTK on that subset.
- `train_kernel` (feature evolution, docs/science.md §3): the traced NTK on task 1's whole training
  set at initialisation and at the end of phase 1, the network's outputs there, and its
  training loss at every step: what kernel gradient descent, the spectra and γ are computed from
  (in the metrics stage, without torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import store
from ntkpipe.progress import ProgressBar
from ntkpipe.splits import probe_set
from ntkpipe.stages.data import Log, compute_device, load_data, load_split, quiet, tensors
from ntkpipe.stages.kernels import load_snapshots
from ntkpipe.stages.training import make_model, run_lr

_SUBSET_STREAM = 7  # RNG stream of the sharpness subsets (splits.py uses 0..3)


def sharpness_subset(labels: np.ndarray, classes: list[int], size: int, seed: int,
                     task: int) -> np.ndarray:
    """Positions of a fixed class-balanced subset of a task's training samples (all of them
    when `size` reaches their number)."""
    if size >= len(labels):
        return np.arange(len(labels))
    return probe_set(labels, classes, size, np.random.default_rng([seed, _SUBSET_STREAM, task]))


def measure_sharpness(data_path: str | Path, split_path: str | Path,
                      snapshot_paths: list[str | Path], out: str | Path, *,
                      run: dict[str, Any], model_cfg: dict[str, Any],
                      train_cfg: dict[str, Any], sharpness_cfg: dict[str, Any],
                      provenance: dict[str, str], log: Log = quiet) -> None:
    """Sharpness and its Gauss–Newton (NTK) counterpart at every snapshot, against 2/η."""
    import torch
    import xarray as xr
    from scipy.sparse.linalg import ArpackNoConvergence

    from ntkpipe.hessian import gauss_newton_sharpness, top_hessian_eigen
    from ntkpipe.ntk import empirical_ntk
    from ntkpipe.train import loss_value

    data, split = load_data(data_path), load_split(split_path)
    snaps = load_snapshots(snapshot_paths)
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    # float64 throughout: Lanczos needs exact products (states load into it converted)
    model = make_model(data, run, model_cfg).to(device, torch.float64).eval()
    t = tensors(data, device)
    subsets = {}
    for task, (idx, classes) in enumerate(zip(split.train, split.classes), start=1):
        idx = np.unique(idx)  # a frequency shift may repeat samples: the subset draws distinct ones
        pos = sharpness_subset(data["y_train"][idx], classes, sharpness_cfg["subset"],
                               run["seed"], task)
        chosen = torch.from_numpy(idx[pos]).to(device)
        subsets[task] = (t["x_train"][chosen].double(), t["y_train"][chosen])
    top, n_snap = sharpness_cfg["top"], len(snaps["states"])
    hessian = np.full((n_snap, top), np.nan)
    gauss_newton, subset_loss = np.full(n_snap, np.nan), np.full(n_snap, np.nan)
    bar = ProgressBar(n_snap, "sharpness")
    start: dict[int, np.ndarray] = {}  # per task: the last top eigenvector, to warm-start Lanczos
    for s, state in enumerate(snaps["states"]):
        model.load_state_dict(state)
        x, y = subsets[snaps["tasks"][s]]
        with torch.no_grad():
            outputs = model(x)
            value = float(loss_value(outputs, y, run["loss"]))
        subset_loss[s] = value
        task = snaps["tasks"][s]
        if np.isfinite(value):
            try:
                hessian[s], vectors = top_hessian_eigen(model, x, y, run["loss"], k=top,
                                                        tol=sharpness_cfg["tolerance"],
                                                        seed=run["seed"], start=start.get(task))
                start[task] = vectors[:, 0]
            except ArpackNoConvergence:  # one snapshot's NaN, not the whole job's work lost
                log(f"step {snaps['steps'][s]}: Lanczos did not converge; sharpness left NaN")
            full = empirical_ntk(model, x, mode="full", dtype=torch.float64)
            gauss_newton[s] = gauss_newton_sharpness(full, outputs, run["loss"])
        bar.update(s + 1, f"step {snaps['steps'][s]} sharpness {hessian[s, 0]:.4g}")
        if (s + 1) % 10 == 0 or s + 1 == n_snap:
            log(f"snapshot {s + 1}/{n_snap} step {snaps['steps'][s]} "
                f"sharpness {hessian[s, 0]:.5g} Gauss-Newton {gauss_newton[s]:.5g}")
    bar.close()
    lr = run_lr(run, train_cfg)
    momentum = float(train_cfg.get("momentum", 0.0))
    ds = xr.Dataset(
        {
            "sharpness": (("step", "hessian_eig"), hessian, {
                "long_name": "top eigenvalues of the training-loss Hessian (Lanczos)",
                "subset": int(sharpness_cfg["subset"])}),
            "gauss_newton_sharpness": ("step", gauss_newton, {
                "long_name": "top eigenvalue of the Gauss–Newton part of the Hessian: "
                             + ("λ_max(Θ_full)/n" if run["loss"] == "mse" else
                                "λ_max(S Θ_full S)/n, S² the softmax Hessians")}),
            "sharpness_subset_loss": ("step", subset_loss, {
                "long_name": "training loss on the sharpness subset"}),
            # heavy-ball momentum β moves the threshold to (2 + 2β)/η (Cohen et al. 2021, §3)
            "stability_threshold": ((), (2.0 + 2.0 * momentum) / lr, {
                "long_name": "(2 + 2β)/η, the stability threshold of gradient descent with "
                             "momentum β"}),
        },
        coords={"step": np.array(snaps["steps"], dtype=np.int64),
                "hessian_eig": np.arange(1, top + 1)},
    )
    ds.attrs.update(store.dataset_attrs("ntkpipe sharpness along training", provenance))
    ds.attrs.update({"learning_rate": lr, "momentum": momentum, "loss": run["loss"]})
    store.write_netcdf(ds, out)


def train_kernel(data_path: str | Path, split_path: str | Path, snapshots_path: str | Path,
                 out: str | Path, *, run: dict[str, Any], model_cfg: dict[str, Any],
                 train_cfg: dict[str, Any], ntk_cfg: dict[str, Any],
                 provenance: dict[str, str], log: Log = quiet) -> None:
    """The traced NTK and the outputs on task 1's training set at the first and the last
    phase-1 snapshot, and the training loss of every phase-1 step."""
    import torch
    import xarray as xr

    from ntkpipe.ntk import empirical_ntk

    data, split = load_data(data_path), load_split(split_path)
    snaps = load_snapshots([snapshots_path])
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    model = make_model(data, run, model_cfg).to(device).eval()
    idx = np.unique(split.train[0])
    x = tensors(data, device)["x_train"][torch.from_numpy(idx).to(device)]
    dtype = torch.float64 if ntk_cfg["dtype"] == "float64" else torch.float32
    budget = int(ntk_cfg["max_memory_gb"] * 2**30)
    ends = [0, len(snaps["states"]) - 1]
    kernels, outputs = [], []
    for s in ends:
        model.load_state_dict(snaps["states"][s])
        kernels.append(empirical_ntk(model, x, mode="trace", dtype=dtype, max_memory=budget)
                       .double().cpu().numpy())
        with torch.no_grad():
            outputs.append(model(x).double().cpu().numpy())
        log(f"training-set kernel at step {snaps['steps'][s]} ({len(idx)} samples)")
    ds = xr.Dataset(
        {
            # kept in the compute dtype: float32 rounding would put a noise floor under the
            # spectrum (~1e-7 λ_max) that the power-law fits would read as its tail
            "train_ntk": (("when", "sample", "sample_j"), np.stack(kernels).astype(
                np.float64 if ntk_cfg["dtype"] == "float64" else np.float32),
                          {"long_name": "traced NTK on task 1's training set",
                           "computed_in": ntk_cfg["dtype"]}),
            "train_output": (("when", "sample", "output"), np.stack(outputs),
                             {"long_name": "network outputs on task 1's training set"}),
            "network_loss": ("loss_step", np.array(snaps["losses"], dtype=np.float64),
                             {"long_name": "training loss before the update of each step"}),
        },
        coords={"when": ["initial", "final"],
                "when_step": ("when", np.array([snaps["steps"][s] for s in ends], np.int64)),
                "sample": np.arange(len(idx)), "sample_j": np.arange(len(idx)),
                "output": np.arange(data["num_classes"]),
                "train_label": ("sample", data["y_train"][idx].astype(np.int64)),
                "train_index": ("sample", idx.astype(np.int64)),
                "loss_step": np.array(snaps["loss_steps"], dtype=np.int64)},
    )
    ds.attrs.update(store.dataset_attrs("ntkpipe NTK on the training set", provenance))
    full_batch = run["optimizer"] == "gd" or run["batch_size"] == "full"
    ds.attrs.update({"learning_rate": run_lr(run, train_cfg), "loss": run["loss"],
                     "optimizer": run["optimizer"], "batch_size": str(run["batch_size"]),
                     # KGD is the full-batch dynamics: for SGD the recorded loss is the batch's
                     "network_loss_kind": "full batch" if full_batch else "mini-batch",
                     "diverged_step": int(snaps["diverged_step"]),
                     "run_json": json.dumps(run, sort_keys=True)})
    store.write_netcdf(ds, out)
