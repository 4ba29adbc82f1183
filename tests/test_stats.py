"""Uncertainty of the verdicts: bootstrap intervals, permutation p-values, the verdict rule."""

import numpy as np
import pytest

from ntkpipe import stats


def test_bootstrap_is_fixed_and_brackets_the_statistic():
    values = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.5, 9.0]])
    low, high = stats.bootstrap(lambda v: np.nanmedian(v), values)
    assert (low, high) == stats.bootstrap(lambda v: np.nanmedian(v), values)  # same every time
    assert low <= np.median(values) <= high
    assert np.isnan(stats.bootstrap(np.nanmedian, values[:, :1])[0])  # one seed: no interval


def test_bootstrap_resamples_seeds_together():
    """A statistic of paired cells (seed s in both rows) sees whole seeds: the difference of
    two rows that differ by a constant has no spread."""
    a = np.array([1.0, 5.0, 2.0, 8.0])
    low, high = stats.bootstrap(lambda v: float(np.mean(v[1] - v[0])), np.stack([a, a + 3]))
    assert low == pytest.approx(3.0) and high == pytest.approx(3.0)


def test_trend_test_separates_a_trend_from_noise():
    levels = np.array([0.0, 1.0, 2.0, 3.0])
    rng = np.random.default_rng(1)
    rising = levels[:, None] + 0.1 * rng.standard_normal((4, 3))
    rho, p, (low, high) = stats.trend_test(levels, rising, ">=")
    assert rho > 0.9 and p < 0.01 and low > 0.5
    noise = rng.standard_normal((4, 3))
    _, p_noise, _ = stats.trend_test(levels, noise, ">=")
    assert p_noise > 0.05
    rho_down, p_down, _ = stats.trend_test(levels, -rising, "<=")
    assert rho_down < -0.9 and p_down < 0.01


@pytest.mark.parametrize("value, interval, sense, expected", [
    (3.0, (2.5, 3.5), ">=", "true"),
    (3.0, (1.5, 3.5), ">=", "inconclusive"),
    (1.0, (0.5, 1.5), ">=", "false"),
    (1.0, (np.nan, np.nan), ">=", "inconclusive"),
    (np.nan, (np.nan, np.nan), ">=", "untested"),
    (1.0, (0.5, 1.5), "<=", "true"),
    (2.2, (1.9, 2.5), "<=", "inconclusive"),
    (3.0, (2.5, 3.5), "<=", "false"),
    (5.0, (4.0, np.inf), ">=", "true"),
])
def test_verdict_needs_the_interval_to_clear_the_threshold(value, interval, sense, expected):
    assert stats.verdict(value, interval, 2.0, sense) == expected


def test_trend_support_and_band_verdicts():
    assert stats.trend_verdict(0.9, 0.01, (0.6, 1.0), 0.5, ">=") == "true"
    assert stats.trend_verdict(0.9, 0.2, (0.6, 1.0), 0.5, ">=") == "inconclusive"
    assert stats.trend_verdict(0.1, 0.6, (-0.3, 0.4), 0.5, ">=") == "false"
    assert stats.trend_verdict(-0.9, 0.01, (-1.0, -0.8), -0.7, "<=") == "true"
    assert [stats.support_verdict(s) for s in (0.97, 0.5, 0.02, np.nan)] == [
        "true", "inconclusive", "false", "untested"]
    assert stats.band_verdict(-1.1, (-1.3, -0.9), -1.5, -0.5) == "true"
    assert stats.band_verdict(-0.1, (-0.3, 0.1), -1.5, -0.5) == "false"
    assert stats.band_verdict(-0.6, (-0.8, -0.2), -1.5, -0.5) == "inconclusive"


def test_support_counts_the_resamples_a_claim_survives():
    always = np.array([[5.0, 5.0, 5.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
    assert stats.support(lambda v: np.argmin(np.median(v, 1)) == 1, always) == pytest.approx(1.0)
    assert stats.support(lambda v: np.argmin(np.median(v, 1)) == 0, always) == pytest.approx(0.0)
