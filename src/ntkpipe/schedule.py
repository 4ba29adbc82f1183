"""Which steps of a task keep a snapshot, decided while the task runs (torch-free).

A task's length is known only when it stops (phase 1 stops at convergence), yet its log-spaced
snapshots must cover the steps it actually ran. `LogSpacer` keeps candidate steps on a
geometric grid whose ratio grows with the step reached — about two candidates per interval of
the final log-spaced grid, whatever the final length — thinning older ones as it goes, so that
at the end it can pick `points` steps close to geomspace(1, T, points) from O(points)
candidates. Everything here is a pure function of the sequence of steps: the same run keeps
the same snapshots, resumed or not.
"""

from __future__ import annotations

import math

import numpy as np


def log_grid(last: int, points: int) -> np.ndarray:
    """0, `last`, and log-spaced integer steps between (at most `points` in all)."""
    grid = np.round(np.geomspace(1, max(last, 1), max(points - 1, 1))).astype(np.int64)
    return np.unique(np.concatenate([[0], grid, [last]]))


class LogSpacer:
    """Candidate steps (≥ 1) for `points` log-spaced snapshots of a task of unknown length."""

    def __init__(self, points: int) -> None:
        self.points = max(int(points), 0)
        self.kept: list[int] = []

    def _ratio(self, step: int) -> float:
        # half the log spacing a task ending at `step` would have: a task that ends later has
        # a coarser final grid, so the candidates stay at least twice as dense as it needs
        return max(1.0, step ** (1.0 / (2.0 * max(self.points - 1, 1))))

    def wants(self, step: int) -> bool:
        """Whether `step` should become a candidate."""
        if self.points == 0 or step < 1:
            return False
        return not self.kept or step >= self.kept[-1] * self._ratio(step) - 1e-9 \
            and step > self.kept[-1]

    def add(self, step: int) -> list[int]:
        """Record `step` as a candidate; returns the candidates dropped by thinning."""
        self.kept.append(step)
        if len(self.kept) <= 2 * self.points + 2:
            return []
        ratio = self._ratio(step)
        keep, dropped = [self.kept[0]], []
        for candidate in self.kept[1:-1]:
            if candidate >= keep[-1] * ratio - 1e-9:
                keep.append(candidate)
            else:
                dropped.append(candidate)
        self.kept = keep + [self.kept[-1]]
        return dropped

    def select(self, end: int) -> list[int]:
        """The candidates closest (in log step) to `points` log-spaced steps in [1, end]; `end`
        itself, the task's last step, is always a snapshot and counts as a candidate."""
        if self.points == 0 or end < 1 or not self.kept:
            return []
        targets = np.geomspace(1, end, self.points) if self.points > 1 else np.array([end])
        kept = np.array([s for s in self.kept if s < end] + [end], dtype=float)  # end: kept anyway
        chosen = {int(kept[np.argmin(np.abs(np.log(kept) - math.log(t)))]) for t in targets}
        return sorted(chosen)

    def state(self) -> dict:
        """What a resumed run needs to continue identically."""
        return {"points": self.points, "kept": list(self.kept)}

    @classmethod
    def from_state(cls, state: dict) -> "LogSpacer":
        """The spacer `state` describes."""
        spacer = cls(state["points"])
        spacer.kept = list(state["kept"])
        return spacer
