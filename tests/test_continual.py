"""Backward transfer and forgetting from the accuracy matrix, on hand-computed cases."""

import numpy as np
import pytest

from ntkpipe.continual import backward_transfer, forgetting

# R[j, i]: accuracy on task i after training tasks 1..j+1; a fourth, never-trained task's column
R = np.array([[0.90, 0.10, 0.00, 0.3],
              [0.95, 0.80, 0.20, 0.3],
              [0.50, 0.85, 0.95, 0.3]])


def test_backward_transfer_hand_case():
    # ((0.50 − 0.90) + (0.85 − 0.80)) / 2
    assert backward_transfer(R) == pytest.approx(-0.175)


def test_forgetting_takes_the_best_earlier_accuracy():
    # task 1: best 0.95 (after task 2) − 0.50; task 2: 0.80 − 0.85 (it improved)
    assert forgetting(R) == pytest.approx((0.45 - 0.05) / 2)


def test_untrained_columns_do_not_count_and_one_task_has_none():
    assert backward_transfer(R[:, :3]) == pytest.approx(backward_transfer(R))
    assert forgetting(R[:, :3]) == pytest.approx(forgetting(R))
    assert np.isnan(backward_transfer(R[:1])) and np.isnan(forgetting(R[:1]))


def test_no_forgetting_when_nothing_changes():
    flat = np.full((3, 3), 0.7)
    assert backward_transfer(flat) == pytest.approx(0.0)
    assert forgetting(flat) == pytest.approx(0.0)


def test_a_matrix_with_fewer_tasks_than_rows_is_refused():
    with pytest.raises(ValueError, match="accuracy matrix"):
        backward_transfer(np.ones((3, 2)))
