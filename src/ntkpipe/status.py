"""Whether a run is usable: `ok`, `diverged` or `failed_to_learn`, by a documented criterion.

- diverged: some step's training loss was not finite (the trainer stops there);
- failed_to_learn: at the end of some task, the network did not learn that task — with class
  labels, its training accuracy on the task is at most chance (the largest class share of the
  task's training set) plus `chance_margin`; with real-valued targets (a linear teacher), its
  training loss fell by less than `min_loss_drop` of the loss at the task's start;
- ok: neither.

Stored as the integer variable `run_status` with CF `flag_values` / `flag_meanings`, so a
NetCDF reader decodes it, and a `status` text coordinate along the summary's `run`. Every
scorecard row excludes the runs that are not ok before computing (`ntkpipe.scorecard`).
"""

from __future__ import annotations

import numpy as np

STATUSES = ("ok", "diverged", "failed_to_learn")
OK, DIVERGED, FAILED = range(3)


def attrs() -> dict[str, object]:
    """CF flag attributes of a `run_status` variable."""
    return {"long_name": "run status", "flag_values": np.arange(3, dtype=np.int8),
            "flag_meanings": " ".join(STATUSES)}


def chance_level(labels: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class of `labels`."""
    if len(labels) == 0:
        return float("nan")
    return float(np.bincount(labels).max() / len(labels))


def classify(diverged_step: int, end_accuracy: np.ndarray, chance: np.ndarray,
             start_loss: np.ndarray, end_loss: np.ndarray, *, real_targets: bool,
             chance_margin: float, min_loss_drop: float) -> tuple[int, str]:
    """(status code, reason) of a run from each trained task's training accuracy and loss at
    its end (and loss at its start), per task in training order."""
    if diverged_step >= 0:
        return DIVERGED, f"the training loss was not finite at step {diverged_step}"
    for task, (acc, level, first, last) in enumerate(
            zip(end_accuracy, chance, start_loss, end_loss), start=1):
        if real_targets:
            if np.isfinite(first) and np.isfinite(last) and last > (1 - min_loss_drop) * first:
                return FAILED, (f"task {task}: the training loss fell from {first:.4g} to only "
                                f"{last:.4g} (less than {min_loss_drop:g} of it)")
        elif np.isfinite(acc) and acc <= level + chance_margin:
            return FAILED, (f"task {task}: training accuracy {acc:.3f} at its end, chance "
                            f"{level:.3f} + margin {chance_margin:g}")
    return OK, ""


def codes(ds: object) -> np.ndarray | None:
    """The status code of each run of a summary (None: it records none): `run_status` (NaN, a
    run from before statuses: ok), else `diverged_step` for older summaries."""
    if "run_status" in ds:
        return np.nan_to_num(np.asarray(ds["run_status"].values, dtype=float), nan=float(OK))
    if "diverged_step" in ds:
        return np.where(np.asarray(ds["diverged_step"].values) >= 0, DIVERGED, OK).astype(float)
    return None


def names(codes: np.ndarray) -> np.ndarray:
    """Status names of status codes (NaN, for a run without one: 'ok')."""
    codes = np.asarray(codes, dtype=float)
    return np.array([STATUSES[int(c)] if np.isfinite(c) else "ok" for c in codes.ravel()],
                    dtype=object).reshape(codes.shape)
