"""Training stages: phase 1 on task 1, phase 2 from its checkpoint on the later tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ntkpipe import store
from ntkpipe.stages.data import Log, compute_device, load_data, load_split, quiet, tensors
from ntkpipe.sweep import effective_lr

if TYPE_CHECKING:
    import torch

    from ntkpipe.train import Monitor, Record, Schedule


def make_model(data: dict[str, Any], run: dict[str, Any], model_cfg: dict[str, Any]
               ) -> "torch.nn.Module":
    """The network of a run, at its initialisation: a built-in one, or the factory of
    `model_cfg["custom"]` (see ntkpipe.custom)."""
    from ntkpipe.models import build_model

    in_shape = tuple(data["x_train"].shape[1:])
    if model_cfg.get("custom") is not None:
        from ntkpipe import custom

        return custom.build_model(model_cfg["custom"], in_shape, data["num_classes"],
                                  seed=run["seed"], width=run["width"], depth=run["depth"],
                                  activation=run["activation"],
                                  parametrization=custom.parametrization(run["regime"]),
                                  bias=model_cfg["bias"], bias_std=model_cfg["bias_std"])
    return build_model(run["arch"], in_shape, data["num_classes"],
                       width=run["width"], depth=run["depth"], activation=run["activation"],
                       regime=run["regime"], bias=model_cfg["bias"],
                       bias_std=model_cfg["bias_std"], seed=run["seed"],
                       **model_cfg.get("vit", {}))


def fit_targets(data: dict[str, Any], run: dict[str, Any],
                arrays: dict[str, "torch.Tensor"], which: str = "train") -> "torch.Tensor":
    """What the loss compares the outputs with, for every sample of the `which` set: the
    class labels, or the linear teacher's real targets (in the inputs' dtype)."""
    import torch

    from ntkpipe.stages.data import train_targets

    teacher = train_targets(data, run, which)
    if teacher is None:
        return arrays[f"y_{which}"]
    x = arrays[f"x_{which}"]
    return torch.from_numpy(teacher).to(x.device, x.dtype)


def resume_key(provenance: dict[str, str]) -> str:
    """A digest of everything a training job depends on (its params, code hash included, and
    wildcards): a resume file left by other settings must not be resumed."""
    import hashlib

    text = provenance.get("config_json", "") + "\0" + provenance.get("wildcards_json", "")
    return hashlib.sha256(text.encode()).hexdigest()


def _schedule(run: dict[str, Any], train_cfg: dict[str, Any],
              monitor: "Monitor | None" = None) -> "Schedule":
    from ntkpipe.train import Schedule

    return Schedule(monitor=monitor, lr=run_lr(run, train_cfg),
                    loss=run["loss"], optimizer=run["optimizer"],
                    momentum=train_cfg["momentum"], batch_size=run["batch_size"],
                    seed=run["seed"], log_points=train_cfg["snapshots"]["log_points"],
                    checkpoint_every=train_cfg["checkpoint_every"],
                    snapshot_every=train_cfg.get("snapshot_every", 0))


def sharpness_monitor(data: dict[str, Any], split: Any, run: dict[str, Any],
                      settings: dict[str, Any], lr: float, momentum: float,
                      device: Any) -> "Monitor":
    """The sharpness measured along phase 1 (Cohen et al. 2021, arXiv 2103.00065): the top
    Hessian eigenvalues of the training loss on the run's fixed subset of task 1, every
    `every` steps, with a window of snapshots every `dense_every` steps for `dense_steps` steps
    from the first time it reaches `dense_from` · (2 + 2β)/η."""
    import torch

    from ntkpipe.hessian import top_hessian_eigen
    from ntkpipe.stages.data import task_subset
    from ntkpipe.train import Monitor

    chosen = torch.from_numpy(task_subset(data, split, 1, settings["subset"], run["seed"]))
    x = torch.from_numpy(data["x_train"])[chosen].to(device, torch.float64)
    y = fit_targets(data, run, {"x_train": torch.from_numpy(data["x_train"]).double(),
                                "y_train": torch.from_numpy(data["y_train"])})[chosen].to(device)
    warm: dict[str, Any] = {}

    def measure(model: "torch.nn.Module") -> list[float]:
        # the Hessian's forward passes must not move a train-mode BatchNorm's running stats
        buffers = {k: b.clone() for k, b in model.named_buffers()}
        try:
            return _measure(model)
        finally:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    b.copy_(buffers[k])

    def _measure(model: "torch.nn.Module") -> list[float]:
        from scipy.sparse.linalg import ArpackNoConvergence

        try:
            values, vectors = top_hessian_eigen(model, x, y, run["loss"], k=settings["top"],
                                                tol=settings["tolerance"], seed=run["seed"],
                                                start=warm.get("start"))
        except ArpackNoConvergence:  # one missing point, not the run
            return [float("nan")] * settings["top"]
        warm["start"] = vectors[:, 0]  # the next Lanczos starts near the last top eigenvector
        return [float(v) for v in values]

    dense = settings["dense"]
    return Monitor(every=settings["every"], measure=measure,
                   trigger=dense["from"] * (2.0 + 2.0 * momentum) / lr,
                   burst_every=dense["every"], burst_steps=dense["steps"])


def run_lr(run: dict[str, Any], train_cfg: dict[str, Any]) -> float:
    """The learning rate a run trains with (the lazy regime's scaling applied)."""
    return effective_lr(run["lr"], run["regime"], run["width"],
                        train_cfg.get("lazy_reference_width", 256),
                        train_cfg.get("lazy_lr_scale", 1.0),
                        train_cfg.get("lazy_width_exponent", 0.0))


def target_loss(phase1: dict[str, Any], loss: str) -> float | None:
    """The training loss phase 1 stops at for a run with this loss (None: stop on accuracy)."""
    target = phase1.get("target_loss")
    return target.get(loss) if isinstance(target, dict) else target


def max_epochs(phase1: dict[str, Any], optimizer: str) -> int:
    """Phase 1's epoch limit for a run with this optimizer."""
    limit = phase1["max_epochs"]
    if isinstance(limit, dict):
        if optimizer not in limit:
            raise ValueError(f"train.phase1.max_epochs has no entry for optimizer {optimizer!r}")
        return int(limit[optimizer])
    return int(limit)


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
                 log: Log = quiet) -> Record:
    """Phase 1: train a fresh network on task 1 until it converges (or max_epochs)."""
    import torch

    from ntkpipe.train import TaskSpec, train_tasks

    data, split = load_data(data_path), load_split(split_path)
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    arrays = tensors(data, device)
    model = make_model(data, run, model_cfg).to(device)
    idx = torch.from_numpy(split.train[0]).to(device)
    p1 = train_cfg["phase1"]
    fixed = run.get("epochs", "auto") != "auto"  # a fixed horizon, whatever the loss does
    task = TaskSpec(1, arrays["x_train"][idx], fit_targets(data, run, arrays)[idx],
                    max_epochs=int(run["epochs"]) if fixed else max_epochs(p1, run["optimizer"]),
                    target_accuracy=None if fixed else p1["target_accuracy"],
                    min_epochs=int(run["epochs"]) if fixed else p1["min_epochs"],
                    target_loss=None if fixed else target_loss(p1, run["loss"]),
                    dense_steps=train_cfg["snapshots"]["dense_steps"],
                    plateau_epochs=p1.get("plateau_epochs", 0),
                    loss_tolerance=p1.get("loss_tolerance", 0.0))
    resume = Path(str(checkpoint_out) + ".resume")
    watch = train_cfg.get("sharpness")  # runs with the sharpness analysis measure it as they train
    monitor = None if not watch else sharpness_monitor(
        data, split, run, watch, run_lr(run, train_cfg), train_cfg["momentum"], device)
    record, opt_state = train_tasks(model, [task], _schedule(run, train_cfg, monitor),
                                    resume_path=resume, resume_key=resume_key(provenance),
                                    log=log)
    meta = {"run_json": json.dumps(run, sort_keys=True), "provenance": provenance}
    _save_phase(record, model, opt_state, checkpoint_out, snapshots_out, meta)
    resume.unlink(missing_ok=True)
    return record


def train_phase2(data_path: str | Path, split_path: str | Path, checkpoint_in: str | Path,
                 checkpoint_out: str | Path, snapshots_out: str | Path, *, run: dict[str, Any],
                 train_cfg: dict[str, Any], model_cfg: dict[str, Any],
                 provenance: dict[str, str], log: Log = quiet) -> Record:
    """Phase 2: start from the phase-1 checkpoint and train on tasks 2..n in turn."""
    import torch

    from ntkpipe.train import Record, TaskSpec, train_tasks

    data, split = load_data(data_path), load_split(split_path)
    start = store.load_torch(checkpoint_in)
    device = compute_device()
    provenance = {**provenance, "device": str(device)}
    arrays = tensors(data, device)
    model = make_model(data, run, model_cfg).to(device)
    model.load_state_dict(start["model"])
    tasks = []
    for number in range(2, len(split.train) + 1):
        idx = torch.from_numpy(split.train[number - 1]).to(device)
        snapshots = train_cfg["snapshots"]
        grid = snapshots.get("after_boundary", {"every": 0, "steps": 0})
        tasks.append(TaskSpec(number, arrays["x_train"][idx], fit_targets(data, run, arrays)[idx],
                              max_epochs=train_cfg["phase2"]["epochs"],
                              dense_steps=snapshots["dense_steps"],
                              grid_every=grid["every"], grid_steps=grid["steps"]))
    meta = {"run_json": json.dumps(run, sort_keys=True), "provenance": provenance}
    resume = Path(str(checkpoint_out) + ".resume")
    if start["diverged_step"] >= 0:  # nothing to continue from: record the divergence only
        log(f"phase 1 diverged at step {start['diverged_step']}; phase 2 not trained")
        record = Record(step=start["step"], diverged_step=start["diverged_step"])
        opt_state = start["optimizer"]
    else:
        from dataclasses import replace

        from ntkpipe.strategies import make_strategy

        task1 = torch.from_numpy(split.train[0]).to(device)
        name = run.get("strategy", "finetune")
        strategy = make_strategy(name, train_cfg.get("strategy", {}), loss=run["loss"],
                                 seed=run["seed"])
        schedule = replace(_schedule(run, train_cfg), strategy=strategy, earlier=[
            (arrays["x_train"][task1], fit_targets(data, run, arrays)[task1])])
        if name != "finetune":
            log(f"strategy {name} from task 2 on: {train_cfg.get('strategy', {})}")
        record, opt_state = train_tasks(model, tasks, schedule,
                                        start_step=start["step"],
                                        optimizer_state=start["optimizer"],
                                        resume_path=resume,
                                        resume_key=resume_key(provenance), log=log)
    _save_phase(record, model, opt_state, checkpoint_out, snapshots_out, meta)
    resume.unlink(missing_ok=True)
    return record
