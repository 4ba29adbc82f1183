"""The claim checks on synthetic summaries where each claim holds or fails by construction."""

import csv

import numpy as np
import pytest
import xarray as xr

from ntkpipe import config, scorecard, stages, store, studies, sweep
from ntkpipe.summary import combine

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "target": "labels",
        "epochs": "auto", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2, "strategy": "finetune"}
THRESHOLDS = config.validate({"sweeps": {"w": {}}})["scorecard"]
STEPS = np.array([0, 5, 10, 11, 12, 20])


def fake(point, spike=3.0, dip=0.2, recovery=8.0, deflection=0.05, boundaries=1, diverged=-1,
         excess=3.0, moved=0.1, steps=100.0, early=0.5, recovered=1.0, status=None):
    """A per-run dataset with chosen Reactivation boundary measures."""
    measures = {"velocity_spike": spike, "norm_dip": dip, "recovery_steps": recovery,
                "recovery_time": recovery * point["lr"], "norm_recovered": recovered,
                "alignment_deflection": deflection, "distance_jump": 0.01,
                "velocity_peak": 1.0, "velocity_excess": excess,
                "boundary_kernel_distance": moved, "early_share": early}
    values = lambda v: np.full((1, boundaries), v, dtype=float)  # noqa: E731
    ds = xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, len(STEPS)))),
         "boundary_step": ("boundary", 10 + 10 * np.arange(boundaries)),
         "diverged_step": ((), diverged),
         "run_status": ((), np.int8(status if status is not None else (diverged >= 0)),
                        {"reason": "" if status is None else "test"}),
         "task_steps": ("trained_task", np.full(boundaries + 1, steps)),
         **{k: (("probe", "boundary"), values(v)) for k, v in measures.items()}},
        coords={"step": STEPS, "probe": [1], "boundary": np.arange(1, boundaries + 1),
                "trained_task": np.arange(1, boundaries + 2)})
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


def evaluate(ds, thresholds):
    """Every built-in study's rows."""
    return [row for study in studies.load_all(None)
            for row in scorecard.evaluate(study, ds, thresholds)]


def summary(runs):
    return combine(runs, provenance={})


def rows_by_claim(rows, prefix):
    return [r for r in rows if r.claim.startswith(prefix)]


WIDTHS, SEEDS = (64, 256, 1024), (0, 1, 2)


def width_runs(spike_at=lambda regime, width: 3.0, **kw):
    """The width sweep: the lazy kernel moves ∝ 1/width at a constant phase-1 length, the
    feature kernel moves more."""
    return [fake({**BASE, "regime": r, "width": w, "seed": s}, spike=spike_at(r, w),
                 moved=(0.2 * 64 / w if r == "lazy" else 0.5), steps=100 + s, **kw)
            for r in ("lazy", "feature") for w in WIDTHS for s in SEEDS]


def test_claim1_holds_when_every_cell_spikes():
    rows = rows_by_claim(evaluate(summary(width_runs(
        lambda r, w: 4.0 if r == "feature" else 3.0)), THRESHOLDS), "1.")
    assert len(rows) == 9
    assert [r.holds for r in rows] == ["true"] * 9, [(r.claim, r.holds) for r in rows]
    assert rows[0].value == pytest.approx(3.0) and rows[0].n == 18
    larger = rows_by_claim(rows, "1. larger spikes")[0]
    assert larger.value == pytest.approx(1.0) and larger.p_value == pytest.approx(0.5 ** 9)
    slope = rows_by_claim(rows, "1. the lazy regime is lazy: S")[0]
    assert slope.value == pytest.approx(-1.0)
    assert slope.low == pytest.approx(-1.0) and slope.high == pytest.approx(-1.0)


def test_claim1_fails_when_one_width_does_not_spike():
    rows = evaluate(summary(width_runs(lambda r, w: 1.2 if w == 256 else 3.0)), THRESHOLDS)
    spike = rows_by_claim(rows, "1. boundary reactivation")[0]
    assert spike.holds == "false" and spike.value == pytest.approx(1.2)


def test_claim1_seed_noise_makes_a_borderline_row_inconclusive():
    runs = [fake({**BASE, "regime": r, "width": w, "seed": s}, spike=[1.5, 2.1, 2.6][s])
            for r in ("lazy", "feature") for w in WIDTHS for s in SEEDS]
    spike = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "1. boundary reactivation")[0]
    assert spike.value == pytest.approx(2.1)  # the median clears 2 ...
    assert spike.low < 2.0 < spike.high and spike.holds == "inconclusive"  # ... not surely


def test_claim1_without_its_control_is_untested():
    rows = evaluate(summary(width_runs(excess=np.nan)), THRESHOLDS)
    control = rows_by_claim(rows, "1. boundary reactivation in both regimes at every width: "
                                  "the shift, not training")[0]
    assert control.holds == "untested" and "matched control" in control.note


def test_double_scaled_lazy_regime_fails_the_laziness_rows():
    """Phase 1 that lengthens ∝ width and a kernel that moves ∝ width^-2 (an lr ∝ 1/width on
    top of the NTK parametrisation slows lazy training by the width)."""
    runs = [fake({**BASE, "regime": r, "width": w, "seed": s}, moved=0.2 * (64 / w) ** 2,
                 steps=60.0 * w / 64)
            for r in ("lazy", "feature") for w in WIDTHS for s in SEEDS]
    rows = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "1. the lazy regime is lazy")
    assert [r.value for r in rows] == [pytest.approx(-2.0), pytest.approx(1.0)]
    assert [r.holds for r in rows] == ["false", "false"]


def test_claim2_monotone_with_exact_share():
    # spikes 5, 4, 3, 2, 1.5, 1.0 for k = 0..5: perfectly monotone in similarity
    spikes = [5.0, 4.0, 3.0, 2.0, 1.5, 1.0]
    runs = [fake({**BASE, "shared_classes": k, "seed": s}, spike=v)
            for k, v in enumerate(spikes) for s in SEEDS]
    rows = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "2.")
    rho, share, at_one = rows
    assert rho.value == pytest.approx(-1.0) and rho.holds == "true"
    assert rho.p_value < 0.01 and rho.n == 18
    assert share.value == pytest.approx((1.5 - 1.0) / (5.0 - 1.0))  # below 1/5: false
    assert share.holds == "false"
    assert at_one.value == pytest.approx(1.0) and at_one.holds == "true"


def test_claim2_a_trend_from_one_seed_is_not_true():
    spikes = [5.0, 4.0, 3.0]
    runs = [fake({**BASE, "shared_classes": k}, spike=v) for k, v in enumerate(spikes)]
    rho = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "2.")[0]
    assert rho.value == pytest.approx(-1.0)
    assert rho.p_value > 0.05 and rho.holds == "inconclusive"  # 1 of 6 orders is this one


def test_missing_experiments_are_untested():
    rows = evaluate(summary(width_runs()), THRESHOLDS)
    untested = {r.claim for r in rows if r.holds == "untested" and r.study == "reactivation"}
    assert untested == {"2. reactivation shrinks as similarity grows",
                        "2. diminishing returns: the first new classes matter most",
                        "2. similarity 1 (no change) shows nothing",
                        "3. frequency shifts: low velocity, no discontinuity",
                        "3. frequency spikes below class-incremental ones",
                        "4. higher learning rate, deeper norm dip",
                        "4. a medium learning rate recovers fastest",
                        "4. higher learning rate, slower recovery than medium",
                        "4. low learning rate: the change concentrated in the first steps",
                        "5. reactivation at every boundary of a task sequence"}


def test_frequency_and_sequence_claims():
    runs = width_runs()
    runs += [fake({**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a, "seed": s},
                  spike=1.1) for a in (0.0, 0.5, 1.0) for s in SEEDS]
    runs += [fake({**BASE, "shared_classes": 3, "n_tasks": 3, "regime": r, "seed": s},
                  spike=2.5, boundaries=2) for r in ("lazy", "feature") for s in SEEDS]
    runs += [fake({**BASE, "classes_per_task": 3, "n_tasks": 3, "regime": r, "seed": s},
                  spike=1.2 + s, boundaries=2) for r in ("lazy", "feature") for s in SEEDS]
    rows = evaluate(summary(runs), THRESHOLDS)
    freq = rows_by_claim(rows, "3.")
    assert freq[0].value == pytest.approx(1.1) and freq[0].holds == "true"
    assert freq[1].value == pytest.approx(1.1 / 3.0) and freq[1].holds == "true"
    disjoint, overlapping = rows_by_claim(rows, "5.")
    assert "disjoint" in disjoint.claim and "overlapping" in overlapping.claim
    assert overlapping.value == pytest.approx(2.5) and overlapping.holds == "true"
    assert disjoint.value == pytest.approx(2.2) and disjoint.holds == "inconclusive"
    assert disjoint.n == 12  # 2 boundaries × 2 regimes × 3 seeds


def test_learning_rate_claims():
    dips, recovery = {0.01: 0.1, 0.1: 0.2, 1.0: 0.4}, {0.01: 30.0, 0.1: 10.0, 1.0: 50.0}
    early = {0.01: 0.8, 0.1: 0.3, 1.0: 0.2}
    runs = [fake({**BASE, "lr": lr, "seed": s}, dip=dips[lr], recovery=recovery[lr],
                 early=early[lr]) for lr in dips for s in SEEDS]
    rows = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "4.")
    assert [r.holds for r in rows] == ["true"] * 4, [(r.claim, r.holds) for r in rows]
    assert rows[0].value == pytest.approx(1.0)
    assert rows[1].value == pytest.approx(1.0)   # the middle lr is fastest in every resampling
    assert rows[2].value == pytest.approx(40.0)
    assert rows[3].value == pytest.approx(0.5)
    assert "not matched in optimisation time" in rows[2].note


def test_a_run_that_never_recovers_counts_as_slowest():
    dips, recovery = {0.01: 0.1, 0.1: 0.2, 1.0: 0.4}, {0.01: 30.0, 0.1: 10.0, 1.0: np.nan}
    runs = [fake({**BASE, "lr": lr, "seed": s}, dip=dips[lr], recovery=recovery[lr],
                 recovered=0.0 if lr == 1.0 else 1.0) for lr in dips for s in SEEDS]
    rows = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "4.")
    assert rows[1].holds == "true" and rows[2].value == np.inf


def test_a_learning_rate_left_with_no_ok_run_makes_the_lr_rows_untested():
    # the highest lr's runs all diverged or failed to learn: 2 valid lrs are not a sweep of 3
    dips, recovery = {0.01: 0.1, 0.1: 0.2, 1.0: 0.4}, {0.01: 30.0, 0.1: 10.0, 1.0: 50.0}
    runs = [fake({**BASE, "lr": lr, "seed": s}, dip=dips[lr], recovery=recovery[lr],
                 status=(1 if s == 0 else 2) if lr == 1.0 else 0) for lr in dips for s in SEEDS]
    rows = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "4.")
    assert [r.holds for r in rows] == ["untested"] * 4
    assert all("runs left out: 1 diverged, 2 failed to learn" in r.note for r in rows)


def test_a_run_that_failed_to_learn_is_left_out_like_a_diverged_one():
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, spike=0.0, status=2)
    spike = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "1. boundary reactivation")[0]
    assert spike.value == pytest.approx(3.0) and spike.n == 17
    assert "runs left out: 1 failed to learn" in spike.note


def test_no_ok_run_leaves_every_row_untested():
    runs = [fake({**BASE, "width": w, "seed": 0}, status=2) for w in WIDTHS]
    rows = evaluate(summary(runs), THRESHOLDS)
    assert rows and all(r.holds == "untested" for r in rows)
    assert all("no run is ok: 3 failed to learn" in r.note for r in rows)


def test_diverged_runs_are_excluded_with_a_note(tmp_path):
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, spike=0.0, diverged=7)
    rows = evaluate(summary(runs), THRESHOLDS)
    spike = rows_by_claim(rows, "1. boundary reactivation")[0]
    assert spike.value == pytest.approx(3.0)  # the diverged run's 0.0 is ignored
    assert spike.n == 17
    assert "runs left out: 1 diverged" in spike.note
    path = tmp_path / "scorecard.csv"
    scorecard.write(rows, path)
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(scorecard.COLUMNS)
    assert {r["holds"] for r in table} <= set(scorecard.VERDICTS)


def test_runs_that_are_not_ok_are_dropped_along_run_and_counted():
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, spike=0.0, diverged=7)
    runs[1] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 1}, status=2)
    ds = summary(runs)
    clean, counts = scorecard.usable(ds)
    assert counts == {"diverged": 1, "failed to learn": 1}
    assert clean.sizes["run"] == ds.sizes["run"] - 2
    assert set(clean["status"].values) == {"ok"}
    assert sorted(ds["status"].values[ds["run_status"].values > 0]) == ["diverged",
                                                                       "failed_to_learn"]
    ok = ds["run_status"].values == 0
    np.testing.assert_array_equal(clean["velocity_spike"].values,
                                  ds["velocity_spike"].values[ok])


def test_a_summary_without_run_status_falls_back_to_diverged_step():
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, diverged=7)
    ds = summary(runs).drop_vars(["run_status", "status", "status_reason"])
    clean, counts = scorecard.usable(ds)
    assert counts == {"diverged": 1} and clean.sizes["run"] == ds.sizes["run"] - 1


def test_scorecard_from_a_written_summary(tmp_path):
    runs = width_runs()
    runs += [fake({**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a, "seed": s},
                  spike=1.1) for a in (0.5, 1.0) for s in SEEDS]
    ds = summary(runs)
    ds.to_netcdf(tmp_path / "summary.nc", engine="netcdf4",
                 encoding={k: {"dtype": "str"} for k in ds.variables if ds[k].dtype == object})
    parts = []
    for name in studies.BUILTIN:  # the studies' jobs, then the combining one
        parts.append(tmp_path / f"{name}.csv")
        stages.study_scorecard(name, tmp_path / "summary.nc", None, parts[-1],
                               thresholds=THRESHOLDS)
    scorecard.combine(parts, tmp_path / "scorecard.csv")
    with open(tmp_path / "scorecard.csv", newline="") as handle:
        written = [(r["claim"], r["holds"]) for r in csv.DictReader(handle)]
    assert written == [(r.claim, r.holds) for r in evaluate(ds, THRESHOLDS)]
    assert ("3. frequency shifts: low velocity, no discontinuity", "true") in written


# ---- edge of stability and feature evolution ------------------------------------------------

EOS_POINT = {**BASE, "optimizer": "gd", "loss": "mse", "batch_size": "full", "activation": "tanh",
             "regime": "feature", "width": 200, "n_tasks": 1, "classes_per_task": 10}
FE_POINT = {**EOS_POINT, "activation": "relu", "lr": 0.05}
EOS_STEPS = np.arange(0, 75, 5)  # sharpness and snapshots every 5 steps


def tag(ds, point):
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


def eos_run(point, alignment=0.2, top=0.1, settle=1.02, start=0.5, jump=0.01, snapshots=15,
            diverged=-1):
    """An edge-of-stability run: the sharpness rises linearly from `start`·2/η to 2/η at step
    30, then alternates around `settle`·2/η (± 2 %); the training-subset alignment ramps to
    `alignment` and moves by `jump` over each interval in which the sharpness falls; a₁ ramps
    to `top` (later steps of the union left NaN)."""
    threshold = 2 / point["lr"]
    steps = EOS_STEPS[:snapshots]
    ratio = np.where(steps < 30, start + (1 - start) * steps / 30,
                     settle * (1 + 0.02 * (-1.0) ** (steps // 5)))
    falls = np.concatenate([[0.0], (np.diff(ratio) < 0) & (steps[1:] > 30)])
    moved = np.cumsum(jump * falls)
    a = np.linspace(0.1, alignment, snapshots) + moved - moved[-1]
    return tag(xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, snapshots))),
         "train_target_alignment": ("step", a),
         "train_alignment_spectrum": (("step", "eigenvector"),
                                      np.linspace(0.01, top, snapshots)[:, None]),
         "sharpness": (("sharpness_step", "hessian_eig"),
                       np.stack([ratio, 0.9 * ratio], 1) * threshold),
         "stability_threshold": ((), threshold), "diverged_step": ((), diverged)},
        coords={"step": steps, "sharpness_step": steps, "probe": [1], "hessian_eig": [1, 2],
                "eigenvector": [1]}), point)


def eos_sweep(alignment=lambda lr: lr, top=lambda lr: lr, settle=lambda lr: 1.02,
              activation="tanh", **kw):
    return [eos_run({**EOS_POINT, "activation": activation, "lr": lr, "seed": s},
                    alignment(lr), top(lr), settle(lr), snapshots=15 - 2 * s, **kw)
            for lr in (0.05, 0.1, 0.2) for s in (0, 1)]


def eos_rows(runs):
    return [r for r in evaluate(summary(runs), THRESHOLDS) if r.study == "edge_of_stability"]


def test_eos_claims_hold():
    a, b, c, d, e = eos_rows(width_runs() + eos_sweep())
    # perfect ρ from each run's last snapshot; p = P(both seeds' orders perfect) ≈ 1/36
    assert a.value > 0.95 and a.p_value < 0.05 and a.holds == "true"  # ties split by round-off
    assert b.value == pytest.approx(1.0) and b.holds == "true" and a.n == b.n == 6
    assert c.value == pytest.approx(1.02 * 1.02) and c.holds == "true"
    assert "0.05: 0.50" in c.note  # every run starts at half its threshold
    assert d.value == pytest.approx(0.02, abs=0.005) and d.holds == "true"
    assert (c.low, c.high) == pytest.approx((c.value, c.value))  # seeds alike: no spread
    assert e.value == pytest.approx(0.01 / 5) and e.holds == "true"


def test_eos_claims_fail():
    runs = eos_sweep(alignment=lambda lr: 1 - lr, settle=lambda lr: 1.3 if lr == 0.1 else 1.0,
                     jump=-0.01)
    a, b, c, d, e = eos_rows(runs)
    assert a.value == pytest.approx(-1.0) and a.holds == "false"
    assert b.holds == "true"
    assert d.value > 0.25 and d.holds == "false" and "0.1: 0.3" in d.note
    assert e.value == pytest.approx(-0.01 / 5) and e.holds == "false"


def test_eos_runs_starting_above_the_threshold_are_left_out():
    """A run that starts at or above 2/η shows no progressive sharpening: rows c-e leave it
    out and say so; with every run there, they are untested."""
    runs = eos_sweep()
    runs[0] = eos_run({**EOS_POINT, "lr": 0.05, "seed": 0}, alignment=0.05, start=1.2)
    c = eos_rows(runs)[2]
    assert "1 runs starting at or above 2/η left out" in c.note and c.holds == "true"
    rows = eos_rows(eos_sweep(start=1.2))
    assert [r.holds for r in rows[2:]] == ["untested"] * 3
    assert "choose smaller learning rates" in rows[2].note


def test_eos_trend_pools_groups():
    runs = eos_sweep() + eos_sweep(alignment=lambda lr: 1 - lr, activation="relu")
    a = rows_by_claim(evaluate(summary(runs), THRESHOLDS), "a.")[0]
    assert a.value == pytest.approx(0.0, abs=1e-12)  # opposite trends pooled
    assert "4 (group, seed) columns" in a.note and a.holds != "true"


def test_eos_excludes_diverged_runs():
    runs = eos_sweep()
    runs[0] = eos_run({**EOS_POINT, "lr": 0.05, "seed": 0}, alignment=5.0, settle=3.0,
                      diverged=4)
    a, _, _, d, _ = eos_rows(runs)
    assert a.value > 0.95 and d.holds == "true"
    assert "runs left out: 1 diverged" in d.note


def fe_run(point, network=0.05, kgd=0.1, akgd=0.08, alignment=(0.1, 0.2, 0.28, 0.3),
           dominance=None, gamma=None, points=5, diverged=-1, hidden=0.3, readout=0.0,
           b=(1.2, 1.0), a=(1.0, 1.3), r2=0.95):
    """A feature-evolution run: losses at `points` comparison points ending at `network`,
    `kgd`, `akgd`; A(t) at steps 0, 10, 50, 100 (50 is halfway); KSM dominance ending at
    `dominance` (default 0.2 non-linear, 0.01 linear), of its hidden part at `hidden` and of
    its readout part at `readout`; γ (default 0.1 · depth); spectral exponents b and a
    (initial, final) fitted with r²."""
    if dominance is None:
        dominance = 0.01 if point["activation"] == "linear" else 0.2
    decay = lambda end: np.linspace(1.0, end, points)  # noqa: E731
    ramp = lambda end: np.linspace(0, end, 4)  # noqa: E731
    fits = {f"{kind}_{field}": ("when", np.array(values, float))
            for kind, pair in (("eigen", b), ("task", a))
            for field, values in (("exponent", pair), ("fit_r2", [r2, r2]),
                                  ("fit_kmin", [2, 2]), ("fit_kmax", [40, 40]))}
    return tag(xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, 4))),
         "fe_alignment": ("step", np.array(alignment)),
         "train_ksm_dominance": ("step", ramp(dominance)),
         "hidden_ksm_dominance": ("step", ramp(hidden)),
         "readout_ksm_dominance": ("step", ramp(readout)),
         **fits,
         "loss_step": ("loss_point", np.arange(points) * 25.0),
         "network_loss": ("loss_point", decay(network)), "kgd_loss": ("loss_point", decay(kgd)),
         "akgd_loss": ("loss_point", decay(akgd)),
         "effective_gamma": ((), 0.1 * point["depth"] if gamma is None else gamma),
         "diverged_step": ((), diverged)},
        coords={"step": [0, 10, 50, 100], "probe": [1], "when": ["initial", "final"]}), point)


def fe_sweep(change=None):
    """ReLU and linear nets of depth 1–3, two seeds; `change[(activation, depth)]` overrides
    fe_run's arguments; seed 1 records one comparison point fewer."""
    change = change or {}
    return [fe_run({**FE_POINT, "activation": a, "depth": d, "seed": s},
                   points=5 - s, **change.get((a, d), {}))
            for a in ("relu", "linear") for d in (1, 2, 3) for s in (0, 1)]


def fe_rows(runs):
    return [r for r in evaluate(summary(runs), THRESHOLDS)
            if r.study == "feature_evolution"]


def deeper(depth):
    """A(t) that rises more, and higher, with depth."""
    return (0.1, 0.2, 0.28 + 0.01 * depth, 0.3 + 0.01 * depth)


def test_feature_evolution_claims_hold():
    runs = fe_sweep({("relu", d): {"alignment": deeper(d)} for d in (1, 2, 3)})
    d, rises, saturates, diagonal, flat, parts, b, a, gamma, depth = fe_rows(runs)
    assert d.value == pytest.approx(0.05 / 0.08) and d.holds == "true"
    assert parts.value == pytest.approx(0.3) and parts.holds == "true"
    # b falls by 0.2 and a rises by 0.3 in all 6 non-linear runs: sign-flip p = 1/64
    assert b.value == pytest.approx(-0.2) and b.holds == "true" and b.n == 6
    assert b.p_value == pytest.approx(1 / 64) and a.value == pytest.approx(0.3)
    assert a.holds == "true" and "r² min 0.95" in a.note
    assert rises.value == pytest.approx(0.21) and rises.holds == "true"
    assert saturates.value == pytest.approx(0.02 / 0.21) and saturates.holds == "true"
    assert diagonal.value == pytest.approx(0.2) and diagonal.holds == "true"
    assert flat.value == pytest.approx(0.01) and flat.holds == "true"
    assert gamma.value == pytest.approx(1.0) and gamma.holds == "true"
    assert depth.value == pytest.approx(1.0) and depth.holds == "true"
    assert "6 runs" in d.note and "1: 0.1, 2: 0.2, 3: 0.3" in gamma.note


def test_feature_evolution_claims_fail():
    runs = fe_sweep({("relu", 2): {"network": 0.1, "alignment": (0.1, 0.12, 0.15, 0.3),
                                     "dominance": 0.01},
                       ("relu", 3): {"gamma": 0.01}, ("linear", 3): {"dominance": -0.1}})
    d, rises, saturates, diagonal, flat, parts, b, a, gamma, depth = fe_rows(runs)
    assert d.value == pytest.approx(0.1 / 0.08) and d.holds == "false"
    assert rises.holds == "true"
    assert saturates.value == pytest.approx(0.15 / 0.2) and saturates.holds == "false"
    assert diagonal.value == pytest.approx(0.01) and diagonal.holds == "false"  # flat ReLU
    assert flat.value == pytest.approx(0.1) and flat.holds == "false"
    assert gamma.value == pytest.approx(-0.5) and gamma.holds == "false"  # γ 0.1, 0.2, 0.01
    assert depth.value == pytest.approx(0.0) and depth.holds == "false"  # final A equal


def test_alignment_that_falls_does_not_rise():
    rows = fe_rows(fe_sweep({("relu", 1): {"alignment": (0.3, 0.2, 0.15, 0.1)}}))
    rises, saturates = rows[1:3]
    assert rises.value == pytest.approx(-0.2) and rises.holds == "false"
    assert saturates.holds == "true" and "2 without a rise left out" in saturates.note


def test_feature_evolution_excludes_diverged_runs():
    runs = fe_sweep()
    runs[0] = fe_run({**FE_POINT, "depth": 1, "seed": 0}, network=9.0, dominance=-1.0,
                     diverged=3)
    d, _, _, diagonal, *_ = fe_rows(runs)
    assert d.value == pytest.approx(0.625) and diagonal.value == pytest.approx(0.2)
    assert "5 runs" in d.note


def test_new_studies_untested_without_their_variables():
    rows = evaluate(summary(width_runs()), THRESHOLDS)
    new = [r for r in rows if r.study in ("edge_of_stability", "feature_evolution")]
    assert len(new) == 15 and {r.holds for r in new} == {"untested"}
    linear_only = fe_rows([r for r in fe_sweep() if "linear" in r.attrs["wildcards_json"]])
    assert [r.holds for r in linear_only] == ["untested"] * 3 + ["untested", "true"] \
        + ["untested"] * 5


def test_readout_that_specialises_or_hidden_that_does_not_fails_the_parts_row():
    for change in ({"readout": 0.2}, {"hidden": 0.01}):
        rows = fe_rows(fe_sweep({("relu", 2): change}))
        assert rows[5].holds == "false", change


def test_spectral_exponents_that_move_the_other_way_fail():
    runs = fe_sweep({("relu", d): {"b": (1.0, 1.2), "a": (1.3, 1.0)} for d in (1, 2, 3)})
    b, a = fe_rows(runs)[6:8]
    assert b.value == pytest.approx(0.2) and b.holds == "false"
    assert a.value == pytest.approx(-0.3) and a.holds == "false"
    # mixed directions (3 of 6 each way): neither holds nor fails
    mixed = fe_sweep({("relu", 1): {"b": (1.0, 1.4)}})
    assert fe_rows(mixed)[6].holds == "inconclusive"


def test_final_takes_each_runs_last_finite_step():
    da = xr.DataArray([[1.0, 2.0, np.nan], [3.0, np.nan, np.nan], [np.nan] * 3],
                      dims=("run", "step"))
    np.testing.assert_array_equal(scorecard.final(da), [2.0, 3.0, np.nan])
