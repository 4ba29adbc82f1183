"""How sure a scorecard verdict is: bootstrap intervals over seeds, permutation p-values for
trends, and the verdict rule that needs them.

Every resampling draws from a fixed generator, so the same results give the same intervals and
p-values on every machine. A statistic takes an array whose last axis is the seed and must
tolerate NaN (a missing or excluded run).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
ALPHA = 0.05
SEED = 20250721  # fixed: verdicts must not change from one evaluation to the next


def quiet(function: Callable[..., float], *args, **kwargs) -> float:
    """`function(*args)` with the all-NaN warnings of numpy's nan-reductions silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def bootstrap(statistic: Callable[[np.ndarray], float], values: np.ndarray,
              resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of `statistic(values)` over resamplings of the seeds (the last axis,
    drawn with replacement, the same draw for every cell: runs of one seed are paired); (NaN,
    NaN) with fewer than two seeds."""
    values = np.asarray(values, dtype=float)
    seeds = values.shape[-1] if values.ndim else 0
    if seeds < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, seeds, size=(resamples, seeds))
    found = np.array([quiet(statistic, values[..., draw]) for draw in draws], dtype=float)
    found = found[np.isfinite(found) | np.isinf(found)]
    if not len(found):
        return np.nan, np.nan
    tail = (1 - level) / 2
    low, high = np.quantile(found, [tail, 1 - tail])
    return float(low), float(high)


def support(statistic: Callable[[np.ndarray], bool], values: np.ndarray,
            resamples: int = RESAMPLES) -> float:
    """The share of seed resamplings (see `bootstrap`) in which `statistic` is true: how often
    a claim about which level is best survives a different draw of seeds."""
    values = np.asarray(values, dtype=float)
    seeds = values.shape[-1]
    if seeds < 2:
        return np.nan
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, seeds, size=(resamples, seeds))
    return float(np.mean([bool(quiet(statistic, values[..., draw])) for draw in draws]))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ over the finite pairs; 0 when either side is constant (no trend), NaN when
    fewer than three pairs."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    if np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return 0.0
    return float(spearmanr(x[ok], y[ok]).statistic)


def trend_test(levels: np.ndarray, values: np.ndarray, sense: str,
               resamples: int = RESAMPLES) -> tuple[float, float, tuple[float, float]]:
    """Spearman ρ of `values` (levels × groups, e.g. × seeds) against the level, pooled over
    the groups; the one-sided permutation p-value of a trend in the claimed direction
    (`sense` '>=' rising, '<=' falling), permuting the levels within each group; and the
    bootstrap interval of ρ over the groups."""
    levels = np.asarray(levels, dtype=float)
    values = np.asarray(values, dtype=float)
    values = values.reshape(len(levels), -1)
    x = np.broadcast_to(levels[:, None], values.shape)
    rho = spearman(x, values)
    if not np.isfinite(rho):
        return rho, np.nan, (np.nan, np.nan)
    rng = np.random.default_rng(SEED)
    sign = 1.0 if sense == ">=" else -1.0
    hits = 0
    for _ in range(resamples):
        shuffled = np.stack([rng.permutation(values[:, g]) for g in range(values.shape[1])], 1)
        hits += sign * spearman(x, shuffled) >= sign * rho - 1e-12
    p_value = (1 + hits) / (1 + resamples)
    interval = bootstrap(lambda v: spearman(x[:, :v.shape[1]], v), values, resamples)
    return rho, float(p_value), interval


def sign_flip_test(differences: np.ndarray, sense: str,
                   resamples: int = RESAMPLES) -> float:
    """One-sided p-value that the mean of paired differences (after − before, one per run) is
    below 0 ('<=') or above it ('>='), under the null of a difference symmetric about 0:
    every sign pattern exactly for up to 16 pairs, `resamples` drawn ones beyond."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if not len(d):
        return np.nan
    sign = 1.0 if sense == ">=" else -1.0
    if len(d) <= 16:
        patterns = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
    else:
        patterns = np.random.default_rng(SEED).choice([-1.0, 1.0], size=(resamples, len(d)))
    means = sign * (patterns @ d) / len(d)
    observed = sign * d.mean()
    hits = int(np.sum(means >= observed - 1e-12 * max(1.0, abs(observed))))
    return float(hits / len(patterns)) if len(d) <= 16 else float((1 + hits) / (1 + resamples))


def verdict(value: float, interval: tuple[float, float], threshold: float, sense: str) -> str:
    """'true' when the whole interval clears the threshold, 'false' when it lies wholly on the
    other side, 'inconclusive' when it straddles it or is unknown; 'untested' without a
    value. `sense` is '>=' or '<='."""
    if not np.isfinite(value):
        return "untested"
    low, high = interval
    if not (np.isfinite(low) or np.isinf(low)) or not (np.isfinite(high) or np.isinf(high)):
        return "inconclusive"
    if sense == ">=":
        return "true" if low >= threshold else "false" if high < threshold else "inconclusive"
    return "true" if high <= threshold else "false" if low > threshold else "inconclusive"


def trend_verdict(rho: float, p_value: float, interval: tuple[float, float],
                  threshold: float, sense: str, alpha: float = ALPHA) -> str:
    """A trend holds when ρ clears the threshold and its permutation p-value is at most
    `alpha`; it fails when the bootstrap interval of ρ lies wholly short of the threshold."""
    if not np.isfinite(rho):
        return "untested"
    clears = rho >= threshold if sense == ">=" else rho <= threshold
    if clears and np.isfinite(p_value) and p_value <= alpha:
        return "true"
    low, high = interval
    short = high < threshold if sense == ">=" else low > threshold
    return "false" if np.isfinite(low) and short else "inconclusive"


def support_verdict(share: float, level: float = LEVEL) -> str:
    """A 'which level is best' claim holds when it survives at least `level` of the seed
    resamplings and fails when it survives at most 1 − `level` of them."""
    if not np.isfinite(share):
        return "untested"
    return "true" if share >= level else "false" if share <= 1 - level else "inconclusive"


def band_verdict(value: float, interval: tuple[float, float], low: float, high: float) -> str:
    """'true' when the interval lies inside [low, high], 'false' when wholly outside."""
    if not np.isfinite(value):
        return "untested"
    a, b = interval
    if not (np.isfinite(a) and np.isfinite(b)):
        return "inconclusive"
    if low <= a and b <= high:
        return "true"
    return "false" if b < low or a > high else "inconclusive"
