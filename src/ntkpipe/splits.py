"""Task construction: class-incremental, conceptual (k shared classes) and frequency (α) shifts,
and sequences of more than two tasks, saved as index lists.

Task t+1 keeps `shared_classes` of task t's classes, takes the rest from classes not used yet,
and draws its samples with class proportions D_α = (1−α)·D̃0 + α·D̃1, D̃0 uniform and D̃1 a
geometric profile. k = 0, α = 0 is the class-incremental split; k = classes_per_task, α > 0 the
frequency shift of the Reactivation study (§1). Every random choice has its own stream keyed by
(seed, purpose, task), so task 1 is the same whatever shift follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ntkpipe.errors import InputError

_ORDER, _SHARED, _TRAIN, _PROBE = 0, 1, 2, 3  # stream purposes


class SplitError(InputError, ValueError):
    """The requested split cannot be built from the data at hand."""


def _rng(seed: int, purpose: int, task: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, task])


def jaccard(a: list[int], b: list[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two class sets."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb)


def class_order(num_classes: int, mode: str, seed: int) -> list[int]:
    """The order classes enter tasks in: natural (0, 1, ...) or a permutation from the seed."""
    if mode == "natural":
        return list(range(num_classes))
    if mode == "shuffled":
        return [int(c) for c in _rng(seed, _ORDER).permutation(num_classes)]
    raise ValueError(f"class_order must be 'natural' or 'shuffled', got {mode!r}")


def task_classes(order: list[int], classes_per_task: int, shared_classes: int, n_tasks: int,
                 seed: int) -> list[list[int]]:
    """The class list of every task of the sequence."""
    c, k = classes_per_task, shared_classes
    if not 0 <= k <= c:
        raise SplitError(f"shared_classes must be in 0..{c}, got {k}")
    needed = c + (c - k) * (n_tasks - 1)
    if needed > len(order):
        raise SplitError(f"{n_tasks} tasks of {c} classes sharing {k} need {needed} classes; "
                         f"the dataset has {len(order)}")
    tasks = [list(order[:c])]
    fresh = iter(order[c:])
    for t in range(1, n_tasks):
        previous = tasks[-1]
        keep = sorted(_rng(seed, _SHARED, t).choice(len(previous), size=k, replace=False))
        tasks.append([previous[i] for i in keep] + [next(fresh) for _ in range(c - k)])
    return tasks


def frequency_profile(num: int, imbalance: float) -> np.ndarray:
    """D̃1: geometric class proportions whose largest/smallest ratio is `imbalance`."""
    if num == 1:
        return np.ones(1)
    weights = imbalance ** (-np.arange(num) / (num - 1))
    return weights / weights.sum()


def task_proportions(num: int, alpha: float, imbalance: float) -> np.ndarray:
    """D_α = (1−α)·D̃0 + α·D̃1 over a task's classes (Reactivation study §1, frequency shift)."""
    uniform = np.full(num, 1.0 / num)
    return (1 - alpha) * uniform + alpha * frequency_profile(num, imbalance)


def _largest_remainder(proportions: np.ndarray, total: int) -> np.ndarray:
    raw = proportions * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _pools(labels: np.ndarray, classes: list[int]) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in classes]


def sample_task(labels: np.ndarray, classes: list[int], proportions: np.ndarray, size: int | None,
                rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Training indices of a task with the given class proportions, and whether any class had
    to be drawn with replacement (it had fewer samples than its share)."""
    pools = _pools(labels, classes)
    if size is None:  # every sample the balanced task can have
        size = len(classes) * min(len(p) for p in pools)
    counts = _largest_remainder(proportions, size)
    chosen, replaced = [], False
    for pool, count in zip(pools, counts):
        if len(pool) == 0:
            raise SplitError("a task class has no training samples")
        take = min(count, len(pool))
        part = rng.choice(pool, size=take, replace=False)
        if count > take:
            replaced = True
            part = np.concatenate([part, rng.choice(pool, size=count - take, replace=True)])
        chosen.append(part)
    return np.sort(np.concatenate(chosen)), replaced


def probe_set(labels: np.ndarray, classes: list[int], size: int,
              rng: np.random.Generator) -> np.ndarray:
    """A class-balanced probe set of held-out indices (the remainder goes to the first classes)."""
    per_class = _largest_remainder(np.full(len(classes), 1.0 / len(classes)), size)
    out = []
    for c, pool, count in zip(classes, _pools(labels, classes), per_class):
        if count > len(pool):
            raise SplitError(f"probe.size {size} needs {count} held-out samples of class {c}, "
                             f"only {len(pool)} exist; lower probe.size")
        out.append(np.sort(rng.choice(pool, size=count, replace=False)))
    return np.concatenate(out)


@dataclass
class TaskSplit:
    """The tasks of one run: classes, proportions, training and probe indices per task."""

    classes: list[list[int]]
    proportions: list[np.ndarray]
    train: list[np.ndarray]
    probe: dict[int, np.ndarray]  # task number (1-based) → held-out indices
    with_replacement: list[bool] = field(default_factory=list)

    @property
    def similarity(self) -> list[float]:
        """Jaccard similarity of each task's classes to the previous task's."""
        return [jaccard(a, b) for a, b in zip(self.classes, self.classes[1:])]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for np.savez (ragged lists as values + offsets)."""
        out = {"classes": np.array(self.classes, dtype=np.int64),
               "proportions": np.array(self.proportions, dtype=np.float64),
               "with_replacement": np.array(self.with_replacement, dtype=bool),
               "similarity": np.array(self.similarity, dtype=np.float64)}
        for t, idx in enumerate(self.train, start=1):
            out[f"train_{t}"] = idx.astype(np.int64)
        for t, idx in self.probe.items():
            out[f"probe_{t}"] = idx.astype(np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "TaskSplit":
        """Inverse of `to_arrays`."""
        n = len(arrays["classes"])
        return cls(classes=[list(map(int, c)) for c in arrays["classes"]],
                   proportions=list(arrays["proportions"]),
                   train=[arrays[f"train_{t}"] for t in range(1, n + 1)],
                   probe={int(k.split("_")[1]): arrays[k] for k in arrays if k.startswith("probe_")},
                   with_replacement=list(map(bool, arrays["with_replacement"])))


def make_tasks(train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, *,
               classes_per_task: int, shared_classes: int = 0, alpha: float = 0.0,
               n_tasks: int = 2, seed: int = 0, order: str = "natural",
               train_per_task: int | None = None, probe_size: int = 256,
               probe_tasks: tuple[int, ...] = (1, 2), imbalance: float = 8.0,
               with_replacement: bool = False) -> TaskSplit:
    """Build the whole task sequence of one run (SplitError where `train_per_task` asks for
    more samples than a task has, unless `with_replacement`)."""
    if not 0.0 <= alpha <= 1.0:
        raise SplitError(f"alpha must be in [0, 1], got {alpha}")
    if any(t < 1 for t in probe_tasks):
        raise SplitError(f"probe task numbers start at 1, got {list(probe_tasks)}")
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    classes = task_classes(class_order(num_classes, order, seed), classes_per_task,
                           shared_classes, n_tasks, seed)
    proportions, train, replaced = [], [], []
    for t, cls in enumerate(classes, start=1):
        p = task_proportions(len(cls), 0.0 if t == 1 else alpha, imbalance)
        available = int(np.isin(train_labels, cls).sum())
        if train_per_task is not None and train_per_task > available and not with_replacement:
            raise SplitError(f"dataset.train_per_task is {train_per_task} but task {t} has only "
                             f"{available} training samples; lower it, or set "
                             "dataset.with_replacement: true to draw repeats")
        idx, rep = sample_task(train_labels, cls, p, train_per_task, _rng(seed, _TRAIN, t))
        proportions.append(p)
        train.append(idx)
        replaced.append(rep)
    probe = {t: probe_set(test_labels, classes[t - 1], probe_size, _rng(seed, _PROBE, t))
             for t in probe_tasks if t <= n_tasks}
    return TaskSplit(classes, proportions, train, probe, replaced)
