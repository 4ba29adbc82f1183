"""Data and split stages, and the readers every later stage shares."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ntkpipe import store
from ntkpipe.splits import TaskSplit, make_tasks, probe_set

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]
_SUBSET_STREAM = 7  # RNG stream of the sharpness subsets (splits.py uses 0..3)


def quiet(line: str) -> None:
    """A log function that drops its line."""


def compute_device() -> "torch.device":
    """The device stages compute on: the (first visible) GPU when there is one."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    when `size` reaches their number)."""
    if size >= len(labels):
        return np.arange(len(labels))
    return probe_set(labels, classes, size, np.random.default_rng([seed, _SUBSET_STREAM, task]))


def task_subset(data: dict[str, Any], split: TaskSplit, task: int, size: int, seed: int
                ) -> np.ndarray:
    """Training-set indices of the fixed subset of task `task` (1-based) that the sharpness
    and the training-kernel alignment are measured on."""
    idx = np.unique(split.train[task - 1])  # a frequency shift may repeat samples
    return idx[sharpness_subset(data["y_train"][idx], split.classes[task - 1], size, seed, task)]
