"""Training: phase 1 on task 1 to convergence, later phases on each next task, snapshots that
are log-spaced over each task and dense (every step) on both sides of every task boundary,
resumable state, divergence detection.

Time `step` counts optimiser steps from the start of phase 1. Shuffling uses a generator seeded
by (seed, task, epoch), so a run resumed mid-way draws exactly the batches it would have drawn.
Snapshots never change the training: they copy weights, and which steps they keep depends only
on the steps themselves.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ntkpipe import store
from ntkpipe.progress import ProgressBar
from ntkpipe.schedule import LogSpacer

if TYPE_CHECKING:
    from ntkpipe.strategies import Strategy

LOSSES = ("cross_entropy", "mse")


def snapshot_schedule(max_steps: int, log_points: int, dense_steps: int = 0,
                      every: int = 0, first_task: bool = True,
                      grid: tuple[int, int] = (0, 0)) -> list[int]:
    """The steps (relative to its start) `TaskSnapshots` keeps of a task that ran `max_steps`
    steps: 0 (the first task; a later task's 0 is the previous one's last), its first
    `dense_steps` and every grid[0]-th of its first grid[1] (a later task), `log_points`
    log-spaced steps, every `every`-th step (0: none) and the last `dense_steps` + 1."""
    spacer = LogSpacer(log_points)
    for step in range(1, max_steps + 1):
        if spacer.wants(step):
            spacer.add(step)
    start = {0} if first_task else set(range(1, min(dense_steps, max_steps) + 1))
    if not first_task and grid[0] > 0:
        start.update(range(grid[0], min(grid[1], max_steps) + 1, grid[0]))
    steps = {*start, *spacer.select(max_steps),
             *range(max(max_steps - dense_steps, 0 if first_task else 1), max_steps + 1)}
    if every > 0:
        steps.update(range(every, max_steps + 1, every))
    return sorted(steps)


def per_sample_loss(outputs: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """Loss of each sample: cross-entropy, or MSE 0.5‖f − y‖² against one-hot y (or against
    `labels` itself when it is an (N, O) matrix of real targets, e.g. a linear teacher's)."""
    if labels.ndim == 2:
        if loss != "mse":
            raise ValueError(f"real-valued targets need loss 'mse', got {loss!r}")
        return 0.5 * (outputs - labels.to(outputs.dtype)).pow(2).sum(dim=1)
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
        truth = y[i:i + batch]
        # real targets: "correct" when the largest output is the largest target's
        correct.append(out.argmax(dim=1) == (truth.argmax(dim=1) if truth.ndim == 2 else truth))
    model.train(was_training)
    return total / max(len(x), 1), torch.cat(correct) if correct else torch.zeros(0, dtype=bool)


@dataclass
class TaskSpec:
    """One task to train on: its data, how long, and when it has converged."""

    number: int  # 1-based task number
    x: torch.Tensor
    y: torch.Tensor
    max_epochs: int
    target_accuracy: float | None = None  # accuracy that must hold (None: run max_epochs)
    min_epochs: int = 0
    target_loss: float | None = None  # stop at the first epoch with training loss ≤ this
    dense_steps: int = 0  # k: snapshots at the last k + 1 steps, and the first k of a later task
    grid_every: int = 0  # a later task: also every this many steps ...
    grid_steps: int = 0  # ... over its first this many (the fixed post-boundary grid)
    plateau_epochs: int = 0  # with target_accuracy: also wait for the loss to level off
    loss_tolerance: float = 0.0  # over plateau_epochs, per epoch, relative


@dataclass
class Schedule:
    """How to train: optimiser, loss and step size, shared by every task of a phase."""

    lr: float
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    momentum: float = 0.0
    batch_size: int | str = 64
    seed: int = 0
    log_points: int = 16  # log-spaced snapshots per task, over the steps it actually runs
    checkpoint_every: int = 200
    snapshot_every: int = 0  # also snapshot every this many steps of each task (0: off)
    monitor: "Monitor | None" = None  # a quantity measured along training (the sharpness)
    strategy: "Strategy | None" = None  # a continual-learning strategy from task 2 on
    earlier: "list | None" = None  # (x, y) of the tasks before the first one trained here


@dataclass
class Monitor:
    """A quantity measured on the model along training — e.g. the sharpness, as Cohen et al.
    2021 (arXiv 2103.00065) track it — that opens a window of dense snapshots the first time
    its leading value reaches `trigger`."""

    every: int  # measured at step 0 and every this many steps
    measure: Callable[[nn.Module], "list[float]"]  # the model → its values (e.g. top-k)
    trigger: float = math.inf  # first values[0] ≥ this opens the window ...
    burst_every: int = 1  # ... of a snapshot (and a measurement) every this many steps
    burst_steps: int = 0  # over this many steps

    def due(self, step: int, burst_start: int) -> bool:
        """Whether the quantity is measured after `step` steps."""
        return step % self.every == 0 or in_burst(step, burst_start, self.burst_every,
                                                   self.burst_steps)


def in_burst(step: int, start: int, every: int, steps: int) -> bool:
    """Whether `step` lies on the grid of a dense window opened at `start` (−1: none)."""
    return start >= 0 and 0 <= step - start <= steps and (step - start) % every == 0


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class TaskSnapshots:
    """The snapshots of one running task: its step 0 (the first task only: a later task's step
    0 is the previous one's last), its first k steps and a fixed grid after them (a later
    task), every `every`-th step, candidates for the log-spaced ones, and a ring buffer of its
    last k + 1 steps — known only when the task stops."""

    def __init__(self, dense: int, log_points: int, every: int, dense_start: bool,
                 grid: tuple[int, int] = (0, 0), burst: tuple[int, int, int] = (-1, 1, 0)
                 ) -> None:
        self.dense, self.every, self.dense_start = dense, every, dense_start
        self.grid = tuple(grid)  # (every, over the first how many steps) of a later task
        self.burst = tuple(burst)  # (start, every, steps): a monitor's dense window (−1: none)
        self.spacer = LogSpacer(log_points)
        self.kept: dict[int, tuple[int, dict]] = {}  # relative step → (epoch, state)
        self.candidates: dict[int, tuple[int, dict]] = {}
        self.ring: deque = deque(maxlen=dense + 1)

    def offer(self, rel: int, epoch: int, model: nn.Module) -> None:
        """The model after `rel` steps of the task (in epoch `epoch`)."""
        on_grid = self.dense_start and self.grid[0] > 0 and rel % self.grid[0] == 0 \
            and rel <= self.grid[1]
        fixed = ((rel == 0 and not self.dense_start) or (self.dense_start and rel <= self.dense)
                 or on_grid or (self.every > 0 and rel % self.every == 0)
                 or in_burst(rel, *self.burst))
        candidate = self.spacer.wants(rel)
        entry = (epoch, _copy_state(model))
        if fixed:
            self.kept[rel] = entry
        if candidate:
            self.candidates[rel] = entry
            for dropped in self.spacer.add(rel):
                del self.candidates[dropped]
        self.ring.append((rel, entry))

    def finish(self) -> list[tuple[int, int, dict]]:
        """(relative step, epoch, state) of every snapshot the task keeps, in step order."""
        if not self.ring:  # a later task that diverged at its first step
            return [(rel, *self.kept[rel]) for rel in sorted(self.kept)]
        end = self.ring[-1][0]
        chosen = dict(self.kept)
        chosen.update(self.ring)
        for rel in self.spacer.select(end):
            chosen.setdefault(rel, self.candidates.get(rel))
        return [(rel, *chosen[rel]) for rel in sorted(chosen) if chosen[rel] is not None]

    def state(self) -> dict:
        """What a resumed run needs to keep the same snapshots."""
        return {"dense": self.dense, "every": self.every, "dense_start": self.dense_start,
                "grid": list(self.grid), "burst": list(self.burst), "spacer": self.spacer.state(), "kept": dict(self.kept),
                "candidates": dict(self.candidates), "ring": list(self.ring)}

    @classmethod
    def from_state(cls, state: dict) -> "TaskSnapshots":
        """The snapshots `state` describes."""
        plan = cls(state["dense"], 0, state["every"], state["dense_start"], state["grid"],
                   state.get("burst", (-1, 1, 0)))
        plan.spacer = LogSpacer.from_state(state["spacer"])
        plan.kept, plan.candidates = dict(state["kept"]), dict(state["candidates"])
        plan.ring.extend(tuple(item) for item in state["ring"])
        return plan


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
    stop_reasons: list[str] = field(default_factory=list)  # converged, budget, epochs
    diverged_step: int = -1
    monitor_steps: list[int] = field(default_factory=list)  # where the monitor measured
    monitor_values: list[list[float]] = field(default_factory=list)
    burst_step: int = -1  # the step its dense window opened (−1: never)
    task_index: int = 0  # resume position: task, epoch within it, step
    epoch: int = 0
    step: int = 0
    history: list[list[float]] = field(default_factory=list)  # this task's (loss, accuracy)
    pending: dict | None = None  # this task's TaskSnapshots state

    def keep(self, start: int, task: int, snapshots: list[tuple[int, int, dict]]) -> None:
        """Append a finished task's snapshots (relative steps from `start`)."""
        for rel, epoch, state in snapshots:
            if self.steps and start + rel <= self.steps[-1]:
                continue  # the previous task's last step is this task's step 0
            self.steps.append(start + rel)
            self.epochs.append(epoch)
            self.tasks.append(task)
            self.states.append(state)

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
            # text as one JSON string: pickle memoises strings by identity, which a resumed
            # run does not share with an uninterrupted one
            "stop_reasons_json": json.dumps(self.stop_reasons),
            "diverged_step": self.diverged_step,
            "monitor_steps": torch.tensor(self.monitor_steps, dtype=torch.int64),
            "monitor_values": torch.tensor(self.monitor_values, dtype=torch.float64).reshape(
                len(self.monitor_steps), len(self.monitor_values[0]) if self.monitor_values else 0),
            "burst_step": self.burst_step,
        }


def make_optimizer(model: nn.Module, schedule: Schedule) -> torch.optim.Optimizer:
    """SGD (mini-batch) or full-batch gradient descent ('gd')."""
    if schedule.optimizer not in ("sgd", "gd"):
        raise ValueError(f"optimizer must be 'sgd' or 'gd', got {schedule.optimizer!r}")
    return torch.optim.SGD(model.parameters(), lr=schedule.lr, momentum=schedule.momentum)


def _full_batch(optimizer: str, batch_size: int | str) -> bool:
    return optimizer == "gd" or batch_size == "full"


def _batches(n: int, batch_size: int | str, optimizer: str, generator: torch.Generator,
             device: torch.device) -> list[torch.Tensor]:
    if _full_batch(optimizer, batch_size):
        return [torch.arange(n, device=device)]
    order = torch.randperm(n, generator=generator).to(device)
    return list(order.split(int(batch_size)))


def has_converged(task: TaskSpec, history: list[list[float]]) -> bool:
    """Phase 1's stopping rule on the epoch-end (training loss, accuracy) history of a task:
    the loss reached `target_loss`; or the accuracy held `target_accuracy` for the last
    `plateau_epochs` epochs (the last one alone when 0) while the loss fell by at most
    `loss_tolerance` of itself per epoch over them."""
    if len(history) < max(task.min_epochs, 1):
        return False
    loss = history[-1][0]
    if task.target_loss is not None:
        return loss <= task.target_loss
    if task.target_accuracy is None:
        return False
    window = max(task.plateau_epochs, 1)
    if len(history) < window or any(acc < task.target_accuracy for _, acc in history[-window:]):
        return False
    if task.plateau_epochs == 0:
        return True
    if len(history) <= task.plateau_epochs:
        return False
    before = history[-1 - task.plateau_epochs][0]
    return before - loss <= task.loss_tolerance * task.plateau_epochs * before


def _watch(monitor: Monitor | None, record: Record, plan: TaskSnapshots, task_start: int,
           model: nn.Module, log: Callable[[str], None]) -> None:
    """Measure the monitored quantity when due; open its dense window the first time it
    reaches the trigger (in steps relative to the task, for the snapshots)."""
    if monitor is None or not monitor.due(record.step, record.burst_step):
        return
    if record.monitor_steps and record.monitor_steps[-1] == record.step:
        return  # a resumed run re-offers its checkpoint's step
    values = [float(v) for v in monitor.measure(model)]
    record.monitor_steps.append(record.step)
    record.monitor_values.append(values)
    if record.burst_step < 0 and values and values[0] >= monitor.trigger:
        record.burst_step = record.step
        plan.burst = (record.step - task_start, monitor.burst_every, monitor.burst_steps)
        log(f"step {record.step}: monitored value {values[0]:.5g} reached {monitor.trigger:.5g}; "
            f"snapshots every {monitor.burst_every} steps for {monitor.burst_steps}")


def train_tasks(model: nn.Module, tasks: list[TaskSpec], schedule: Schedule, *,
                start_step: int = 0, optimizer_state: dict | None = None,
                resume_path: str | Path | None = None, resume_key: str = "",
                log: Callable[[str], None] = lambda line: None) -> tuple[Record, dict]:
    """Train on each task in turn; returns the record and the optimiser's final state.

    Each task keeps its `TaskSnapshots`: log-spaced steps over the steps it ran, its last
    `dense_steps` + 1 steps, the first `dense_steps` of a later task, every `snapshot_every`-th
    step; task t > 1 does not repeat step 0 (the previous task's last snapshot). With
    `resume_path`, the state is saved there every `checkpoint_every` steps (at an epoch end)
    and picked up on a rerun — only by a run with the same `resume_key` (a digest of every
    setting the run depends on): one left by other settings is discarded, never resumed.
    """
    from ntkpipe.strategies import Strategy

    strategy = schedule.strategy or Strategy()
    optimizer = make_optimizer(model, schedule)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr
    record = Record(step=start_step)
    saved = None
    if resume_path is not None and Path(resume_path).is_file():
        saved = store.load_torch(resume_path)
        if saved.get("key", "") != resume_key:
            log(f"discarded {resume_path}: it was left by a run with other settings; "
                "starting over")
            Path(resume_path).unlink()
            saved = None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        strategy.load_state_dict(saved.get("strategy", {}), model)
        record = Record(**saved["record"])
        log(f"resumed from {resume_path} at step {record.step}")
    last_checkpoint = record.step
    device = next(model.parameters()).device
    bar = ProgressBar(sum(t.max_epochs for t in tasks), "training")
    model.train()
    while record.task_index < len(tasks) and record.diverged_step < 0:
        task = tasks[record.task_index]
        n = len(task.x)
        task_start = record.boundaries[-1] if len(record.boundaries) > record.task_index else record.step
        if len(record.boundaries) == record.task_index:
            record.boundaries.append(task_start)
            if task.number > 1:  # a fresh start of a later task (a resumed one has its state)
                earlier = list(schedule.earlier or []) + [(t.x, t.y) for t in
                                                          tasks[:record.task_index]]
                strategy.begin_task(model, earlier, task.number)
                if strategy.note:
                    log(f"task {task.number}: {strategy.note}")
        if record.pending is not None:
            plan = TaskSnapshots.from_state(record.pending)
        else:
            plan = TaskSnapshots(task.dense_steps, schedule.log_points, schedule.snapshot_every,
                                 dense_start=task.number > 1,
                                 grid=(task.grid_every, task.grid_steps))
            if task.number == 1:  # a later task's step 0 is the previous task's last snapshot
                plan.offer(0, 0, model)
                _watch(schedule.monitor, record, plan, task_start, model, log)
        converged = False
        while record.epoch < task.max_epochs:
            tic = time.perf_counter()
            generator = torch.Generator().manual_seed(
                schedule.seed * 1_000_003 + task.number * 10_007 + record.epoch)
            replay = torch.Generator().manual_seed(
                schedule.seed * 1_000_003 + task.number * 10_007 + record.epoch + 7_777_777)
            full = _full_batch(schedule.optimizer, schedule.batch_size)
            for idx in _batches(n, schedule.batch_size, schedule.optimizer, generator, device):
                optimizer.zero_grad(set_to_none=True)
                x, y = task.x[idx], task.y[idx]
                extra = strategy.extra_batch(replay, None if full else len(idx))
                if extra is not None:
                    x, y = torch.cat([x, extra[0]]), torch.cat([y, extra[1]])
                outputs = model(x)
                per = per_sample_loss(outputs, y, schedule.loss)
                loss = per.mean()
                # recorded: the task's loss on its own samples (the objective adds replayed
                # samples and the strategy's term)
                value = float(loss.detach()) if extra is None else \
                    float(per[:len(idx)].mean().detach())
                term = strategy.penalty(model, x, outputs)
                if term is not None:
                    loss = loss + term
                    value = value if math.isfinite(float(loss.detach())) else math.nan
                record.loss_steps.append(record.step)
                record.losses.append(value)
                if not math.isfinite(value):
                    record.diverged_step = record.step
                    log(f"diverged at step {record.step}: loss {value}")
                    break
                loss.backward()
                optimizer.step()
                record.step += 1
                _watch(schedule.monitor, record, plan, task_start, model, log)
                plan.offer(record.step - task_start, record.epoch + 1, model)
            if record.diverged_step >= 0:
                break
            record.epoch += 1
            train_loss, correct = evaluate(model, task.x, task.y, schedule.loss)
            accuracy = float(correct.float().mean())
            record.history.append([train_loss, accuracy])
            log(f"task {task.number} epoch {record.epoch} step {record.step} "
                f"loss {train_loss:.4g} accuracy {accuracy:.4f} "
                f"({time.perf_counter() - tic:.2f} s)")
            bar.update(sum(t.max_epochs for t in tasks[:record.task_index]) + record.epoch,
                       f"task {task.number} loss {train_loss:.3g} acc {accuracy:.3f}")
            if not math.isfinite(train_loss):
                record.diverged_step = record.step
                break
            if has_converged(task, record.history):
                converged = True
                break
            if (resume_path is not None and schedule.checkpoint_every
                    and record.step - last_checkpoint >= schedule.checkpoint_every):
                record.pending = plan.state()
                store.save_torch({"model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(),
                                  "strategy": strategy.state_dict(),
                                  "record": dataclasses.asdict(record), "key": resume_key},
                                 resume_path)
                record.pending = None
                last_checkpoint = record.step
        # a diverged task keeps what it has up to its last finite step (its windows are short)
        record.keep(task_start, task.number, plan.finish())
        if record.diverged_step >= 0:
            break
        if task.dense_steps and record.step - task_start < task.dense_steps:
            log(f"task {task.number} ran {record.step - task_start} steps, fewer than "
                f"dense_steps {task.dense_steps}: its boundary windows are short")
        criterion = task.target_accuracy is not None or task.target_loss is not None
        record.epochs_run.append(record.epoch)
        record.converged.append(converged or not criterion)
        record.stop_reasons.append("converged" if converged else
                                   "budget" if criterion else "epochs")
        record.task_index += 1
        record.epoch = 0
        record.history = []
    bar.close()
    return record, optimizer.state_dict()
