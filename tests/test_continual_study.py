"""The continual study: forgetting across a boundary exactly, each question on summaries with a
known answer, rows that do not depend on the order of the runs, and 'measured', never a
threshold verdict."""

import numpy as np
import pytest
import xarray as xr

from ntkpipe.studies import continual


def test_boundary_forgetting_is_the_mean_drop_of_the_tasks_learnt_so_far():
    acc = np.array([[0.9, 0.0, 0.0],
                    [0.5, 0.8, 0.0],
                    [0.3, 0.6, 0.7]])
    assert continual.boundary_forgetting(acc) == pytest.approx([0.4, (0.2 + 0.2) / 2])
    assert continual.boundary_forgetting(acc[:1, :1]).shape == (0,)
    short = acc.copy()
    short[2] = np.nan  # a run that stopped after two tasks
    assert np.isnan(continual.boundary_forgetting(short)[1])


def summary(rows):
    """A merged summary from (strategy, seed, n_tasks, spikes, dips, forgetting) rows."""
    boundaries = max(len(r[3]) for r in rows)

    def pad(values):
        return list(values) + [np.nan] * (boundaries - len(values))

    return xr.Dataset(
        {"boundary_spike": (("run", "boundary"), [pad(r[3]) for r in rows]),
         "boundary_dip": (("run", "boundary"), [pad(r[4]) for r in rows]),
         "boundary_forgetting": (("run", "boundary"), [pad(r[5]) for r in rows])},
        coords={"strategy": ("run", [r[0] for r in rows]), "seed": ("run", [r[1] for r in rows]),
                "n_tasks": ("run", [r[2] for r in rows]), "width": ("run", [128] * len(rows)),
                "boundary": np.arange(1, boundaries + 1)})


def two_task_runs():
    rows = []
    for seed in range(4):
        rows.append(("finetune", seed, 2, [10.0 * (1 + seed)], [0.3], [0.8]))
        rows.append(("replay", seed, 2, [(1 + seed)], [0.1], [0.4]))  # spike /10, dip −0.2
        rows.append(("ewc", seed, 2, [10.0 * (1 + seed) * 10 ** (0.5 - seed % 2)], [0.3], [0.7]))
    return rows


def by_question(rows):
    return {r.claim: r for r in rows}


def test_strategy_effects_are_matched_differences_with_intervals():
    rows = by_question(continual.question_strategies(summary(two_task_runs())))
    replay = rows["does replay reduce the velocity spike at a boundary (vs fine-tuning)?"]
    assert replay.value == pytest.approx(-1.0) and replay.n == 4  # log₁₀ of a tenth
    assert replay.high < 0 and "replay reduces it" in replay.note and replay.holds == "measured"
    dip = rows["does replay reduce the norm dip at a boundary (vs fine-tuning)?"]
    assert dip.value == pytest.approx(-0.2)
    ewc = rows["does ewc reduce the velocity spike at a boundary (vs fine-tuning)?"]
    assert ewc.value == pytest.approx(0.0) and ewc.low < 0 < ewc.high
    assert "no effect resolved" in ewc.note
    lwf = rows["does lwf reduce the velocity spike at a boundary (vs fine-tuning)?"]
    assert lwf.holds == "untested" and "no ok lwf runs" in lwf.note


def test_rows_do_not_depend_on_the_order_of_the_runs():
    rows = two_task_runs()
    shuffled = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    a = continual.questions(summary(rows), {})
    b = continual.questions(summary(shuffled), {})
    assert [(r.claim, r.value, r.low, r.high, r.n) for r in a] == \
        [(r.claim, r.value, r.low, r.high, r.n) for r in b]


def test_a_growing_measure_along_a_sequence_has_rho_one():
    rows = [("finetune", s, 5, [1.0, 2.0, 3.0, 4.0 + s], [0.4, 0.3, 0.2, 0.1], [0.5] * 4)
            for s in range(3)]
    found = by_question(continual.question_sequence(summary(rows)))
    spike = found["along a sequence of ≥ 3 tasks, does the velocity spike grow or shrink?"]
    assert spike.value == pytest.approx(1.0) and spike.n == 3 and "it grows" in spike.note
    dip = found["along a sequence of ≥ 3 tasks, does the norm dip grow or shrink?"]
    assert dip.value == pytest.approx(-1.0) and "shrinks" in dip.note
    assert "median per boundary: 1: 1, 2: 2, 3: 3" in spike.note


def test_two_task_runs_leave_the_sequence_questions_untested():
    found = continual.question_sequence(summary(two_task_runs()))
    assert [r.holds for r in found] == ["untested", "untested"]


def test_the_prediction_row_is_spearman_over_run_boundary_pairs():
    rows = [("finetune", s, 3, [1.0 + s, 2.0 + s], [0.1, 0.1], [0.1 * (1 + s), 0.1 * (2 + s)])
            for s in range(4)]
    (row,) = continual.question_prediction(summary(rows))
    assert row.value == pytest.approx(1.0) and row.n == 8
    assert row.holds == "measured" and "a larger spike goes with more forgetting" in row.note


def test_without_its_measures_every_question_is_untested():
    ds = summary(two_task_runs()).drop_vars(["boundary_spike", "boundary_dip"])
    rows = continual.questions(ds, {})
    assert len(rows) == 9 and {r.holds for r in rows} == {"untested"}
