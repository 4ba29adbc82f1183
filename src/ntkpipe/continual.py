"""Continual-learning scores of the accuracy matrix R, R[j, i] = held-out accuracy on task i
after training on tasks 1 … j+1 (0-based rows and columns, the trained tasks first)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _square(accuracy: Any) -> np.ndarray:
    """The T × T part of R over the T trained tasks."""
    r = np.asarray(accuracy, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] < r.shape[0]:
        raise ValueError(f"an accuracy matrix is (trained tasks, tasks ≥ trained), got {r.shape}")
    return r[:, :r.shape[0]]


def backward_transfer(accuracy: Any) -> float:
    """BWT = 1/(T−1) Σ_{i<T} (R[T, i] − R[i, i]): how training later tasks changed the earlier
    ones' accuracy, negative when it forgot (Lopez-Paz & Ranzato 2017, GEM, arXiv 1706.08840,
    §2); NaN for a single task."""
    r = _square(accuracy)
    if len(r) < 2:
        return float("nan")
    return float(np.mean(r[-1, :-1] - np.diag(r)[:-1]))


def forgetting(accuracy: Any) -> float:
    """Average forgetting 1/(T−1) Σ_{i<T} max_{l<T} (R[l, i] − R[T, i]) over the tasks learned
    before the last, l from task i's own row on (Chaudhry et al. 2018, RWalk, arXiv
    1801.10112, eq. 5); NaN for a single task."""
    r = _square(accuracy)
    t = len(r)
    if t < 2:
        return float("nan")
    return float(np.mean([np.max(r[i:t - 1, i]) - r[-1, i] for i in range(t - 1)]))
