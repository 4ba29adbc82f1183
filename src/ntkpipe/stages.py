"""The pipeline's stages as functions of files. Each reads its inputs, computes with the pure
modules, and writes its outputs atomically with provenance. The workflow scripts are thin
adapters to these; a notebook can call them directly.

torch is imported inside the stages that train or compute kernels only: the split and metrics
jobs then start without it (its import costs ~1.5 s per job, and a sweep has hundreds of jobs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from typing import TYPE_CHECKING

import numpy as np

from ntkpipe import store
from ntkpipe.progress import ProgressBar
from ntkpipe.splits import TaskSplit, make_tasks
from ntkpipe.sweep import effective_lr

if TYPE_CHECKING:
    import torch

    from ntkpipe.train import Record, Schedule

Log = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


# ---- data and splits ------------------------------------------------------------------------

def prepare_data(name: str, root: str | None, out: str | Path, *,
                 provenance: dict[str, str], download: bool = False,
                 image_size: int = 64) -> None:
    """Decode and normalise a dataset once (training-split statistics) into an array cache."""
    from ntkpipe.data import load_dataset, normalise

    options = {"image_size": image_size} if name == "imagefolder" else {}
    x_train, y_train = load_dataset(name, root, train=True, download=download, **options)
    x_test, y_test = load_dataset(name, root, train=False, download=download, **options)
    (x_train, x_test), stats = normalise(x_train, x_test)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    store.save_arrays({"x_train": x_train.numpy(), "y_train": y_train.numpy(),
                       "x_test": x_test.numpy(), "y_test": y_test.numpy()}, out,
                      meta={"format": "ntkpipe.data/1", "name": name,
                            "num_classes": num_classes, "normalisation": stats,
                            "provenance": provenance})


def load_data(path: str | Path) -> dict[str, Any]:
    """The array cache written by `prepare_data`: arrays plus its metadata keys."""
    arrays, meta = store.load_arrays(path)
    if meta.get("format") != "ntkpipe.data/1":
        raise store.CorruptFileError(f"{path}: not an ntkpipe data cache")
    return {**arrays, **meta}


def _tensors(data: dict[str, Any], device: Any) -> dict[str, "torch.Tensor"]:
    import torch

    return {k: torch.from_numpy(data[k]).to(device)
            for k in ("x_train", "y_train", "x_test", "y_test")}


def make_split(data_path: str | Path, out: str | Path, *, split: dict[str, Any],
               provenance: dict[str, str]) -> TaskSplit:
    """Build the task sequence (see ntkpipe.splits.make_tasks) and save it as index lists."""
    data = load_data(data_path)
    tasks = make_tasks(data["y_train"], data["y_test"], data["num_classes"], **split)
    store.save_arrays(tasks.to_arrays(), out, meta={"provenance": provenance})
    return tasks


def load_split(path: str | Path) -> TaskSplit:
    """A split saved by `make_split`."""
    arrays, _ = store.load_arrays(path)
    try:
        return TaskSplit.from_arrays(arrays)
    except (KeyError, ValueError) as err:
        raise store.CorruptFileError(f"{path}: not an ntkpipe split file: {err}") from None


# ---- training --------------------------------------------------------------------------------

def make_model(data: dict[str, Any], run: dict[str, Any], model_cfg: dict[str, Any]
               ) -> "torch.nn.Module":
    """The network of a run, at its initialisation."""
    from ntkpipe.models import build_model

    return build_model(run["arch"], tuple(data["x_train"].shape[1:]), data["num_classes"],
                       width=run["width"], depth=run["depth"], activation=run["activation"],
                       regime=run["regime"], bias=model_cfg["bias"],
                       bias_std=model_cfg["bias_std"], seed=run["seed"])


def _schedule(run: dict[str, Any], train_cfg: dict[str, Any]) -> "Schedule":
    from ntkpipe.train import Schedule

    return Schedule(lr=effective_lr(run["lr"], run["regime"], run["width"],
                                    train_cfg["lazy_reference_width"], train_cfg["lazy_lr_scale"]),
                    loss=run["loss"], optimizer=run["optimizer"],
                    momentum=train_cfg["momentum"], batch_size=run["batch_size"],
                    seed=run["seed"], log_points=train_cfg["snapshots"]["log_points"],
                    checkpoint_every=train_cfg["checkpoint_every"])


def _device() -> "torch.device":
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _save_phase(record: "Record", model: "torch.nn.Module", optimizer_state: dict,
                checkpoint_out: str | Path, snapshots_out: str | Path, meta: dict) -> None:
    store.save_torch({**record.stacked(), **meta}, snapshots_out)
    store.save_torch({"format": "ntkpipe.checkpoint/1",
                      "model": {k: v.cpu() for k, v in model.state_dict().items()},
                      "optimizer": optimizer_state, "step": record.step,
                      "diverged_step": record.diverged_step, **meta}, checkpoint_out)


def train_phase1(data_path: str | Path, split_path: str | Path, checkpoint_out: str | Path,
                 snapshots_out: str | Path, *, run: dict[str, Any], train_cfg: dict[str, Any],
                 model_cfg: dict[str, Any], provenance: dict[str, str],
                 log: Log = _quiet) -> Record:
    """Phase 1: train a fresh network on task 1 until it converges (or max_epochs)."""
    import torch

    from ntkpipe.train import TaskSpec, train_tasks

    data, split = load_data(data_path), load_split(split_path)
    device = _device()
    provenance = {**provenance, "device": str(device)}
    tensors = _tensors(data, device)
    model = make_model(data, run, model_cfg).to(device)
    idx = torch.from_numpy(split.train[0]).to(device)
    p1 = train_cfg["phase1"]
    task = TaskSpec(1, tensors["x_train"][idx], tensors["y_train"][idx],
                    max_epochs=p1["max_epochs"], target_accuracy=p1["target_accuracy"],
                    min_epochs=p1["min_epochs"], target_loss=p1.get("target_loss"))
    resume = Path(str(checkpoint_out) + ".resume")
    record, opt_state = train_tasks(model, [task], _schedule(run, train_cfg),
                                    resume_path=resume, log=log)
    meta = {"run_json": json.dumps(run, sort_keys=True), "provenance": provenance}
    _save_phase(record, model, opt_state, checkpoint_out, snapshots_out, meta)
    resume.unlink(missing_ok=True)
    return record


def train_phase2(data_path: str | Path, split_path: str | Path, checkpoint_in: str | Path,
                 checkpoint_out: str | Path, snapshots_out: str | Path, *, run: dict[str, Any],
                 train_cfg: dict[str, Any], model_cfg: dict[str, Any],
                 provenance: dict[str, str], log: Log = _quiet) -> Record:
    """Phase 2: start from the phase-1 checkpoint and train on tasks 2..n in turn."""
    import torch

    from ntkpipe.train import Record, TaskSpec, train_tasks

    data, split = load_data(data_path), load_split(split_path)
    start = store.load_torch(checkpoint_in)
    device = _device()
    provenance = {**provenance, "device": str(device)}
    tensors = _tensors(data, device)
    model = make_model(data, run, model_cfg).to(device)
    model.load_state_dict(start["model"])
    tasks = []
    for number in range(2, len(split.train) + 1):
        idx = torch.from_numpy(split.train[number - 1]).to(device)
        tasks.append(TaskSpec(number, tensors["x_train"][idx], tensors["y_train"][idx],
                              max_epochs=train_cfg["phase2"]["epochs"],
                              dense_steps=train_cfg["snapshots"]["dense_steps"]))
    meta = {"run_json": json.dumps(run, sort_keys=True), "provenance": provenance}
    resume = Path(str(checkpoint_out) + ".resume")
    if start["diverged_step"] >= 0:  # nothing to continue from: record the divergence only
        log(f"phase 1 diverged at step {start['diverged_step']}; phase 2 not trained")
        record = Record(step=start["step"], diverged_step=start["diverged_step"])
        opt_state = start["optimizer"]
    else:
        record, opt_state = train_tasks(model, tasks, _schedule(run, train_cfg),
                                        start_step=start["step"],
                                        optimizer_state=start["optimizer"],
                                        resume_path=resume, log=log)
    _save_phase(record, model, opt_state, checkpoint_out, snapshots_out, meta)
    resume.unlink(missing_ok=True)
    return record


# ---- kernels ----------------------------------------------------------------------------------

def _snapshots(paths: list[str | Path]) -> dict[str, Any]:
    """Snapshots of consecutive phases merged in step order (a repeated step is kept once)."""
    steps, epochs, tasks, states = [], [], [], []
    boundaries, diverged = [], -1
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
        boundaries += [b for b in snap["boundaries"].tolist() if b not in boundaries]
        diverged = snap["diverged_step"] if snap["diverged_step"] >= 0 else diverged
    return {"steps": steps, "epochs": epochs, "tasks": tasks, "states": states,
            "boundaries": boundaries, "diverged_step": diverged}


def _per_sample(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", loss: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and correctness of a model on (x, y), in one pass."""
    import torch

    from ntkpipe.train import per_sample_loss

    with torch.no_grad():
        out = model(x)
        losses = per_sample_loss(out, y, loss)
    return losses.double().cpu().numpy(), (out.argmax(1) == y).cpu().numpy()


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
                ntk_cfg: dict[str, Any], provenance: dict[str, str], log: Log = _quiet) -> None:
    """Empirical NTK at every snapshot on each probe set, plus loss and accuracy per task."""
    import torch
    import xarray as xr

    from ntkpipe.ntk import layer_names

    data, split = load_data(data_path), load_split(split_path)
    snaps = _snapshots(snapshot_paths)
    device = _device()
    provenance = {**provenance, "device": str(device)}
    model = make_model(data, run, model_cfg).to(device).eval()
    dtype = torch.float64 if ntk_cfg["dtype"] == "float64" else torch.float32
    budget = int(ntk_cfg["max_memory_gb"] * 2**30)
    kinds = list(ntk_cfg["kernels"])
    probes = sorted(split.probe)
    tensors = _tensors(data, device)
    x_test, y_test, x_train, y_train = (tensors[k] for k in ("x_test", "y_test", "x_train",
                                                             "y_train"))
    test_labels, train_labels = data["y_test"], data["y_train"]
    n_tasks = len(split.classes)
    kernels: dict[str, list] = {k: [] for k in set(kinds) | {"trace"}}
    outputs, test_stats, train_stats = [], [], []
    tic = time.perf_counter()
    probe_inputs = [x_test[torch.from_numpy(split.probe[p]).to(device)] for p in probes]
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
    ds.attrs.update(_run_attrs(split, snaps))
    ds.attrs["normalisation_json"] = json.dumps(data.get("normalisation", {}), sort_keys=True)
    encoding = {name: {"chunksizes": tuple(1 if d in ("probe", "step", "layer", "output") else
                                           ds.sizes[d] for d in ds[name].dims)}
                for name in ds.data_vars if name.startswith("ntk_")}
    with store.atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def _run_attrs(split: TaskSplit, snaps: dict[str, Any]) -> dict[str, Any]:
    return {"boundaries_json": json.dumps(snaps["boundaries"]),
            "diverged_step": int(snaps["diverged_step"]),
            "task_classes_json": json.dumps(split.classes),
            "similarity_json": json.dumps(split.similarity)}


# ---- metrics and summary ---------------------------------------------------------------------

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
                    provenance: dict[str, str]) -> None:
    """Spectral norm, kernel distance to init, velocity and alignment along `step`, per probe;
    reactivation measures per boundary; loss and accuracy per task; the forgetting matrix."""
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
    for p in range(len(probes)):
        y = _targets(ds, p, kernel)
        norm[p], top_align[p] = m.top_eigen_stack(stack[p], y)  # one eigh per snapshot
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
                "trained_task": trained, "boundary": np.arange(1, len(boundaries) + 1)},
    )
    out_ds.attrs.update(store.dataset_attrs("ntkpipe kernel metrics", provenance))
    for key in ("boundaries_json", "task_classes_json", "similarity_json",
                "normalisation_json"):
        out_ds.attrs[key] = ds.attrs.get(key, "{}")
    out_ds.attrs["metric_kernel"] = kernel
    out_ds.attrs["centered"] = int(centered)
    store.write_netcdf(out_ds, out)
