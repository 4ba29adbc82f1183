"""The scorecard: rows, the statistics claim checks share, and the CSV files.

A study's claims (in its module under `ntkpipe.studies`) turn a published claim into a measured
check on the summary: a statistic, a threshold fixed from the claim's wording before looking at
results (config `scorecard`), and a verdict. A claim whose experiment is not in the summary is
'untested'; runs that are not ok (diverged, failed to learn) are excluded and counted
in the note. This module knows no study.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ntkpipe import stats

COLUMNS = ("study", "claim", "statistic", "value", "low", "high", "p_value", "n", "threshold",
           "holds", "note")
# 'measured': a question's effect, reported with its uncertainty and no threshold
VERDICTS = ("true", "false", "inconclusive", "untested", "measured")


@dataclass
class Row:
    """One line of the scorecard: the statistic, its uncertainty (a 95 % bootstrap interval
    over seeds [low, high] and/or a permutation p-value), the number n of runs (or pairs) it
    rests on, and the verdict — 'true' or 'false' only when the uncertainty clears the
    threshold, 'inconclusive' when it does not, 'untested' without the data."""

    study: str
    claim: str
    statistic: str
    value: float
    threshold: str
    holds: str  # one of VERDICTS
    note: str = ""
    n: int = 0
    low: float = float("nan")
    high: float = float("nan")
    p_value: float = float("nan")


def nanmedian(values: Any, axis: Any = None) -> Any:
    """np.nanmedian without the all-NaN warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def check(value: float, threshold: float, sense: str) -> str:
    """'true'/'false' for value >= or <= threshold; 'untested' when the value is not finite."""
    if not np.isfinite(value):
        return "untested"
    return str(bool(value >= threshold if sense == ">=" else value <= threshold)).lower()


def untested(study: str, names: list[str], note: str) -> list[Row]:
    """An 'untested' row for each claim name."""
    return [Row(study, name, "—", np.nan, "—", "untested", note) for name in names]


def usable(ds: Any) -> tuple[Any, dict[str, int]]:
    """The summary without the runs that are not ok (ntkpipe.status: diverged, failed to
    learn), and how many of each were left out. Older summaries without `run_status` fall back
    to `diverged_step`."""
    from ntkpipe.status import DIVERGED, FAILED, codes as status_codes

    codes = status_codes(ds)
    if codes is None:
        return ds, {}
    counts = {"diverged": int((codes == DIVERGED).sum()),
              "failed to learn": int((codes == FAILED).sum())}
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return ds, counts
    return ds.isel(run=np.flatnonzero(codes == 0)), counts


def subset(ds: Any, keep: tuple[str, ...], **fixed: Any) -> Any | None:
    """Runs with `fixed` values, other non-`keep` sweep keys at their best-populated value;
    None when a fixed value is absent."""
    from ntkpipe.summary import grid

    for key, value in fixed.items():
        if value not in ds[key].values:
            return None
    return grid(ds, keep, **fixed)


def runs_with(ds: Any, name: str) -> np.ndarray:
    """Indices of the runs with finite values of `name`: the runs of the study (the analysis)
    that measures it (runs that are not ok were dropped before)."""
    if name not in ds:
        return np.array([], dtype=int)
    finite = np.isfinite(ds[name])
    others = [d for d in finite.dims if d != "run"]
    return np.flatnonzero((finite.any(others) if others else finite).values)


def final(da: Any, dim: str = "step") -> np.ndarray:
    """Per run, the value at its last finite `dim` position (NaN where it has none); `da` has
    dims ("run", dim)."""
    values = da.transpose("run", dim).values
    finite = np.isfinite(values)
    last = values.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
    return np.where(finite.any(1), values[np.arange(len(values)), last], np.nan)


def groups(ds: Any, runs: np.ndarray, ignore: tuple[str, ...]) -> list[np.ndarray]:
    """`runs` split into groups alike in every sweep key but those in `ignore`."""
    from ntkpipe.sweep import SWEEP_KEYS

    keys = [k for k in SWEEP_KEYS if k in ds.coords and k not in ignore]
    labels = [tuple(str(ds[k].values[i]) for k in keys) for i in runs]
    return [runs[[label == group for label in labels]] for group in dict.fromkeys(labels)]


def trend(ds: Any, runs: np.ndarray, key: str, values: np.ndarray) -> tuple[float, int]:
    """Spearman ρ of per-run `values` (indexed by run) against sweep key `key`, within each
    group of `runs` alike in every other sweep key but the seed (seeds pooled), averaged over
    the groups that sweep `key`; and the number of such groups."""
    x = np.asarray(ds[key].values, dtype=float)
    rhos = []
    for group in groups(ds, runs, (key, "seed")):
        ok = group[~np.isnan(values[group])]  # +inf (e.g. γ at perfect alignment) ranks top
        if len(np.unique(x[ok])) >= 2:
            rhos.append(stats.spearman(x[ok], values[ok]))
    rhos = [r for r in rhos if np.isfinite(r)]
    return (float(np.mean(rhos)) if rhos else np.nan), len(rhos)


def per_value(ds: Any, runs: np.ndarray, key: str, values: np.ndarray, fmt: str = ".3g",
              reduce: Callable[[np.ndarray], float] = np.nanmean) -> str:
    """'k1: v1, k2: v2' of `values` over `runs` reduced per value of sweep key `key`."""
    keys = np.asarray(ds[key].values)[runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ", ".join(f"{k:g}: {reduce(values[runs][keys == k]):{fmt}}"
                         for k in np.unique(keys))


def level_table(ds: Any, runs: np.ndarray, key: str, values: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(levels, levels × columns) of per-run `values` (indexed by run): a row per value of
    sweep key `key`, a column per (group of runs alike in every other key, seed); NaN where a
    group lacks a level."""
    x = np.asarray(ds[key].values, dtype=float)
    levels = np.unique(x[runs])
    columns = []
    seeds = np.asarray(ds["seed"].values) if "seed" in ds.coords else np.zeros(ds.sizes["run"])
    for group in groups(ds, runs, (key, "seed")):
        for seed in np.unique(seeds[group]):
            column = np.full(len(levels), np.nan)
            for run in group[seeds[group] == seed]:
                column[np.searchsorted(levels, x[run])] = values[run]
            columns.append(column)
    table = np.stack(columns, 1) if columns else np.full((len(levels), 0), np.nan)
    return levels, table


def trend_row(study: str, name: str, ds: Any, runs: np.ndarray, key: str, values: np.ndarray,
              symbol: str, threshold: float, what: str, sense: str = ">=") -> Row:
    """A row checking the trend of per-run `values` against sweep key `key`: Spearman ρ pooled
    over groups of `what` alike in every other key and their seeds, with the one-sided
    permutation p-value (levels permuted within each group and seed) and a bootstrap interval
    over those columns; it holds when ρ clears the threshold at p ≤ 0.05 (`stats.trend_verdict`)."""
    levels, table = level_table(ds, runs, key, values)
    n = int(np.isfinite(table).sum())
    if len(levels) < 2 or n < 3:
        return Row(study, name, f"Spearman ρ of {symbol} vs {key}", np.nan, f"{sense} {threshold}",
                   "untested", f"no {what} sweep ≥ 2 values of {key} with 3 runs", n=n)
    rho, p, interval = stats.trend_test(levels, table, sense)
    note = (f"ρ over {len(levels)} values of {key} × {table.shape[1]} (group, seed) columns of "
            f"{what}; median per {key}: "
            + ", ".join(f"{level:g}: {m:.3g}" for level, m in
                        zip(levels, stats.quiet(np.nanmedian, table, axis=1))))
    return Row(study, name, f"Spearman ρ of {symbol} vs {key}", rho, f"{sense} {threshold}",
               stats.trend_verdict(rho, p, interval, threshold, sense), note, n=n,
               low=interval[0], high=interval[1], p_value=p)


def change_row(study: str, name: str, before: np.ndarray, after: np.ndarray, symbol: str,
               sense: str, what: str, note: str = "") -> Row:
    """A row checking that a per-run quantity moves in one direction over training: the mean
    change after − before over the runs, its sign-flip p-value and a bootstrap interval over
    the runs; it holds when the mean moves the claimed way at p ≤ 0.05 and fails when the
    whole interval lies on the other side of 0."""
    diff = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    diff = diff[np.isfinite(diff)]
    statistic = f"mean over {what} of {symbol}_final − {symbol}_initial"
    if len(diff) < 2:
        return Row(study, name, statistic, np.nan, f"{sense} 0", "untested",
                   f"fewer than 2 {what} with both fits", n=len(diff))
    mean = float(diff.mean())
    p = stats.sign_flip_test(diff, sense)
    interval = stats.bootstrap(np.nanmean, diff)
    clears = mean > 0 if sense == ">=" else mean < 0
    wrong = interval[1] < 0 if sense == ">=" else interval[0] > 0
    holds = "true" if clears and p <= stats.ALPHA else "false" if wrong else "inconclusive"
    moved = int(np.sum(diff > 0 if sense == ">=" else diff < 0))
    return Row(study, name, statistic, mean, f"{sense} 0 (p ≤ {stats.ALPHA})", holds,
               f"{moved} of {len(diff)} {what} moved that way" + (f"; {note}" if note else ""),
               n=len(diff), low=interval[0], high=interval[1], p_value=p)


def evaluate(study: Any, ds: Any, thresholds: dict[str, float]) -> list[Row]:
    """A study's rows on a summary merged with its measures, computed on the ok runs only:
    diverged and failed-to-learn runs are dropped first and counted in every row's note (a row
    left with too few runs turns untested or inconclusive by its own rule)."""
    clean, excluded = usable(ds)
    if clean.sizes["run"] == 0:
        names = [row.claim for row in study.claims(_blank(ds), thresholds)]
        return untested(study.name, names, "no run is ok: "
                        + ", ".join(f"{v} {k}" for k, v in excluded.items()))
    rows = study.claims(clean, thresholds)
    if excluded:
        left_out = ", ".join(f"{v} {k}" for k, v in excluded.items())
        for row in rows:
            row.note = f"{row.note}; runs left out: {left_out}".lstrip("; ")
    return rows


def _blank(ds: Any) -> Any:
    """The summary with every variable along `run` set to NaN: the rows' names without a
    value (every run excluded)."""
    ds = ds.copy()
    for name in ds.data_vars:
        if "run" in ds[name].dims and np.issubdtype(ds[name].dtype, np.number):
            ds[name] = ds[name].astype(float) * np.nan
    return ds


def write(rows: list[Row], path: str | Path) -> None:
    """Rows as CSV (atomically)."""
    from ntkpipe import store

    with store.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            d = asdict(row)
            for name in ("value", "low", "high", "p_value"):
                number = getattr(row, name)
                d[name] = "" if np.isnan(number) else f"{number:.6g}"
            writer.writerow(d)


def read(path: str | Path) -> list[dict[str, str]]:
    """The rows of a scorecard CSV, as text."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def combine(paths: list[str | Path], out: str | Path, *,
            provenance: dict[str, str] | None = None,
            sidecar: str | Path | None = None) -> None:
    """The studies' scorecards, in the given order, as one CSV (atomically), and its
    provenance as JSON in `sidecar` (a CSV has no place for attributes)."""
    from ntkpipe import store

    with store.atomic_path(out) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for path in paths:
            writer.writerows(read(path))
    if sidecar is not None:
        store.write_json({"file": Path(out).name, **(provenance or {})}, sidecar, indent=1)
