"""Tests of the Reactivation study's boundary measures: hand-computed values, the windows they
read, and their invariance to snapshots outside those windows."""

import math

import numpy as np
import pytest

from ntkpipe.boundaries import boundary_measures_of, post_boundary_steps

# Boundary at step 50, k = 3 dense steps each side, a grid every 5 steps over 10 steps after it.
STEPS = np.array([0, 10, 20, 40, 47, 48, 49, 50, 51, 52, 53, 55, 60, 80])
SERIES = {
    # early log-spaced velocities (dt = 10, 20) are large: they must not enter the baseline
    "velocity": np.array([9, 9, 9, 9, 1, 2, 3, 10, 4, 1, 1, 1, 1, np.nan], float),
    "norm": np.array([5, 5, 5, 5, 10, 10, 10, 10, 6, 8, 9, 9.8, 10, 10], float),
    "alignment": np.array([.5, .5, .5, .5, .5, .5, .5, .5, .3, .4, .45, .5, .5, .5]),
    "distance": np.array([0, .05, .1, .15, .2, .2, .2, .2, .25, .3, .32, .34, .35, .4]),
    "from_boundary": np.array([np.nan] * 7 + [0, .1, .15, .2, .3, .4, .5]),
}
KW = dict(dense=3, every=5, window=10, tolerance=0.05)


def measure(steps=STEPS, series=SERIES, boundary=50, **kw):
    return boundary_measures_of(steps, boundary, series, **{**KW, **kw})


def test_post_boundary_steps_are_the_dense_window_and_the_grid():
    assert post_boundary_steps(3, 5, 10).tolist() == [0, 1, 2, 3, 5, 10]
    assert post_boundary_steps(3, 0, 3).tolist() == [0, 1, 2, 3]


def test_hand_computed_case():
    out = measure()
    assert out["window_before"] == out["window_after"] == 3
    assert out["velocity_baseline"] == pytest.approx(2.0)   # median(1, 2, 3)
    assert out["velocity_peak"] == pytest.approx(10.0)      # max(10, 4, 1)
    assert out["velocity_spike"] == pytest.approx(5.0)
    assert out["norm_dip"] == pytest.approx(0.4)            # 6 / 10 at step 51
    assert out["norm_recovered"] == pytest.approx(1.0)
    assert out["recovery_steps"] == pytest.approx(5.0)      # 9.8 ≥ 0.95 · 10 at step 55
    assert out["alignment_deflection"] == pytest.approx(0.2)
    assert out["distance_jump"] == pytest.approx(0.15)      # 0.35 at step 60 − 0.2 at 50
    assert out["boundary_kernel_distance"] == pytest.approx(0.2)
    assert out["early_share"] == pytest.approx(0.5)         # 0.2 at step 53 / 0.4 at 60


def _with(extra_steps, drop=()):
    """The case with snapshots added at `extra_steps` (values that would change any measure
    reading them) and the steps in `drop` removed."""
    steps = sorted((set(STEPS.tolist()) | set(extra_steps)) - set(drop))
    index = {int(s): i for i, s in enumerate(STEPS)}
    series = {}
    for key, values in SERIES.items():
        series[key] = np.array([values[index[s]] if s in index else 1e3 for s in steps])
    return np.array(steps), series


@pytest.mark.parametrize("extra, drop", [
    ([5, 30, 45, 54, 57, 70, 90], ()),       # denser everywhere outside the dense windows
    ((), (10, 20, 40, 80)),                   # sparser log-spaced snapshots
    ([1, 2, 3, 44], (0, 20)),
])
def test_snapshots_outside_the_windows_change_no_measure(extra, drop):
    steps, series = _with(extra, drop)
    # a new step at 54 makes 53 → 54 a dt = 1 velocity too: still outside the window
    reference, changed = measure(), measure(steps, series)
    for name, value in reference.items():
        assert changed[name] == pytest.approx(value, nan_ok=True), name


def test_no_dip_is_not_recovered():
    flat = {**SERIES, "norm": np.full(len(STEPS), 3.0)}
    out = measure(series=flat)
    assert out["norm_dip"] == pytest.approx(0.0)
    assert math.isnan(out["norm_recovered"]) and math.isnan(out["recovery_steps"])


def test_a_dip_that_never_recovers():
    norm = SERIES["norm"].copy()
    norm[8:] = 6.0
    out = measure(series={**SERIES, "norm": norm})
    assert out["norm_dip"] == pytest.approx(0.4)
    assert out["norm_recovered"] == pytest.approx(0.0) and math.isnan(out["recovery_steps"])


def test_tighter_tolerance_recovers_later():
    assert measure(tolerance=0.01)["recovery_steps"] == pytest.approx(10.0)  # only 10.0 at step 60


def test_a_missing_dense_step_leaves_the_velocity_measures_undefined():
    steps, series = _with((), (48,))
    out = measure(steps, series)
    assert out["window_before"] == 1  # 47 → 49 spans 2 steps; only 49 → 50 is dt = 1
    assert math.isnan(out["velocity_spike"]) and math.isnan(out["velocity_baseline"])
    assert out["norm_dip"] == pytest.approx(0.4)  # the post-boundary measures are intact


def test_a_divergence_inside_the_window_is_nan_with_the_count_saying_why():
    velocity = SERIES["velocity"].copy()
    velocity[8] = np.nan
    out = measure(series={**SERIES, "velocity": velocity})
    assert out["window_after"] == 2 and math.isnan(out["velocity_spike"])


def test_dense_window_longer_than_the_task():
    out = measure(boundary=50, dense=60, window=60)
    assert out["window_before"] < 60 and math.isnan(out["velocity_spike"])
    assert math.isnan(out["norm_dip"])  # the post-boundary grid is not all there


def test_boundary_not_a_snapshot_gives_nan():
    out = measure(boundary=54)
    assert all(math.isnan(v) for v in out.values())


def test_the_post_boundary_window_stops_at_the_tasks_end():
    out = measure(end=55)  # grid 50, 51, 52, 53, 55
    assert out["norm_dip"] == pytest.approx(0.4) and out["recovery_steps"] == pytest.approx(5.0)
    assert out["distance_jump"] == pytest.approx(0.14)
    assert out["early_share"] == pytest.approx(0.2 / 0.3)
    assert out["velocity_spike"] == pytest.approx(5.0)  # the dense windows are whole
