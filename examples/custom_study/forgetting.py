"""A study of your own, outside ntkpipe: catastrophic forgetting across the task shift.

Add it to a config beside the built-in studies (paths are relative to the working directory):

    studies: [reactivation, edge_of_stability, feature_evolution, continual,
              examples/custom_study/forgetting.py]

It contributes what every study does (`ntkpipe.studies.base`): a per-run measure derived from
the summary, one scorecard row with a threshold of its own, and one figure with its caption.
The measure is the backward transfer of task 1 (Lopez-Paz & Ranzato 2017, arXiv 1706.08840,
GEM's BWT for two tasks): held-out accuracy on task 1 after the last task minus right after
task 1, from the summary's accuracy matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import figures as plots
from ntkpipe.scorecard import Row, check, nanmedian, untested
from ntkpipe.studies.base import Figure, Study, Threshold

NAME = "forgetting"
CLAIM = "catastrophic forgetting: learning disjoint classes erases task 1"


def task1_transfer(summary: Any, files: dict, settings: dict) -> Any:
    """Per run: accuracy on task 1 after the last task minus after task 1 (NaN for a single
    task)."""
    import xarray as xr

    task1 = summary["accuracy_matrix"].sel(task=1).transpose("run", "trained_task").values
    finite = np.isfinite(task1)  # runs of fewer tasks are NaN after their last one
    last = task1[np.arange(len(task1)), task1.shape[1] - 1 - np.argmax(finite[:, ::-1], 1)]
    transfer = np.where(summary["n_tasks"].values > 1, last - task1[:, 0], np.nan)
    return xr.Dataset({"task1_transfer": ("run", transfer, {
        "long_name": "held-out task-1 accuracy after the last task minus after task 1"})})


def claims(ds: Any, t: dict[str, float]) -> list[Row]:
    """Task-1 accuracy falls by at least `forgetting_drop` when task 2 shares no class."""
    disjoint = (ds["shift"] == "conceptual") & (ds["shared_classes"] == 0) & (ds["n_tasks"] == 2)
    values = ds["task1_transfer"].values[disjoint.values]
    values = values[np.isfinite(values)]
    if not len(values):
        return untested(NAME, [CLAIM], "no two-task run with disjoint classes")
    drop = -float(nanmedian(values))
    return [Row(NAME, CLAIM, "median drop of held-out task-1 accuracy (−BWT) over the "
                "class-incremental runs", drop, f">= {t['forgetting_drop']}",
                check(drop, t["forgetting_drop"], ">="), f"{len(values)} runs")]


def forgetting_by_similarity(ds: Any, path: Path) -> None:
    """Task-1 transfer against task similarity, one point per run, per regime."""
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    two = (ds["n_tasks"] == 2).values & (ds["shift"] == "conceptual").values
    for i, regime in enumerate(np.unique(ds["regime"].values[two])):
        pick = two & (ds["regime"].values == regime)
        ax.plot(ds["similarity"].values[pick], ds["task1_transfer"].values[pick], "o",
                color=f"C{i}", label=str(regime), alpha=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("similarity |C₁∩C₂| / |C₁∪C₂|")
    ax.set_ylabel("task-1 accuracy: after task 2 − after task 1")
    ax.legend(fontsize=8)
    plots.finish(fig, "Forgetting of task 1 against task similarity", path)


STUDY = Study(
    name=NAME,
    title="Forgetting (example study)",
    claims=claims,
    measures=task1_transfer,
    thresholds={"forgetting_drop": Threshold(0.5, "'erases task 1': held-out task-1 accuracy "
                                                  "falls by at least this")},
    figures=(Figure("forgetting_by_similarity", forgetting_by_similarity,
                    "captions/forgetting_by_similarity.rst", "similarity sweep",
                    lambda points, analyses: any(p["n_tasks"] == 2 for p in points)),),
)
