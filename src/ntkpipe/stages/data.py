"""Data and split stages, and the readers every later stage shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ntkpipe import store
from ntkpipe.errors import InputError
from ntkpipe.splits import TaskSplit, make_tasks, probe_set

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]
_SUBSET_STREAM = 7  # RNG stream of the sharpness subsets (splits.py uses 0..3)
_TEACHER_STREAM = 8  # RNG stream of the linear teacher's weights


def quiet(line: str) -> None:
    """A log function that drops its line."""


def compute_device() -> "torch.device":
    """The device stages compute on: the (first visible) GPU when there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def prepare_data(name: str, root: str | None, out: str | Path, *,
                 provenance: dict[str, str], download: bool = False,
                 image_size: int = 64, custom: dict[str, Any] | None = None) -> None:
    """Decode and normalise a dataset once (training-split statistics) into an array cache:
    a built-in one, or the loader of `custom` (see ntkpipe.custom)."""
    from ntkpipe.data import load_dataset, normalise

    if custom is not None:
        from ntkpipe.custom import dataset_arrays

        arrays = dataset_arrays(custom, name)
        x_train, y_train, x_test, y_test = (arrays[k] for k in
                                            ("x_train", "y_train", "x_test", "y_test"))
        num_classes = arrays["num_classes"]
    else:
        options = {"image_size": image_size} if name == "imagefolder" else {}
        x_train, y_train = load_dataset(name, root, train=True, download=download, **options)
        x_test, y_test = load_dataset(name, root, train=False, download=download, **options)
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    if custom is None or custom["normalise"]:
        (x_train, x_test), stats = normalise(x_train, x_test)
    else:
        stats = None
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


def tensors(data: dict[str, Any], device: Any) -> dict[str, "torch.Tensor"]:
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


def sharpness_subset(labels: np.ndarray, classes: list[int], size: int, seed: int,
                     task: int) -> np.ndarray:
    """Positions of a fixed class-balanced subset of a task's training samples (all of them
    when `size` is their number; InputError when it exceeds it)."""
    if size > len(labels):
        raise InputError(f"a training subset of {size} samples is larger than task {task}, "
                         f"which has {len(labels)}: lower the analysis' subset setting")
    if size == len(labels):
        return np.arange(len(labels))
    return probe_set(labels, classes, size, np.random.default_rng([seed, _SUBSET_STREAM, task]))


def task_subset(data: dict[str, Any], split: TaskSplit, task: int, size: int, seed: int
                ) -> np.ndarray:
    """Training-set indices of the fixed subset of task `task` (1-based) that the sharpness
    and the training-kernel alignment are measured on."""
    idx = np.unique(split.train[task - 1])  # a frequency shift may repeat samples
    return idx[sharpness_subset(data["y_train"][idx], split.classes[task - 1], size, seed, task)]


def linear_teacher(x: np.ndarray, outputs: int, seed: int) -> np.ndarray:
    """O linear teacher targets y^c = s^cᵀx, s^c ~ N(0, I/d) drawn from `seed`, for every row
    of a flat input x (N, d): the deep linear control of Shan & Bordelon 2021 (arXiv
    2105.14301, §4.3). (N, O) float64."""
    if x.ndim != 2:
        raise ValueError(f"a linear teacher needs flat inputs (N, d), got {x.shape}")
    weights = np.random.default_rng([seed, _TEACHER_STREAM]).normal(
        0.0, 1.0 / np.sqrt(x.shape[1]), size=(x.shape[1], outputs))
    return x.astype(np.float64) @ weights


def train_targets(data: dict[str, Any], run: dict[str, Any], which: str = "train"
                  ) -> np.ndarray | None:
    """The real-valued targets a run fits on the `which` ("train" or "test") set (None: its
    class labels); train and test share the teacher."""
    if run.get("target", "labels") == "labels":
        return None
    x = data[f"x_{which}"]
    return linear_teacher(x.reshape(len(x), -1), data["num_classes"], run["seed"])


def target_matrix(data: dict[str, Any], run: dict[str, Any], idx: np.ndarray) -> np.ndarray:
    """(len(idx), O) float64 targets of training samples `idx`: one-hot labels or the
    teacher's outputs."""
    teacher = train_targets(data, run)
    if teacher is None:
        return np.eye(data["num_classes"])[data["y_train"][idx]]
    return teacher[idx]
