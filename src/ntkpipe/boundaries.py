"""Measures at task boundaries, generic over studies: for every run and boundary, from the
snapshots every boundary has whatever the rest of the schedule — the k steps at dt = 1 on each
side (velocities) and the fixed grid after it (norm, alignment, distance) — so that no measure
depends on how densely the rest of training was sampled (`docs/science.md` §1). The
Reactivation study checks its claims on them; the continual study compares them across
strategies and along task sequences.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntkpipe.sweep import effective_lr, shift_id

MEASURES = {
    "velocity_spike": "velocity spike: peak dt = 1 velocity in the k steps after the boundary "
                      "over the median dt = 1 velocity of the k steps before it",
    "velocity_peak": "peak dt = 1 velocity in the k steps after the boundary",
    "velocity_baseline": "median dt = 1 velocity in the k steps before the boundary",
    "velocity_excess": "matched control: the shifted run's dt = 1 velocities summed over the k "
                       "steps after the boundary over those of the similarity-1 run continued "
                       "from the same phase-1 checkpoint, at the same steps",
    "norm_dip": "norm dip: 1 − the lowest norm over the post-boundary window / the norm at "
                "the boundary",
    "norm_recovered": "1 if the norm, after its dip, is back within tolerance of its boundary "
                      "value inside the post-boundary window, 0 if not, NaN if it did not dip",
    "recovery_steps": "steps from the boundary until the norm is back within tolerance of its "
                      "boundary value (runs that recovered)",
    "recovery_time": "recovery in optimisation time η · steps",
    "alignment_deflection": "largest |A_t − A_b| over the post-boundary window",
    "distance_jump": "S(Θ_0, ·) at the end of the post-boundary window minus at the boundary",
    "boundary_kernel_distance": "S(Θ_0, Θ_b): how far the kernel moved from init over task 1",
    "early_share": "S(Θ_b, Θ_b+k) / S(Θ_b, Θ_b+W): the share of the post-boundary window's "
                   "kernel displacement made in its first k steps (first boundary)",
    "window_before": "dt = 1 velocities available in the k steps before the boundary",
    "window_after": "dt = 1 velocities available in the k steps after the boundary",
}

def snapshot_mask(one: Any) -> np.ndarray:
    """Along the summary's `step`, the steps one run (`summary.isel(run=i)`) has a snapshot at."""
    mask = np.zeros(one.sizes["step"], dtype=bool)
    for name in ("test_accuracy", "spectral_norm"):
        if name in one:
            finite = np.isfinite(one[name])
            mask |= finite.any([d for d in finite.dims if d != "step"]).values
    return mask


def post_boundary_steps(dense: int, every: int, window: int) -> np.ndarray:
    """Steps after a boundary (0 = the boundary) the state measures use: the dense window and
    the fixed grid after it up to `window`, never the log-spaced snapshots."""
    grid_steps = range(every, window + 1, every) if every > 0 else []
    dense_steps = np.arange(min(dense, window) + 1)
    return np.unique(np.concatenate([dense_steps, np.array(list(grid_steps), int)]))


def boundary_measures_of(steps: np.ndarray, boundary: int, series: dict[str, np.ndarray], *,
                         dense: int, every: int, window: int, tolerance: float,
                         end: int | None = None) -> dict[str, float]:
    """The measures of one run at one boundary from its series at its snapshot `steps`
    (`velocity`, `norm`, `alignment`, `distance`, `from_boundary`); the post-boundary window
    stops at `end`, the task's last step. NaN where a window is incomplete (a task shorter
    than the dense window, a divergence), with the window counts saying why."""
    out = {name: np.nan for name in MEASURES if name != "velocity_excess"}
    if end is not None:
        window = max(0, min(window, int(end) - boundary))
    at = {int(s): i for i, s in enumerate(steps)}
    if boundary not in at:
        return out
    dt1 = np.zeros(len(steps), dtype=bool)
    dt1[:-1] = np.diff(steps) == 1  # velocity[i] spans steps i → i + 1
    velocity = series["velocity"]
    usable = dt1 & np.isfinite(velocity)  # a diverged step has no velocity: the window is short
    before = [at[s] for s in range(boundary - dense, boundary) if s in at and usable[at[s]]]
    after = [at[s] for s in range(boundary, boundary + dense) if s in at and usable[at[s]]]
    out["window_before"], out["window_after"] = len(before), len(after)
    if dense > 0 and len(before) == dense and len(after) == dense:
        out["velocity_baseline"] = float(np.median(velocity[before]))
        out["velocity_peak"] = float(np.max(velocity[after]))
        if out["velocity_baseline"] > 0:
            out["velocity_spike"] = out["velocity_peak"] / out["velocity_baseline"]
    b = at[boundary]
    out["boundary_kernel_distance"] = float(series["distance"][b])
    post = boundary + post_boundary_steps(dense, every, window)
    if not all(int(s) in at for s in post):
        return out
    index = np.array([at[int(s)] for s in post])
    norm = series["norm"][index]
    norm_b = norm[0]
    if norm_b > 0:
        dip = int(np.argmin(norm))
        out["norm_dip"] = float(1.0 - norm[dip] / norm_b)
        if out["norm_dip"] > tolerance:  # a dip to recover from; else "recovered" is moot
            back = np.flatnonzero((np.arange(len(norm)) > dip)
                                  & (norm >= (1.0 - tolerance) * norm_b))
            out["norm_recovered"] = float(len(back) > 0)
            if len(back):
                out["recovery_steps"] = float(post[back[0]] - boundary)
    alignment = series["alignment"][index]
    out["alignment_deflection"] = float(np.max(np.abs(alignment - alignment[0])))
    distance = series["distance"][index]
    out["distance_jump"] = float(distance[-1] - distance[0])
    far = series["from_boundary"][index]
    if np.isfinite(far[-1]) and far[-1] > 0 and 0 < dense < window:
        out["early_share"] = float(far[np.searchsorted(post - boundary, dense)] / far[-1])
    return out


def _control_shift(classes_per_task: int, n_tasks: int, strategy: str = "finetune") -> str:
    """The shift id of a run's matched control: task 1's classes continued (similarity 1),
    trained with the same strategy."""
    return shift_id({"shift": "conceptual", "shared_classes": classes_per_task, "alpha": 0.0,
                     "n_tasks": n_tasks, "strategy": strategy})


def boundary_measures(summary: Any, files: dict[str, dict[str, str]],
                      settings: dict[str, Any]) -> Any:
    """The boundary measures of every run at every boundary, per probe set: dims
    (run, probe, boundary); and each run's learning rate (run)."""
    import xarray as xr

    dense, tolerance = settings["dense_steps"], settings["recovery_tolerance"]
    every, window = settings["after_boundary"]["every"], settings["after_boundary"]["steps"]
    window = max(window, dense) if every > 0 else dense
    probes = summary["probe"].values
    boundaries = summary["boundary"].values if "boundary" in summary.dims else np.array([], int)
    n_runs = summary.sizes["run"]
    names = [n for n in MEASURES if n != "velocity_excess"]
    values = np.full((n_runs, len(probes), len(boundaries), len(names)), np.nan)
    after_sum = np.full((n_runs, len(probes), len(boundaries)), np.nan)
    all_steps = summary["step"].values
    for i in range(n_runs):
        one = summary.isel(run=i)
        has = snapshot_mask(one)
        steps = all_steps[has]
        starts = one["boundary_step"].values if len(boundaries) else np.array([])
        last = steps[-1] if len(steps) else 0
        # each task's last step: the next boundary, or the run's end (a run with fewer tasks
        # than the summary's longest has NaN boundaries after its own)
        ends = [e if np.isfinite(e) else last for e in [*starts[1:], last]]
        for b, boundary in enumerate(starts):
            if not np.isfinite(boundary):
                continue
            for p in range(len(probes)):
                series = {key: one[var].isel(probe=p).values[has] for key, var in (
                    ("velocity", "kernel_velocity"), ("norm", "spectral_norm"),
                    ("alignment", "kernel_alignment"), ("distance", "kernel_distance"),
                    ("from_boundary", "boundary_distance"))}
                if not np.isfinite(series["norm"]).any():
                    continue  # a probe set this run does not have
                found = boundary_measures_of(steps, int(boundary), series, dense=dense,
                                             every=every, window=window, tolerance=tolerance,
                                             end=ends[b])
                values[i, p, b] = [found[n] for n in names]
                if found["window_after"] == dense > 0:
                    at = np.searchsorted(steps, np.arange(int(boundary), int(boundary) + dense))
                    after_sum[i, p, b] = float(np.sum(series["velocity"][at]))
    excess = np.full_like(after_sum, np.nan)
    rows = {(r, s): i for i, (r, s) in enumerate(zip(summary["run_id"].values,
                                                     summary["shift_id"].values))}
    for i in range(n_runs):
        strategy = str(summary["strategy"].values[i]) if "strategy" in summary.coords \
            else "finetune"
        control = rows.get((str(summary["run_id"].values[i]), _control_shift(
            int(summary["classes_per_task"].values[i]), int(summary["n_tasks"].values[i]),
            strategy)))
        if control is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                excess[i] = after_sum[i] / after_sum[control]
    lr = np.array([effective_lr(float(summary["lr"].values[i]), str(summary["regime"].values[i]),
                                int(summary["width"].values[i]),
                                settings.get("lazy_reference_width", 256),
                                settings["lazy_lr_scale"], settings.get("lazy_width_exponent", 0))
                   for i in range(n_runs)])
    recovery = names.index("recovery_steps")
    values[..., names.index("recovery_time")] = values[..., recovery] * lr[:, None, None]
    dims = ("run", "probe", "boundary")
    data = {name: (dims, values[..., k], {"long_name": MEASURES[name]})
            for k, name in enumerate(names)}
    data["velocity_excess"] = (dims, excess, {"long_name": MEASURES["velocity_excess"]})
    data["learning_rate"] = ("run", lr, {"long_name": "the learning rate the run trains with"})
    return xr.Dataset(data, coords={"probe": probes, "boundary": boundaries},
                      attrs={"dense_steps": dense, "after_boundary_every": every,
                             "window_steps": window, "recovery_tolerance": tolerance})


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """What `boundary_measures` needs of the config."""
    t = config["train"]
    out = {"dense_steps": t["snapshots"]["dense_steps"],
           "after_boundary": dict(t["snapshots"]["after_boundary"]),
           "recovery_tolerance": config["metrics"]["recovery_tolerance"],
           "lazy_lr_scale": t["lazy_lr_scale"], "lazy_width_exponent": t["lazy_width_exponent"]}
    if t["lazy_width_exponent"]:
        out["lazy_reference_width"] = t["lazy_reference_width"]
    return out
