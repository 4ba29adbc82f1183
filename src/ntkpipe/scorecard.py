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


# ---- shared by the edge-of-stability and feature-evolution studies -------------------------

def runs_with(ds: Any, name: str) -> np.ndarray:
    """Indices of the runs with finite values of `name`: the runs of the study (the analysis)
    that measures it; diverged runs were blanked, so they are not among them."""
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


def _groups(ds: Any, runs: np.ndarray, ignore: tuple[str, ...]) -> list[np.ndarray]:
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
    for group in _groups(ds, runs, (key, "seed")):
        ok = group[~np.isnan(values[group])]  # +inf (e.g. γ at perfect alignment) ranks top
        if len(np.unique(x[ok])) >= 2:
            rhos.append(_spearman(x[ok], values[ok]))
    rhos = [r for r in rhos if np.isfinite(r)]
    return (float(np.mean(rhos)) if rhos else np.nan), len(rhos)


def _per_value(ds: Any, runs: np.ndarray, key: str, values: np.ndarray, fmt: str = ".3g",
               reduce: Callable[[np.ndarray], float] = np.nanmean) -> str:
    """'k1: v1, k2: v2' of `values` over `runs` reduced per value of sweep key `key`."""
    keys = np.asarray(ds[key].values)[runs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ", ".join(f"{k:g}: {reduce(values[runs][keys == k]):{fmt}}"
                         for k in np.unique(keys))


def _untested(study: str, names: list[str], note: str) -> list[Row]:
    return [Row(study, name, "—", np.nan, "—", "untested", note) for name in names]


def _trend_row(study: str, name: str, ds: Any, runs: np.ndarray, key: str, values: np.ndarray,
               symbol: str, threshold: float, what: str) -> Row:
    rho, groups = trend(ds, runs, key, values)
    note = (f"ρ within each group of {what} alike in every sweep key but {key} and seed "
            f"(seeds pooled), averaged over {groups} group{'s' * (groups != 1)}; mean per "
            f"{key}: "
            + _per_value(ds, runs, key, values))
    return Row(study, name, f"Spearman ρ of {symbol} vs {key}", rho, f">= {threshold}",
               _check(rho, threshold, ">="), note if groups else f"no group of {what} "
               f"sweeps ≥ 2 values of {key}")


# ---- the edge of stability (science.md §2) ---------------------------------------------------

EOS = "edge_of_stability"
EOS_CLAIMS = ["a. final target alignment increases with η",
              "b. final top-eigenvector alignment increases with η",
              "c. sharpness reaches 2/η"]


def _sharpness_deviation(ds: Any, run: int) -> float:
    """(median sharpness over the later half of a run's steps − 2/η) / (2/η)."""
    top = ds["sharpness"].isel(run=run).max("hessian_eig").values
    steps = ds["step"].values[np.isfinite(top)]
    top = top[np.isfinite(top)]
    threshold = float(ds["stability_threshold"].values[run])
    # by step, not snapshot index: snapshots are log-spaced, dense while sharpness still rises
    late = top[steps >= (steps[0] + steps[-1]) / 2]
    return float((np.median(late) - threshold) / threshold)


def claim_edge_of_stability(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Jiang, Cohen & Li 2025: final alignment and top-eigenvector alignment grow
    with η, and the sharpness settles at 2/η (Cohen et al. 2021)."""
    runs = runs_with(ds, "sharpness")
    if not len(runs):
        return _untested(EOS, EOS_CLAIMS, "no edge-of-stability runs (a sweep with "
                                          "analyses: [sharpness])")
    rows = []
    for name, variable, symbol in zip(EOS_CLAIMS, ("target_alignment",
                                                   "top_eigenvector_alignment"),
                                      ("final A", "final (u₁ᵀy)²/‖y‖²")):
        if variable not in ds:
            rows += _untested(EOS, [name], f"no {variable} in the summary")
            continue
        values = final(ds[variable].sel(probe=1))
        rows.append(_trend_row(EOS, name, ds, runs, "lr", values, symbol, t["eta_rho"],
                               "edge-of-stability runs"))
    deviation = np.full(ds.sizes["run"], np.nan)
    deviation[runs] = [_sharpness_deviation(ds, run) for run in runs]
    worst = float(np.max(np.abs(deviation[runs])))
    rows.append(Row(EOS, EOS_CLAIMS[2], "max over runs of |median sharpness over the later half "
                    "of its steps − 2/η| / (2/η)", worst, f"<= {t['sharpness_band']}",
                    _check(worst, t["sharpness_band"], "<="),
                    f"{len(runs)} runs; signed deviation per η (largest over its runs): "
                    + _per_value(ds, runs, "lr", deviation, "+.1%",
                                 lambda v: v[np.argmax(np.abs(v))])))
    return rows


# ---- rapid feature evolution (science.md §3) -------------------------------------------------

FE = "feature_evolution"
FE_CLAIMS = ["d. the network beats kernel gradient descent (KGD and aKGD)",
             "e. alignment A(t) rises (non-linear nets)",
             "e. alignment A(t) saturates (non-linear nets)",
             "f. KSM diagonal above off-diagonal (non-linear nets)",
             "f. KSM flat (linear nets)",
             "g. deeper nets, larger effective γ (non-linear nets)",
             "h. deeper nets align higher (non-linear nets)"]


def _nonlinear(ds: Any, runs: np.ndarray) -> np.ndarray:
    return runs[np.asarray(ds["activation"].values, dtype=str)[runs] != "linear"]


def _linear(ds: Any, runs: np.ndarray) -> np.ndarray:
    return runs[np.asarray(ds["activation"].values, dtype=str)[runs] == "linear"]


def _kernel_descent_ratio(ds: Any, run: int) -> float:
    """Network loss / min(KGD, aKGD loss) at a run's last comparison point."""
    network = ds["network_loss"].isel(run=run).values
    last = np.flatnonzero(np.isfinite(network))[-1]
    kernels = [ds[n].isel(run=run).values[last] for n in ("kgd_loss", "akgd_loss") if n in ds]
    best = np.nanmin(kernels) if np.isfinite(kernels).any() else np.nan
    return float(network[last] / best)


def _late_rise_share(steps: np.ndarray, alignment: np.ndarray) -> tuple[float, float]:
    """(A_T − A_0, (A_T − A_{T/2}) / (A_T − A_0)) of one run, A_{T/2} interpolated in step
    halfway between its first and last snapshots."""
    ok = np.isfinite(alignment)
    if ok.sum() < 2:
        return np.nan, np.nan
    steps, alignment = steps[ok], alignment[ok]
    rise = alignment[-1] - alignment[0]
    middle = np.interp((steps[0] + steps[-1]) / 2, steps, alignment)
    return float(rise), float((alignment[-1] - middle) / rise) if rise > 0 else np.nan


def _fe_alignment_rows(ds: Any, runs: np.ndarray, t: dict[str, float]) -> list[Row]:
    """Claim e: A(t) rises early and saturates, on the non-linear feature-evolution runs."""
    runs = _nonlinear(ds, runs)
    if not len(runs) or "target_alignment" not in ds:
        return _untested(FE, FE_CLAIMS[1:3], "no non-linear feature-evolution runs with A(t)")
    steps = ds["step"].values.astype(float)
    rise, share = np.array([_late_rise_share(steps, ds["target_alignment"].isel(run=run)
                                             .sel(probe=1).values) for run in runs]).T
    smallest = float(np.nanmin(rise)) if np.isfinite(rise).any() else np.nan
    latest = float(np.nanmax(share)) if np.isfinite(share).any() else np.nan
    flat = int(np.sum(~np.isfinite(share)))
    return [
        Row(FE, FE_CLAIMS[1], "min over non-linear runs of A_T − A_0 (probe 1)", smallest,
            "> 0", _check(smallest, 1e-12, ">="), f"{len(runs)} runs"),
        Row(FE, FE_CLAIMS[2], "max over non-linear runs of the share of the rise of A "
            "gained over the second half of the steps, (A_T − A_{T/2}) / (A_T − A_0)", latest,
            f"<= {t['saturation']}", _check(latest, t["saturation"], "<="),
            f"{len(runs) - flat} rising runs" + (f"; {flat} without a rise left out"
                                                 if flat else "")),
    ]


def _specialization_rows(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claim f: the KSM's diagonal dominates for non-linear nets and is flat for linear ones."""
    runs = runs_with(ds, "specialization_dominance")
    dominance = final(ds["specialization_dominance"].sel(probe=1)) if len(runs) else None
    margin = t["specialization_margin"]
    rows = []
    nonlinear, linear = _nonlinear(ds, runs), _linear(ds, runs)
    if len(nonlinear):
        value = float(np.min(dominance[nonlinear]))
        rows.append(Row(FE, FE_CLAIMS[3], "min over non-linear runs of the final KSM mean "
                        "diagonal − mean off-diagonal", value, f">= {margin}",
                        _check(value, margin, ">="), f"{len(nonlinear)} runs; per depth: "
                        + _per_value(ds, nonlinear, "depth", dominance, ".3g", np.nanmin)))
    else:
        rows += _untested(FE, [FE_CLAIMS[3]], "no non-linear runs with the KSM")
    if len(linear):
        value = float(np.max(np.abs(dominance[linear])))
        rows.append(Row(FE, FE_CLAIMS[4], "max over linear runs of |final KSM mean diagonal "
                        "− mean off-diagonal|", value, f"<= {margin}",
                        _check(value, margin, "<="), f"{len(linear)} runs; per depth: "
                        + _per_value(ds, linear, "depth", dominance, ".3g",
                                     lambda v: v[np.argmax(np.abs(v))])))
    else:
        rows += _untested(FE, [FE_CLAIMS[4]], "no linear runs with the KSM")
    return rows


def claim_feature_evolution(ds: Any, t: dict[str, float]) -> list[Row]:
    """Claims of Shan & Bordelon 2021: the network beats kernel gradient descent, A(t) rises
    and saturates, the KSM specialises for non-linear nets only, and deeper nets have a larger
    γ and align higher."""
    descent = runs_with(ds, "network_loss")
    runs = np.union1d(descent, runs_with(ds, "specialization_dominance"))
    if not len(runs):
        return _untested(FE, FE_CLAIMS, "no feature-evolution runs (a sweep with analyses: "
                                        "[train_kernel] or [specialization])")
    rows = []
    nonlinear = _nonlinear(ds, descent)
    if len(nonlinear):
        ratio = np.full(ds.sizes["run"], np.nan)
        ratio[nonlinear] = [_kernel_descent_ratio(ds, run) for run in nonlinear]
        worst = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else np.nan
        rows.append(Row(FE, FE_CLAIMS[0], "max over non-linear runs of the final network loss "
                        "/ min(KGD loss, aKGD loss)", worst, "< 1", _check(worst, 1 - 1e-12, "<="),
                        f"{len(nonlinear)} runs; largest per depth: "
                        + _per_value(ds, nonlinear, "depth", ratio, ".3g", np.nanmax)))
    else:
        rows += _untested(FE, [FE_CLAIMS[0]], "no non-linear runs with kernel gradient descent")
    rows += _fe_alignment_rows(ds, runs, t)
    rows += _specialization_rows(ds, t)
    gamma_runs = _nonlinear(ds, runs_with(ds, "effective_gamma"))
    if len(gamma_runs):
        rows.append(_trend_row(FE, FE_CLAIMS[5], ds, gamma_runs, "depth",
                               ds["effective_gamma"].values.astype(float), "γ",
                               t["depth_rho"], "non-linear runs"))
    else:
        rows += _untested(FE, [FE_CLAIMS[5]], "no non-linear runs with γ")
    aligned = _nonlinear(ds, runs)
    if len(aligned) and "target_alignment" in ds:
        rows.append(_trend_row(FE, FE_CLAIMS[6], ds, aligned, "depth",
                               final(ds["target_alignment"].sel(probe=1)), "final A",
                               t["depth_rho"], "non-linear runs"))
    else:
        rows += _untested(FE, [FE_CLAIMS[6]], "no non-linear runs with A(t)")
    return rows


CLAIMS: list[Callable[[Any, dict[str, float]], list[Row]]] = [
    claim_spike_everywhere, claim_similarity, claim_frequency, claim_learning_rate,
    claim_sequence, claim_edge_of_stability, claim_feature_evolution]


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
