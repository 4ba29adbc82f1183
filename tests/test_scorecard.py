"""The claim checks on synthetic summaries where each claim holds or fails by construction."""

import csv

import numpy as np
import pytest
import xarray as xr

from ntkpipe import config, scorecard, store, sweep
from ntkpipe.summary import combine

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2}
THRESHOLDS = config.validate({"sweeps": {"w": {}}})["scorecard"]
STEPS = np.array([0, 5, 10, 11, 12, 20])


def fake(point, spike=3.0, dip=0.2, recovery=8.0, deflection=0.05, boundaries=1, diverged=-1):
    """A per-run metrics dataset with chosen reactivation measures."""
    measures = {"velocity_spike": spike, "norm_dip": dip, "recovery_steps": recovery,
                "alignment_deflection": deflection, "distance_jump": 0.01,
                "velocity_peak": 1.0}
    values = lambda v: np.full((1, boundaries), v, dtype=float)  # noqa: E731
    ds = xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, len(STEPS)))),
         "boundary_step": ("boundary", 10 + 10 * np.arange(boundaries)),
         "diverged_step": ((), diverged),
         **{k: (("probe", "boundary"), values(v)) for k, v in measures.items()}},
        coords={"step": STEPS, "probe": [1], "boundary": np.arange(1, boundaries + 1)})
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


def summary(runs):
    return combine(runs, provenance={})


def rows_by_claim(rows, prefix):
    return [r for r in rows if r.claim.startswith(prefix)]


def width_runs(spike_at=lambda regime, width: 3.0):
    return [fake({**BASE, "regime": r, "width": w, "seed": s}, spike=spike_at(r, w))
            for r in ("lazy", "feature") for w in (64, 256) for s in (0, 1)]


def test_claim1_holds_when_every_cell_spikes():
    rows = rows_by_claim(scorecard.evaluate(summary(width_runs(
        lambda r, w: 4.0 if r == "feature" else 3.0)), THRESHOLDS), "1.")
    assert [r.holds for r in rows] == ["true"] * 5
    assert rows[0].value == pytest.approx(3.0)
    assert rows[-1].value == pytest.approx(1.0)  # feature > lazy in every pair


def test_claim1_fails_when_one_width_does_not_spike():
    rows = scorecard.evaluate(summary(width_runs(lambda r, w: 1.2 if w == 256 else 3.0)),
                              THRESHOLDS)
    spike = rows_by_claim(rows, "1. boundary reactivation")[0]
    assert spike.holds == "false" and spike.value == pytest.approx(1.2)


def test_claim2_monotone_with_exact_share():
    # spikes 5, 4, 3, 2, 1.5, 1.0 for k = 0..5: perfectly monotone in similarity
    spikes = [5.0, 4.0, 3.0, 2.0, 1.5, 1.0]
    runs = [fake({**BASE, "shared_classes": k, "seed": s}, spike=v)
                for k, v in enumerate(spikes) for s in (0, 1)]
    rows = rows_by_claim(scorecard.evaluate(summary(runs), THRESHOLDS), "2.")
    rho, share, at_one = rows
    assert rho.value == pytest.approx(-1.0) and rho.holds == "true"
    assert share.value == pytest.approx((1.5 - 1.0) / (5.0 - 1.0))  # below 1/5: false
    assert share.holds == "false"
    assert at_one.value == pytest.approx(1.0) and at_one.holds == "true"


def test_missing_experiments_are_untested():
    rows = scorecard.evaluate(summary(width_runs()), THRESHOLDS)
    untested = {r.claim for r in rows if r.holds == "untested"}
    assert untested == {"2. reactivation shrinks as similarity grows",
                        "3. frequency shifts: low velocity, no discontinuity",
                        "4. learning rate shapes the checkmark",
                        "5. reactivation at every boundary of a task sequence"}


def test_frequency_and_sequence_claims():
    runs = width_runs()
    runs += [fake({**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a}, spike=1.1)
             for a in (0.0, 0.5, 1.0)]
    runs += [fake({**BASE, "shared_classes": 3, "n_tasks": 3}, spike=2.5, boundaries=2)]
    rows = scorecard.evaluate(summary(runs), THRESHOLDS)
    freq = rows_by_claim(rows, "3.")
    assert freq[0].value == pytest.approx(1.1) and freq[0].holds == "true"
    assert freq[1].value == pytest.approx(1.1 / 3.0) and freq[1].holds == "true"
    seq = rows_by_claim(rows, "5.")[0]
    assert seq.value == pytest.approx(2.5) and seq.holds == "true"


def test_learning_rate_claims():
    dips, recovery = {0.01: 0.1, 0.1: 0.2, 1.0: 0.4}, {0.01: 30.0, 0.1: 10.0, 1.0: 50.0}
    runs = [fake({**BASE, "lr": lr, "seed": s}, dip=dips[lr], recovery=recovery[lr])
            for lr in dips for s in (0, 1)]
    rows = rows_by_claim(scorecard.evaluate(summary(runs), THRESHOLDS), "4.")
    assert [r.holds for r in rows] == ["true", "true", "true"]
    assert rows[0].value == pytest.approx(1.0)
    assert rows[2].value == pytest.approx(40.0)


def test_diverged_runs_are_excluded_with_a_note(tmp_path):
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, spike=0.0, diverged=7)
    rows = scorecard.evaluate(summary(runs), THRESHOLDS)
    spike = rows_by_claim(rows, "1. boundary reactivation")[0]
    assert spike.value == pytest.approx(3.0)  # the diverged run's 0.0 is ignored
    assert "1 diverged runs excluded" in spike.note
    path = tmp_path / "scorecard.csv"
    scorecard.write(rows, path)
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(scorecard.COLUMNS)
    assert {r["holds"] for r in table} <= {"true", "false", "untested"}


def test_diverged_runs_are_blanked_along_run():
    runs = width_runs()
    runs[0] = fake({**BASE, "regime": "lazy", "width": 64, "seed": 0}, spike=0.0, diverged=7)
    ds = summary(runs)
    clean, count = scorecard.without_diverged(ds)
    assert count == 1
    bad = (ds["diverged_step"] >= 0).values
    for name in clean.data_vars:
        if name != "diverged_step":
            assert np.isnan(clean[name].values[bad]).all(), name
            np.testing.assert_array_equal(clean[name].values[~bad], ds[name].values[~bad])


def test_scorecard_from_a_written_summary(tmp_path):
    runs = width_runs()
    runs += [fake({**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a}, spike=1.1)
             for a in (0.5, 1.0)]
    ds = summary(runs)
    ds.to_netcdf(tmp_path / "summary.nc", engine="netcdf4",
                 encoding={k: {"dtype": "str"} for k in ds.variables if ds[k].dtype == object})
    scorecard.scorecard(tmp_path / "summary.nc", tmp_path / "scorecard.csv", THRESHOLDS)
    with open(tmp_path / "scorecard.csv", newline="") as handle:
        written = [(r["claim"], r["holds"]) for r in csv.DictReader(handle)]
    assert written == [(r.claim, r.holds) for r in scorecard.evaluate(ds, THRESHOLDS)]
    assert ("3. frequency shifts: low velocity, no discontinuity", "true") in written
