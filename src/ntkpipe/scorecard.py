"""Each published claim as a measurable check on the sweep summary.

A claim's statistic and threshold are fixed from its wording (config `scorecard`, defaults in
the schema), never tuned to the results. A claim whose experiment is not in the summary is
'untested'; diverged runs are excluded and counted in the note.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np


COLUMNS = ("study", "claim", "statistic", "value", "threshold", "holds", "note")


@dataclass
class Row:
    """One line of the scorecard."""

    study: str
    claim: str
    statistic: str
    value: float
    threshold: str
    holds: str  # "true", "false" or "untested"
    note: str = ""


def _nanmedian(values: Any, axis: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=axis)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ over the finite pairs; 0 when either side is constant (no trend), NaN when
    fewer than three pairs."""
    from scipy.stats import spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    if np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return 0.0
    return float(spearmanr(x[ok], y[ok]).statistic)


def _check(value: float, threshold: float, sense: str) -> str:
    if not np.isfinite(value):
        return "untested"
    return str(bool(value >= threshold if sense == ">=" else value <= threshold)).lower()


def without_diverged(ds: Any) -> tuple[Any, int]:
    """The summary with every diverged run's values set to NaN (along `run`), and how many
    there were."""
    diverged = ds["diverged_step"] >= 0
    count = int(diverged.sum())
    if count:
        ds = ds.copy()
        for name in ds.data_vars:
            if name != "diverged_step" and set(diverged.dims) <= set(ds[name].dims):
                ds[name] = ds[name].where(~diverged)
    return ds, count


def _subset(ds: Any, keep: tuple[str, ...], **fixed: Any) -> Any | None:
    """Runs with `fixed` values, other non-`keep` sweep keys at their best-populated value;
    None when a fixed value is absent."""
    from ntkpipe.summary import grid

    for key, value in fixed.items():
        if value not in ds[key].values:
            return None
    return grid(ds, keep, **fixed)


def _boundary(ds: Any, name: str, boundary: int = 1) -> Any:
    return ds[name].sel(probe=1, boundary=boundary)


# ---- the Reactivation study (science.md §1) -------------------------------------------------

def claim_spike_everywhere(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 1: spike, checkmark and deflection at the boundary, both regimes, every width;
    larger spikes with feature learning."""
    sub = _subset(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0,
                  n_tasks=2)
    name = "1. boundary reactivation in both regimes at every width"
    if sub is None or sub.sizes["width"] * sub.sizes["regime"] < 2:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no width sweep")]
    per_cell = {m: _nanmedian(_boundary(sub, m).transpose("regime", "width", "seed").values, 2)
                for m in ("velocity_spike", "norm_dip", "recovery_steps", "alignment_deflection")}
    cells = f"{sub.sizes['regime']} regimes × {sub.sizes['width']} widths, median over seeds"
    spike = float(np.nanmin(per_cell["velocity_spike"]))
    dip = float(np.nanmin(per_cell["norm_dip"]))
    recovered = float(np.mean(np.isfinite(per_cell["recovery_steps"])))
    deflection = float(np.nanmin(per_cell["alignment_deflection"]))
    feature = _boundary(sub, "velocity_spike").sel(regime="feature") \
        if "feature" in sub["regime"].values else None
    lazy = _boundary(sub, "velocity_spike").sel(regime="lazy") \
        if "lazy" in sub["regime"].values else None
    rows = [
        Row("reactivation", name + ": velocity spikes", "min over cells of the velocity spike "
            "(peak after / median before)", spike, f">= {t['spike']}",
            _check(spike, t["spike"], ">="), cells),
        Row("reactivation", name + ": norm drops", "min over cells of the norm dip depth",
            dip, f">= {t['dip']}", _check(dip, t["dip"], ">="), cells),
        Row("reactivation", name + ": norm recovers", "fraction of cells whose norm returns "
            "within tolerance of its boundary value", recovered, ">= 1.0",
            _check(recovered, 1.0, ">="), cells),
        Row("reactivation", name + ": alignment deflects", "min over cells of the largest "
            "|A_t − A_boundary| in the window", deflection, f">= {t['deflection']}",
            _check(deflection, t["deflection"], ">="), cells),
    ]
    if feature is not None and lazy is not None:
        wins = (feature > lazy).where(np.isfinite(feature) & np.isfinite(lazy))
        frac = float(wins.mean())
        rows.append(Row("reactivation", "1. larger spikes in the feature-learning regime",
                        "fraction of (width, seed) with feature spike > lazy spike", frac,
                        "> 0.5", _check(frac, 0.5 + 1e-12, ">="),
                        f"{int(np.isfinite(wins).sum())} pairs"))
    return rows


def claim_similarity(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 2: the effect shrinks monotonically with similarity, with diminishing returns,
    and vanishes at similarity 1."""
    sub = _subset(ds, ("regime", "shared_classes", "seed"), shift="conceptual", n_tasks=2)
    name = "2. reactivation shrinks as similarity grows"
    if sub is None or sub.sizes["shared_classes"] < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no similarity sweep")]
    similarity = np.asarray(sub["similarity"].values, dtype=float).reshape(-1)
    spike = _boundary(sub, "velocity_spike").transpose("shared_classes", "regime", "seed").values
    x = np.broadcast_to(similarity[:, None, None], spike.shape)
    ok = np.isfinite(spike)
    rho = _spearman(x, spike)
    median = _nanmedian(spike.reshape(len(similarity), -1), 1)  # over regimes and seeds
    order = np.argsort(similarity)
    total = median[order[0]] - median[order[-1]]
    first_new = median[order[-2]] - median[order[-1]]  # similarity 1 → one class fewer shared
    share = float(first_new / total) if total > 0 else np.nan
    linear = 1.0 / (len(similarity) - 1)
    at_one = float(median[order[-1]])
    return [
        Row("reactivation", name, "Spearman ρ of velocity spike vs similarity "
            "(all regimes and seeds)", rho, f"<= {t['similarity_rho']}",
            _check(rho, t["similarity_rho"], "<="), f"{int(ok.sum())} runs"),
        Row("reactivation", "2. diminishing returns: the first new classes matter most",
            "share of the total spike change gained by the first new class", share,
            f"> {linear:.3g} (its linear share)", _check(share, linear + 1e-12, ">="),
            "median over regimes and seeds"),
        Row("reactivation", "2. similarity 1 (no change) shows nothing",
            "median velocity spike at similarity 1", at_one, f"<= {t['no_spike']}",
            _check(at_one, t["no_spike"], "<="), ""),
    ]


def claim_frequency(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 3: frequency shifts give low velocity and smooth evolution."""
    name = "3. frequency shifts: low velocity, no discontinuity"
    freq = _subset(ds, ("alpha", "regime", "seed"), shift="frequency", n_tasks=2)
    if freq is None or freq.sizes["alpha"] < 2:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no frequency sweep")]
    spikes = _boundary(freq, "velocity_spike").where(freq["alpha"] > 0)
    value = float(_nanmedian(spikes.values))
    rows = [Row("reactivation", name, "median velocity spike over α > 0 (all regimes, seeds)",
                value, f"<= {t['no_spike']}", _check(value, t["no_spike"], "<="),
                f"α = {', '.join(str(a) for a in freq['alpha'].values)}")]
    concept = _subset(ds, ("regime", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    if concept is not None:
        ratio = value / float(_nanmedian(_boundary(concept, "velocity_spike").values))
        rows.append(Row("reactivation", "3. frequency spikes below class-incremental ones",
                        "median frequency spike / median class-incremental spike", ratio,
                        "<= 0.5", _check(ratio, 0.5, "<="), ""))
    return rows


def claim_learning_rate(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 4: high lr → deeper checkmark, slower recovery; medium → fastest recovery."""
    name = "4. learning rate shapes the checkmark"
    sub = _subset(ds, ("lr", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    if sub is None or sub.sizes["lr"] < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested",
                    "no sweep over ≥ 3 learning rates")]
    lrs = sub["lr"].values
    dip = _boundary(sub, "norm_dip").transpose("lr", "seed").values
    rho = _spearman(np.broadcast_to(lrs[:, None], dip.shape).astype(float), dip)
    recovery = _nanmedian(_boundary(sub, "recovery_steps").transpose("lr", "seed").values, 1)
    recovery = np.where(np.isfinite(recovery), recovery, np.inf)  # never recovered: slowest
    fastest = int(np.argmin(recovery))
    middle = 0 < fastest < len(lrs) - 1
    return [
        Row("reactivation", "4. higher learning rate, deeper norm dip",
            "Spearman ρ of norm dip vs lr", rho, f">= {t['lr_rho']}",
            _check(rho, t["lr_rho"], ">="), f"lr = {', '.join(map(str, lrs))}"),
        Row("reactivation", "4. a medium learning rate recovers fastest",
            "index of the fastest-recovering lr (0 = lowest)", float(fastest),
            f"strictly between 0 and {len(lrs) - 1}", str(middle).lower(),
            "median recovery steps: " + ", ".join(f"{r:g}" for r in recovery)),
        Row("reactivation", "4. higher learning rate, slower recovery than medium",
            "recovery steps at the highest lr minus at the fastest lr",
            float(recovery[-1] - recovery[fastest]), "> 0",
            _check(float(recovery[-1] - recovery[fastest]), 1e-12, ">="), ""),
    ]


def claim_sequence(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim 5: reactivation repeats at every boundary of a longer task sequence."""
    name = "5. reactivation at every boundary of a task sequence"
    longest = int(ds["n_tasks"].max())
    if longest < 3:
        return [Row("reactivation", name, "—", np.nan, "—", "untested", "no sequence of ≥ 3 tasks")]
    sub = _subset(ds, ("regime", "seed", "boundary"), n_tasks=longest)
    spikes = sub["velocity_spike"].sel(probe=1).transpose("boundary", ...).values
    per_boundary = _nanmedian(spikes.reshape(spikes.shape[0], -1), 1)[: longest - 1]
    value = float(np.nanmin(per_boundary))
    return [Row("reactivation", name, "min over boundaries of the median velocity spike",
                value, f">= {t['spike']}", _check(value, t["spike"], ">="),
                f"{longest} tasks; per boundary: "
                + ", ".join(f"{v:.3g}" for v in per_boundary))]


CLAIMS: list[Callable[[Any, dict[str, float]], list[Row]]] = [
    claim_spike_everywhere, claim_similarity, claim_frequency, claim_learning_rate,
    claim_sequence]


def evaluate(ds: Any, thresholds: dict[str, float]) -> list[Row]:
    """Every claim's rows on a summary dataset (diverged runs excluded)."""
    clean, diverged = without_diverged(ds)
    rows = [row for claim in CLAIMS for row in claim(clean, thresholds)]
    if diverged:
        for row in rows:
            row.note = f"{row.note}; {diverged} diverged runs excluded".lstrip("; ")
    return rows


def write(rows: list[Row], path: str | Path) -> None:
    """The scorecard as CSV (atomically)."""
    from ntkpipe import store

    with store.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            d = asdict(row)
            d["value"] = "" if not np.isfinite(row.value) else f"{row.value:.6g}"
            writer.writerow(d)


def scorecard(summary_path: str | Path, out: str | Path, thresholds: dict[str, float]) -> None:
    """Read the summary, check every claim, write the CSV."""
    from ntkpipe import store

    write(evaluate(store.open_netcdf(summary_path), thresholds), out)
