"""Training: phase 1 on task 1 to convergence, later phases on each next task, snapshots on a
schedule dense around every task boundary, resumable state, divergence detection.

Time `step` counts optimiser steps from the start of phase 1. Shuffling uses a generator seeded
by (seed, task, epoch), so a run resumed mid-way draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ntkpipe import store
from ntkpipe.progress import ProgressBar

LOSSES = ("cross_entropy", "mse")


def snapshot_schedule(max_steps: int, log_points: int, dense_steps: int = 0,
                      every: int = 0) -> list[int]:
    """Steps (relative to a phase start) to snapshot: 0, every step up to `dense_steps`,
    `log_points` log-spaced steps up to `max_steps`, and every `every`-th step (0: none)."""
    log_spaced = np.unique(np.round(np.geomspace(1, max(max_steps, 1), log_points)).astype(int))
    steps = {0, *range(1, min(dense_steps, max_steps) + 1), *log_spaced.tolist()}
    if every > 0:
        steps.update(range(every, max_steps + 1, every))
    return sorted(s for s in steps if s <= max_steps)


def per_sample_loss(outputs: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Loss of each sample: cross-entropy, or MSE 0.5‖f − y‖² against one-hot y."""
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, labels, reduction="none")
    if loss == "mse":
        target = F.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
        return 0.5 * (outputs - target).pow(2).sum(dim=1)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def loss_value(outputs: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean loss over the batch."""
    return per_sample_loss(outputs, labels, loss).mean()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
             batch: int = 4096) -> tuple[float, torch.Tensor]:
    """Mean loss and the per-sample correctness (bool) of a model on (x, y)."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, []
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        total += float(loss_value(out, y[i:i + batch], loss)) * len(out)
        correct.append(out.argmax(dim=1) == y[i:i + batch])
    model.train(was_training)
    return total / max(len(x), 1), torch.cat(correct) if correct else torch.zeros(0, dtype=bool)


@dataclass
class TaskSpec:
    """One task to train on: its data, and how long."""

    number: int  # 1-based task number
    x: torch.Tensor
    y: torch.Tensor
    max_epochs: int
    target_accuracy: float | None = None  # stop at the first epoch reaching it (None: run all)
    min_epochs: int = 0
    target_loss: float | None = None  # stop at the first epoch with training loss ≤ this
    dense_steps: int = 0


@dataclass
class Schedule:
    """How to train: optimiser, loss and step size, shared by every task of a phase."""

    lr: float
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    momentum: float = 0.0
    batch_size: int | str = 64
    seed: int = 0
    log_points: int = 16
    checkpoint_every: int = 200
    snapshot_every: int = 0  # also snapshot every this many steps of each task (0: off)


@dataclass
class Record:
    """What a phase produced: snapshots, the loss of every step, the end state."""

    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    states: list[dict[str, torch.Tensor]] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)  # first step of each task
    epochs_run: list[int] = field(default_factory=list)
    converged: list[bool] = field(default_factory=list)
    diverged_step: int = -1
    task_index: int = 0  # resume position: task, epoch within it, step
    epoch: int = 0
    step: int = 0

    def snapshot(self, model: nn.Module, step: int, epoch: int, task: int) -> None:
        self.steps.append(step)
        self.epochs.append(epoch)
        self.tasks.append(task)
        self.states.append({k: v.detach().to("cpu", copy=True)
                            for k, v in model.state_dict().items()})

    def stacked(self) -> dict:
        """The snapshot file's content: tensors and plain values only (loads with weights_only)."""
        names = list(self.states[0]) if self.states else []
        return {
            "format": "ntkpipe.snapshots/1",
            "steps": torch.tensor(self.steps, dtype=torch.int64),
            "epochs": torch.tensor(self.epochs, dtype=torch.int64),
            "tasks": torch.tensor(self.tasks, dtype=torch.int64),
            "states": {n: torch.stack([s[n] for s in self.states]) for n in names},
            "loss_steps": torch.tensor(self.loss_steps, dtype=torch.int64),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "boundaries": torch.tensor(self.boundaries, dtype=torch.int64),
            "epochs_run": torch.tensor(self.epochs_run, dtype=torch.int64),
            "converged": torch.tensor(self.converged, dtype=torch.bool),
            "diverged_step": self.diverged_step,
        }


def make_optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """SGD (mini-batch) or full-batch gradient descent ('gd')."""
    if schedule.optimizer not in ("sgd", "gd"):
        raise ValueError(f"optimizer must be 'sgd' or 'gd', got {schedule.optimizer!r}")
    return torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum)


def _batches(n: int, batch_size: int | str, optimizer: str, generator: torch.Generator,
             device: torch.device) -> list[torch.Tensor]:
    if optimizer == "gd" or batch_size == "full":
        return [torch.arange(n, device=device)]
    order = torch.randperm(n, generator=generator).to(device)
    return list(order.split(int(batch_size)))


def train_tasks(model: nn.Module, tasks: list[TaskSpec], schedule: Schedule, *,
                start_step: int = 0, optimizer_state: dict | None = None,
                resume_path: str | Path | None = None,
                log: Callable[[str], None] = lambda line: None) -> tuple[Record, dict]:
    """Train on each task in turn; returns the record and the optimiser's final state.

    A snapshot is taken at each task's scheduled steps and always at its last step; task t > 1
    does not repeat step 0 (the previous task's last snapshot). With `resume_path`, the state is
    saved there every `checkpoint_every` steps (at an epoch end) and picked up on a rerun.
    """
    optimizer = make_optimizer(model, schedule)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr
    record = Record(step=start_step)
    if resume_path is not None and Path(resume_path).is_file():
        saved = store.load_torch(resume_path)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        record = Record(**saved["record"])
        log(f"resumed from {resume_path} at step {record.step}")
    last_checkpoint = record.step
    device = next(model.parameters()).device
    bar = ProgressBar(sum(t.max_epochs for t in tasks), "training")
    model.train()
    while record.task_index < len(tasks) and record.diverged_step < 0:
        task = tasks[record.task_index]
        n = len(task.x)
        per_epoch = 1 if schedule.optimizer == "gd" or schedule.batch_size == "full" else \
            math.ceil(n / int(schedule.batch_size))
        task_start = record.boundaries[-1] if len(record.boundaries) > record.task_index else record.step
        if len(record.boundaries) == record.task_index:
            record.boundaries.append(task_start)
        wanted = set(snapshot_schedule(task.max_epochs * per_epoch, schedule.log_points,
                                       task.dense_steps, schedule.snapshot_every))
        if record.epoch == 0 and record.task_index == 0 and 0 in wanted:
            record.snapshot(model, record.step, 0, task.number)
        converged = False
        while record.epoch < task.max_epochs:
            tic = time.perf_counter()
            generator = torch.Generator().manual_seed(
                schedule.seed * 1_000_003 + task.number * 10_007 + record.epoch)
            for idx in _batches(n, schedule.batch_size, schedule.optimizer, generator, device):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_value(model(task.x[idx]), task.y[idx], schedule.loss)
                value = float(loss.detach())
                record.loss_steps.append(record.step)
                record.losses.append(value)
                if not math.isfinite(value):
                    record.diverged_step = record.step
                    log(f"diverged at step {record.step}: loss {value}")
                    break
                loss.backward()
                optimizer.step()
                record.step += 1
                if record.step - task_start in wanted:
                    record.snapshot(model, record.step, record.epoch + 1, task.number)
            if record.diverged_step >= 0:
                break
            record.epoch += 1
            train_loss, correct = evaluate(model, task.x, task.y, schedule.loss)
            accuracy = float(correct.float().mean())
            log(f"task {task.number} epoch {record.epoch} step {record.step} "
                f"loss {train_loss:.4g} accuracy {accuracy:.4f} "
                f"({time.perf_counter() - tic:.2f} s)")
            bar.update(sum(t.max_epochs for t in tasks[:record.task_index]) + record.epoch,
                       f"task {task.number} loss {train_loss:.3g} acc {accuracy:.3f}")
            if not math.isfinite(train_loss):
                record.diverged_step = record.step
                break
            reached = (train_loss <= task.target_loss if task.target_loss is not None else
                       task.target_accuracy is not None and accuracy >= task.target_accuracy)
            if reached and record.epoch >= task.min_epochs:
                converged = True
                break
            if (resume_path is not None and schedule.checkpoint_every
                    and record.step - last_checkpoint >= schedule.checkpoint_every):
                store.save_torch({"model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(),
                                  "record": dataclasses.asdict(record)},
                                 resume_path)
                last_checkpoint = record.step
        if record.diverged_step >= 0:
            break
        if not record.steps or record.steps[-1] != record.step:
            record.snapshot(model, record.step, record.epoch, task.number)
        record.epochs_run.append(record.epoch)
        record.converged.append(converged or (task.target_accuracy is None
                                              and task.target_loss is None))
        record.task_index += 1
        record.epoch = 0
    bar.close()
    return record, optimizer.state_dict()
