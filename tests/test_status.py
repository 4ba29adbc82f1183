"""Run status: ok, diverged, failed to learn — the criterion on small cases, and on real runs
through the stages (a run at a vanishing learning rate fails to learn; a normal one is ok)."""

import numpy as np
import pytest

from ntkpipe import status, store
from ntkpipe.config import validate

CFG = {"chance_margin": 0.05, "min_loss_drop": 0.1}


def classify(**kw):
    args = {"diverged_step": -1, "end_accuracy": np.array([0.9, 0.8]),
            "chance": np.array([0.2, 0.2]), "start_loss": np.array([2.0, 3.0]),
            "end_loss": np.array([0.5, 0.7]), "real_targets": False, **CFG, **kw}
    return status.classify(**args)


def test_chance_is_the_largest_class_share():
    assert status.chance_level(np.array([0, 0, 0, 1])) == pytest.approx(0.75)
    assert status.chance_level(np.array([2, 3, 4, 5, 6])) == pytest.approx(0.2)
    assert np.isnan(status.chance_level(np.array([], dtype=int)))


def test_a_run_that_learned_every_task_is_ok():
    assert classify() == (status.OK, "")


def test_divergence_wins_over_everything():
    code, reason = classify(diverged_step=17, end_accuracy=np.array([0.1, 0.1]))
    assert code == status.DIVERGED and "step 17" in reason


@pytest.mark.parametrize("accuracy, code", [(0.25, status.FAILED), (0.2501, status.OK),
                                            (0.24, status.FAILED), (0.3, status.OK)])
def test_failed_to_learn_at_chance_plus_the_margin(accuracy, code):
    got, reason = classify(end_accuracy=np.array([0.9, accuracy]))
    assert got == code
    if code == status.FAILED:
        assert reason.startswith("task 2: training accuracy")


def test_real_targets_are_judged_by_the_loss_drop():
    assert classify(real_targets=True, end_accuracy=np.array([0.0, 0.0]))[0] == status.OK
    code, reason = classify(real_targets=True, end_loss=np.array([1.85, 0.7]))
    assert code == status.FAILED and "task 1" in reason and "1.85" in reason


def test_the_flags_decode_to_names():
    assert list(status.names(np.array([0, 1, 2, np.nan]))) == ["ok", "diverged",
                                                               "failed_to_learn", "ok"]
    assert status.attrs()["flag_meanings"].split() == list(status.STATUSES)


def test_the_schema_defaults_are_the_documented_ones():
    assert validate({"sweeps": {"w": {}}})["status"] == CFG


def test_real_runs_are_classified_in_metrics_and_summary(tmp_path):
    from test_reliability import RUN, TRAIN, run_all

    from ntkpipe.summary import combine

    ok = store.open_netcdf(run_all(tmp_path / "ok")["metrics.nc"])
    assert int(ok["run_status"]) == status.OK
    assert ok["run_status"].attrs["flag_meanings"] == "ok diverged failed_to_learn"
    stuck = store.open_netcdf(run_all(tmp_path / "stuck", run={**RUN, "lr": 1e-9},
                                      train=TRAIN)["metrics.nc"])
    assert int(stuck["run_status"]) == status.FAILED
    assert stuck["run_status"].attrs["reason"].startswith("task 1: training accuracy")
    for i, ds in enumerate((ok, stuck)):  # two runs of one summary
        ds.attrs["wildcards_json"] = f'{{"run": "{_run_id(i)}", "shift": "{_shift_id()}"}}'
    summary = combine([ok, stuck], provenance={})
    assert sorted(summary["status"].values) == ["failed_to_learn", "ok"]
    assert sorted(summary["status_reason"].values)[1].startswith("task 1")


def _run_id(seed: int) -> str:
    from test_reliability import RUN

    from ntkpipe import sweep

    return sweep.run_id({**RUN, "seed": seed})


def _shift_id() -> str:
    from ntkpipe import sweep

    return sweep.shift_id({"shift": "conceptual", "shared_classes": 1, "alpha": 0.0,
                           "n_tasks": 2, "strategy": "finetune"})
