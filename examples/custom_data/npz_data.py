"""A dataset of your own: ntkpipe reads it through this loader, by import path.

    datasets:
      mydata:
        loader: examples/custom_data/npz_data.py:load
        options: {path: data/mydata.npz}
        files: [data/mydata.npz]

The file holds `x_train`, `y_train`, `x_test`, `y_test` (numpy's .npz). The loader's
contract: `load(train, **options)` returns (x, y) with x (N, ...) real-valued and y (N,)
integer labels 0..num_classes-1. ntkpipe checks the contract before any job runs and
standardises x with the training split's statistics (per channel: axis 1).
"""

from __future__ import annotations

import numpy as np


def load(train: bool, *, path: str) -> tuple[np.ndarray, np.ndarray]:
    """One split of an .npz dataset."""
    split = "train" if train else "test"
    with np.load(path) as arrays:
        return arrays[f"x_{split}"], arrays[f"y_{split}"]
