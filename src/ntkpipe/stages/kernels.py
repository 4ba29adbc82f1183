"""The NTK extraction stage: kernels at every snapshot on each probe set, into ntk.nc."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ntkpipe import store
from ntkpipe.progress import ProgressBar
from ntkpipe.splits import TaskSplit
from ntkpipe.stages.data import Log, compute_device, load_data, load_split, quiet, tensors
from ntkpipe.stages.training import fit_targets, make_model

if TYPE_CHECKING:
    import torch


def load_snapshots(paths: list[str | Path]) -> dict[str, Any]:
    """Snapshots of consecutive phases merged in step order (a repeated step is kept once),
    with the training loss of every step."""
    steps, epochs, tasks, states = [], [], [], []
    loss_steps, losses = [], []
    boundaries, diverged, converged, reasons, ran = [], -1, [], [], []
    monitor_steps, monitor_values, burst = [], [], -1
    for path in paths:
        snap = store.load_torch(path)
        if not isinstance(snap, dict) or snap.get("format") != "ntkpipe.snapshots/1":
            raise store.CorruptFileError(f"{path}: not an ntkpipe snapshot file")
        for i, step in enumerate(snap["steps"].tolist()):
            if steps and step <= steps[-1]:
                continue
            steps.append(step)
            epochs.append(int(snap["epochs"][i]))
            tasks.append(int(snap["tasks"][i]))
            states.append({k: v[i] for k, v in snap["states"].items()})
        for step, value in zip(snap["loss_steps"].tolist(), snap["losses"].tolist()):
            if not loss_steps or step > loss_steps[-1]:
                loss_steps.append(step)
                losses.append(value)
        boundaries += [b for b in snap["boundaries"].tolist() if b not in boundaries]
        diverged = snap["diverged_step"] if snap["diverged_step"] >= 0 else diverged
        converged += [bool(c) for c in snap["converged"].tolist()]
        reasons += json.loads(snap.get("stop_reasons_json", "[]"))
        ran += snap["epochs_run"].tolist()
        if "monitor_steps" in snap:
            for step, values in zip(snap["monitor_steps"].tolist(),
                                    snap["monitor_values"].tolist()):
                if not monitor_steps or step > monitor_steps[-1]:
                    monitor_steps.append(step)
                    monitor_values.append(values)
            burst = snap["burst_step"] if burst < 0 else burst
    return {"steps": steps, "epochs": epochs, "tasks": tasks, "states": states,
            "loss_steps": loss_steps, "losses": losses, "boundaries": boundaries,
            "diverged_step": diverged, "converged": converged, "stop_reasons": reasons,
            "epochs_run": ran, "monitor_steps": monitor_steps,
            "monitor_values": monitor_values, "burst_step": burst}


def _per_sample(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", loss: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and correctness of a model on (x, y), in one pass."""
    import torch

    from ntkpipe.train import per_sample_loss

    with torch.no_grad():
        out = model(x)
        losses = per_sample_loss(out, y, loss)
    truth = y.argmax(1) if y.ndim == 2 else y  # real targets: the largest one's output
    return losses.double().cpu().numpy(), (out.argmax(1) == truth).cpu().numpy()


def task_scores(losses: np.ndarray, correct: np.ndarray, labels: np.ndarray,
                classes: list[int], proportions: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy on a task, each class's mean weighted by its share in the task."""
    total_loss = total_acc = 0.0
    for c, p in zip(classes, proportions):
        mask = labels == c
        if mask.any():
            total_loss += p * losses[mask].mean()
            total_acc += p * correct[mask].mean()
    return float(total_loss), float(total_acc)


def _kernels(model: "torch.nn.Module", x: "torch.Tensor", kinds: list[str],
             dtype: "torch.dtype", max_memory: int) -> dict[str, np.ndarray]:
    import torch

    from ntkpipe.ntk import empirical_ntk

    out: dict[str, torch.Tensor] = {}
    if "per_layer" in kinds:
        out["per_layer"] = empirical_ntk(model, x, mode="trace", per_layer=True, dtype=dtype,
                                         max_memory=max_memory)
        out["trace"] = out["per_layer"].sum(0)
    if {"full", "per_output", "sum_logits"} & set(kinds):
        full = empirical_ntk(model, x, mode="full", dtype=dtype, max_memory=max_memory)
        diag = torch.diagonal(full, dim1=2, dim2=3)  # (N, N, O)
        out.update(full=full, per_output=diag.permute(2, 0, 1), sum_logits=full.sum((2, 3)),
                   trace=diag.mean(-1))
    if "trace" not in out:
        out["trace"] = empirical_ntk(model, x, mode="trace", dtype=dtype, max_memory=max_memory)
    return {k: v.detach().cpu().to(torch.float64).numpy() for k, v in out.items()
            if k in kinds or k == "trace"}


def extract_ntk(data_path: str | Path, split_path: str | Path, snapshot_paths: list[str | Path],
                out: str | Path, *, run: dict[str, Any], model_cfg: dict[str, Any],
                ntk_cfg: dict[str, Any], provenance: dict[str, str], log: Log = quiet) -> None:
    """Empirical NTK at every snapshot on each probe set, plus loss and accuracy per task."""
    import torch
    import xarray as xr

    from ntkpipe.ntk import layer_names

    data, split = load_data(data_path), load_split(split_path)
    snaps = load_snapshots(snapshot_paths)
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    model = make_model(data, run, model_cfg).to(device).eval()
    dtype = torch.float64 if ntk_cfg["dtype"] == "float64" else torch.float32
    budget = int(ntk_cfg["max_memory_gb"] * 2**30)
    kinds = list(ntk_cfg["kernels"])
    probes = sorted(split.probe)
    arrays = tensors(data, device)
    x_test, x_train = arrays["x_test"], arrays["x_train"]
    # what the loss compares with: the labels, or a linear teacher's targets
    y_test, y_train = (fit_targets(data, run, arrays, which) for which in ("test", "train"))
    test_labels, train_labels = data["y_test"], data["y_train"]
    n_tasks = len(split.classes)
    kernels: dict[str, list] = {k: [] for k in set(kinds) | {"trace"}}
    outputs, test_stats, train_stats = [], [], []
    tic = time.perf_counter()
    probe_inputs = [x_test[torch.from_numpy(split.probe[p]).to(device)] for p in probes]
    from ntkpipe.ntk import kernel_plan

    for layer in kernel_plan(model, probe_inputs[0]):
        log(f"NTK of {layer['layer']} ({layer['module']}): {layer['rule']} rule, "
            f"{layer['form']} form, cotangent by {layer['cotangent']}")
    bar = ProgressBar(len(snaps["states"]), "NTK snapshots")
    for s, state in enumerate(snaps["states"]):
        model.load_state_dict(state)
        per_probe = [_kernels(model, x, kinds, dtype, budget) for x in probe_inputs]
        for kind in kernels:
            kernels[kind].append(np.stack([pp[kind] for pp in per_probe]))
        with torch.no_grad():
            outputs.append(np.stack([model(x).cpu().double().numpy() for x in probe_inputs]))
        test_losses, test_correct = _per_sample(model, x_test, y_test, run["loss"])
        train_losses, train_correct = _per_sample(model, x_train, y_train, run["loss"])
        test_stats.append([task_scores(test_losses, test_correct, test_labels, cls, p)
                           for cls, p in zip(split.classes, split.proportions)])
        # a task's training set may repeat samples (frequency shift): weight by its indices
        train_stats.append([task_scores(train_losses[idx], train_correct[idx], train_labels[idx],
                                        cls, p)
                            for cls, p, idx in zip(split.classes, split.proportions, split.train)])
        bar.update(s + 1, f"step {snaps['steps'][s]}")
        if (s + 1) % 10 == 0 or s + 1 == len(snaps["states"]):
            log(f"snapshot {s + 1}/{len(snaps['states'])} step {snaps['steps'][s]} "
                f"({time.perf_counter() - tic:.1f} s)")
    bar.close()
    steps = np.array(snaps["steps"], dtype=np.int64)
    test_stats, train_stats = np.array(test_stats), np.array(train_stats)
    p_size = len(split.probe[probes[0]])
    num_outputs = data["num_classes"]
    coords = {
        "step": ("step", steps, {"long_name": "optimiser steps since the start of phase 1"}),
        "phase": ("step", np.array(snaps["tasks"], dtype=np.int64),
                  {"long_name": "task being trained at this step"}),
        "epoch": ("step", np.array(snaps["epochs"], dtype=np.int64),
                  {"long_name": "epoch within the current task"}),
        "probe": ("probe", np.array(probes, dtype=np.int64),
                  {"long_name": "task whose held-out data form the probe set"}),
        "sample": ("sample", np.arange(p_size)), "sample_j": ("sample_j", np.arange(p_size)),
        "output": ("output", np.arange(num_outputs)),
        "output_j": ("output_j", np.arange(num_outputs)),
        "task": ("task", np.arange(1, n_tasks + 1)),
        "label": (("probe", "sample"), np.stack([data["y_test"][split.probe[p]] for p in probes]),
                  {"long_name": "class of the probe sample"}),
        "probe_index": (("probe", "sample"), np.stack([split.probe[p] for p in probes]),
                        {"long_name": "index of the probe sample in the held-out split"}),
    }
    ntk_attrs = {"units": "1", "computed_in": ntk_cfg["dtype"]}
    variables = {
        "ntk_trace": (("probe", "step", "sample", "sample_j"),
                      np.stack(kernels["trace"], 1).astype(np.float32),
                      {"long_name": "traced empirical NTK (mean over outputs)", **ntk_attrs}),
        "probe_output": (("probe", "step", "sample", "output"),
                         np.stack(outputs, 1).astype(np.float32),
                         {"long_name": "network outputs on the probe set"}),
        "test_loss": (("step", "task"), test_stats[..., 0],
                      {"long_name": "held-out loss per task (classes weighted by the task)"}),
        "test_accuracy": (("step", "task"), test_stats[..., 1],
                          {"long_name": "held-out accuracy per task", "units": "1"}),
        "train_loss": (("step", "task"), train_stats[..., 0],
                       {"long_name": "training-set loss per task"}),
        "train_accuracy": (("step", "task"), train_stats[..., 1],
                           {"long_name": "training-set accuracy per task", "units": "1"}),
    }
    if "per_output" in kinds:
        variables["ntk_per_output"] = (("probe", "step", "output", "sample", "sample_j"),
                                       np.stack(kernels["per_output"], 1).astype(np.float32),
                                       {"long_name": "per-output NTK blocks Θ^{c,c}", **ntk_attrs})
    if "sum_logits" in kinds:
        variables["ntk_sum_logits"] = (("probe", "step", "sample", "sample_j"),
                                       np.stack(kernels["sum_logits"], 1).astype(np.float32),
                                       {"long_name": "NTK of the sum of logits", **ntk_attrs})
    if "full" in kinds:
        variables["ntk_full"] = (("probe", "step", "sample", "sample_j", "output", "output_j"),
                                 np.stack(kernels["full"], 1).astype(np.float32),
                                 {"long_name": "full empirical NTK", **ntk_attrs})
    if "per_layer" in kinds:
        coords["layer"] = ("layer", np.array(layer_names(model), dtype=object))
        variables["ntk_per_layer"] = (("probe", "step", "layer", "sample", "sample_j"),
                                      np.stack(kernels["per_layer"], 1).astype(np.float32),
                                      {"long_name": "traced NTK split by layer", **ntk_attrs})
    ds = xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()},
                    coords={k: xr.Variable(*v) for k, v in coords.items()})
    ds = ds.drop_vars([c for c in ("output", "output_j") if c not in ds.dims])
    ds.attrs.update(store.dataset_attrs("ntkpipe empirical NTK snapshots", provenance))
    ds.attrs.update(_run_attrs(split, snaps, train_labels))
    ds.attrs["target"] = run.get("target", "labels")  # what 'learned' means (ntkpipe.status)
    ds.attrs["normalisation_json"] = json.dumps(data.get("normalisation", {}), sort_keys=True)
    encoding = {name: {"chunksizes": tuple(1 if d in ("probe", "step", "layer", "output") else
                                           ds.sizes[d] for d in ds[name].dims)}
                for name in ds.data_vars if name.startswith("ntk_")}
    with store.atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def _run_attrs(split: TaskSplit, snaps: dict[str, Any], train_labels: np.ndarray
               ) -> dict[str, Any]:
    from ntkpipe.status import chance_level

    return {"task_chance_json": json.dumps([chance_level(train_labels[idx])
                                            for idx in split.train]),"boundaries_json": json.dumps(snaps["boundaries"]),
            "diverged_step": int(snaps["diverged_step"]),
            "converged_json": json.dumps(snaps["converged"]),
            "stop_reasons_json": json.dumps(snaps["stop_reasons"]),
            "epochs_run_json": json.dumps(snaps["epochs_run"]),
            "last_step": int(snaps["steps"][-1]) if snaps["steps"] else 0,
            "task_classes_json": json.dumps(split.classes),
            "similarity_json": json.dumps(split.similarity)}
