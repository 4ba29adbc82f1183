"""Tests of ntkpipe.splits: class-incremental, conceptual and frequency shifts, probe sets."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from ntkpipe import splits
from ntkpipe.splits import SplitError, TaskSplit, make_tasks

NUM_CLASSES = 10


def _labels(per_class: int, seed: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Shuffled labels with exactly `per_class` samples of every class."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


TRAIN = _labels(20, seed=100)
TEST = _labels(8, seed=200)


def _tasks(**kw) -> TaskSplit:
    args = dict(classes_per_task=5, probe_size=10)
    args.update(kw)
    return make_tasks(TRAIN, TEST, NUM_CLASSES, **args)


def _class_counts(labels: np.ndarray, idx: np.ndarray, classes: list[int]) -> list[int]:
    return [int(np.sum(labels[idx] == c)) for c in classes]


# ---- class-incremental and conceptual shifts ---------------------------------------------

def test_class_incremental_natural_order_gives_consecutive_disjoint_tasks():
    split = _tasks(shared_classes=0, alpha=0.0, n_tasks=2, order="natural")
    assert split.classes == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert split.similarity == [0.0]
    for idx, cls in zip(split.train, split.classes):
        assert set(TRAIN[idx]) == set(cls)
        # size=None: every sample the balanced task can have (20 per class here), no duplicates
        assert _class_counts(TRAIN, idx, cls) == [20] * 5
        assert len(np.unique(idx)) == len(idx) == 100
    assert not set(split.train[0]) & set(split.train[1])
    assert split.with_replacement == [False, False]


@pytest.mark.parametrize("k, expected", [(0, Fraction(0)), (1, Fraction(1, 9)), (2, Fraction(2, 8)),
                                         (3, Fraction(3, 7)), (4, Fraction(4, 6)), (5, Fraction(1))])
def test_conceptual_shift_keeps_exactly_k_classes_and_jaccard(k, expected):
    split = _tasks(shared_classes=k, seed=3)
    task1, task2 = split.classes
    assert task1 == [0, 1, 2, 3, 4]
    kept = [c for c in task2 if c in task1]
    assert len(kept) == k
    # kept classes first, in task-1 order; then fresh classes in the natural order
    assert task2[:k] == kept and kept == sorted(kept)
    assert task2[k:] == list(range(5, 5 + 5 - k))
    assert len(set(task2)) == 5
    assert split.similarity[0] == pytest.approx(float(expected), abs=1e-15)
    assert splits.jaccard(task1, task2) == pytest.approx(k / (2 * 5 - k), abs=1e-15)
    assert set(TRAIN[split.train[1]]) == set(task2)


def test_jaccard_hand_cases():
    assert splits.jaccard([0, 1, 2], [2, 3, 4]) == pytest.approx(1 / 5)
    assert splits.jaccard([0, 1], [1, 0]) == pytest.approx(1.0)
    assert splits.jaccard([0], [1]) == pytest.approx(0.0)


@pytest.mark.parametrize("order", ["natural", "shuffled"])
def test_task1_identical_whatever_the_shift(order):
    """One phase-1 run serves every shift: task 1 does not depend on k, alpha or n_tasks."""
    ref = _tasks(shared_classes=0, alpha=0.0, n_tasks=2, order=order, seed=7)
    variants = [dict(shared_classes=k, alpha=0.0, n_tasks=2) for k in range(6)]
    variants += [dict(shared_classes=5, alpha=a, n_tasks=2) for a in (0.25, 0.5, 1.0)]
    variants += [dict(shared_classes=k, alpha=0.0, n_tasks=3) for k in (3, 4, 5)]
    variants += [dict(shared_classes=5, alpha=0.5, n_tasks=4)]
    for v in variants:
        other = _tasks(order=order, seed=7, **v)
        assert other.classes[0] == ref.classes[0], v
        np.testing.assert_array_equal(other.train[0], ref.train[0])
        np.testing.assert_array_equal(other.probe[1], ref.probe[1])
        np.testing.assert_array_equal(other.proportions[0], np.full(5, 0.2))


def test_sequence_of_four_tasks_sharing_one_class():
    split = make_tasks(TRAIN, TEST, NUM_CLASSES, classes_per_task=2, shared_classes=1,
                       n_tasks=4, probe_size=4, probe_tasks=(1, 2, 3, 4), seed=1)
    assert len(split.classes) == len(split.train) == len(split.proportions) == 4
    assert split.classes[0] == [0, 1]
    # every later task keeps one class of its predecessor and adds the next unused class
    for t in range(1, 4):
        prev, cur = split.classes[t - 1], split.classes[t]
        assert cur[0] in prev and cur[1] == t + 1
    assert split.similarity == pytest.approx([1 / 3] * 3)
    assert sorted({c for cls in split.classes for c in cls}) == [0, 1, 2, 3, 4]
    assert sorted(split.probe) == [1, 2, 3, 4]
    for t, idx in split.probe.items():
        assert set(TEST[idx]) == set(split.classes[t - 1])


def test_three_disjoint_tasks_and_probe_tasks_beyond_the_sequence_are_skipped():
    split = make_tasks(TRAIN, TEST, NUM_CLASSES, classes_per_task=3, n_tasks=3, probe_size=6,
                       probe_tasks=(1, 3, 7))
    assert split.classes == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert sorted(split.probe) == [1, 3]
    assert split.similarity == [0.0, 0.0]


# ---- frequency shift -----------------------------------------------------------------------

def test_frequency_profile_hand_case():
    # imbalance 4 over 3 classes: weights 1, 1/2, 1/4 → 4/7, 2/7, 1/7
    np.testing.assert_allclose(splits.frequency_profile(3, 4.0), [4 / 7, 2 / 7, 1 / 7], rtol=1e-14)
    np.testing.assert_array_equal(splits.frequency_profile(1, 8.0), [1.0])


@pytest.mark.parametrize("num, imbalance", [(2, 3.0), (5, 8.0), (10, 100.0)])
def test_frequency_profile_is_geometric_with_the_imbalance_ratio(num, imbalance):
    p = splits.frequency_profile(num, imbalance)
    assert p.sum() == pytest.approx(1.0, abs=1e-14)
    assert p.max() / p.min() == pytest.approx(imbalance, rel=1e-12)
    np.testing.assert_allclose(p[:-1] / p[1:], imbalance ** (1 / (num - 1)), rtol=1e-12)
    assert np.all(np.diff(p) < 0)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_task_proportions_mix_uniform_and_profile(alpha):
    p = splits.task_proportions(5, alpha, 8.0)
    expected = (1 - alpha) * np.full(5, 0.2) + alpha * splits.frequency_profile(5, 8.0)
    np.testing.assert_allclose(p, expected, rtol=0, atol=1e-15)
    assert p.sum() == pytest.approx(1.0, abs=1e-14)


def test_task_proportions_hand_case():
    # 0.5·(1/3) + 0.5·(4/7, 2/7, 1/7) = (19, 13, 10)/42
    np.testing.assert_allclose(splits.task_proportions(3, 0.5, 4.0), np.array([19, 13, 10]) / 42,
                               rtol=1e-14)


SIX = _labels(20, seed=5, num_classes=6)
SIX_TEST = _labels(4, seed=6, num_classes=6)


@pytest.mark.parametrize("alpha, size, counts", [
    (1.0, 14, [8, 4, 2]),     # exact: 14·(4, 2, 1)/7
    (1.0, 10, [6, 3, 1]),     # raw 5.71, 2.86, 1.43 → floors 5, 2, 1; the two largest remainders +1
    (0.5, 42, [19, 13, 10]),  # exact: 42·(19, 13, 10)/42
    (0.0, 10, [4, 3, 3]),     # uniform; the remainder goes to the first class
])
def test_frequency_shift_realised_counts_match_largest_remainder(alpha, size, counts):
    split = make_tasks(SIX, SIX_TEST, 6, classes_per_task=3, shared_classes=3, alpha=alpha,
                       imbalance=4.0, train_per_task=size, probe_size=3, seed=2)
    assert split.classes[1] == split.classes[0] == [0, 1, 2]
    assert split.similarity == [1.0]
    np.testing.assert_allclose(split.proportions[1], splits.task_proportions(3, alpha, 4.0))
    assert _class_counts(SIX, split.train[1], split.classes[1]) == counts
    assert len(split.train[1]) == size
    assert np.all(np.diff(split.train[1]) >= 0)  # sorted
    assert split.with_replacement == [False, False]
    # task 1 is always uniform
    np.testing.assert_allclose(split.proportions[0], np.full(3, 1 / 3))
    uniform = [size // 3 + (i < size % 3) for i in range(3)]  # remainder to the first classes
    assert _class_counts(SIX, split.train[0], split.classes[0]) == uniform


def test_largest_remainder_against_exact_fractions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random(7)
        p /= p.sum()
        total = int(rng.integers(1, 500))
        counts = splits._largest_remainder(p, total)
        assert counts.sum() == total
        assert np.all(np.abs(counts - p * total) < 1)


def test_frequency_shift_draws_with_replacement_when_a_class_runs_short():
    labels = np.repeat(np.arange(3), 4)  # 4 samples per class
    with pytest.raises(SplitError, match="train_per_task is 14 but task 1 has only 12"):
        make_tasks(labels, labels, 3, classes_per_task=3, shared_classes=3, alpha=1.0,
                   imbalance=4.0, train_per_task=14, probe_size=3, seed=0)
    split = make_tasks(labels, labels, 3, classes_per_task=3, shared_classes=3, alpha=1.0,
                       imbalance=4.0, train_per_task=14, probe_size=3, seed=0,
                       with_replacement=True)
    assert split.with_replacement == [True, True]
    # task 1 (uniform, 14 → 5, 5, 4) and task 2 (8, 4, 2) both need more than 4 of a class
    assert _class_counts(labels, split.train[1], [0, 1, 2]) == [8, 4, 2]
    assert _class_counts(labels, split.train[0], [0, 1, 2]) == [5, 5, 4]


# ---- probe sets ------------------------------------------------------------------------------

def test_probe_set_class_balanced_from_held_out_remainder_to_first_classes():
    split = _tasks(probe_size=12, shared_classes=2, seed=4)
    for t in (1, 2):
        idx = split.probe[t]
        cls = split.classes[t - 1]
        assert len(idx) == 12 and len(np.unique(idx)) == 12
        assert idx.max() < len(TEST)
        # labels are those of the *held-out* array: 12 = 3 + 3 + 2 + 2 + 2
        assert _class_counts(TEST, idx, cls) == [3, 3, 2, 2, 2]
        # grouped by class in task order, sorted within a class
        np.testing.assert_array_equal(TEST[idx], np.repeat(cls, [3, 3, 2, 2, 2]))
        for c in cls:
            part = idx[TEST[idx] == c]
            assert np.all(np.diff(part) > 0)


def test_probe_set_may_use_every_held_out_sample():
    split = _tasks(probe_size=40)  # 8 held-out samples of each of 5 classes
    np.testing.assert_array_equal(np.sort(split.probe[1]), np.flatnonzero(TEST < 5))


# ---- determinism -----------------------------------------------------------------------------

def _assert_same(a: TaskSplit, b: TaskSplit) -> None:
    assert a.classes == b.classes
    assert a.with_replacement == b.with_replacement
    for x, y in zip(a.train, b.train):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.proportions, b.proportions):
        np.testing.assert_array_equal(x, y)
    assert a.probe.keys() == b.probe.keys()
    for t in a.probe:
        np.testing.assert_array_equal(a.probe[t], b.probe[t])


def test_same_seed_same_split():
    kw = dict(shared_classes=2, alpha=0.0, order="shuffled", seed=11, train_per_task=50)
    _assert_same(_tasks(**kw), _tasks(**kw))


def test_shuffled_order_differs_across_seeds_natural_does_not():
    a = _tasks(order="shuffled", seed=0)
    b = _tasks(order="shuffled", seed=1)
    assert a.classes != b.classes
    assert sorted(a.classes[0] + a.classes[1]) == list(range(10))
    assert splits.class_order(10, "shuffled", 0) == splits.class_order(10, "shuffled", 0)
    assert sorted(splits.class_order(10, "shuffled", 3)) == list(range(10))
    assert splits.class_order(10, "natural", 0) == splits.class_order(10, "natural", 9) \
        == list(range(10))
    # with the natural order the seed still changes which samples are drawn
    c, d = _tasks(seed=0, train_per_task=50), _tasks(seed=1, train_per_task=50)
    assert c.classes == d.classes
    assert not np.array_equal(c.train[0], d.train[0])
    assert not np.array_equal(c.probe[1], d.probe[1])


def test_class_order_rejects_unknown_mode():
    with pytest.raises(ValueError, match="class_order"):
        splits.class_order(10, "random", 0)


# ---- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [6, -1])
def test_shared_classes_out_of_range(k):
    with pytest.raises(SplitError, match="shared_classes"):
        _tasks(shared_classes=k)


def test_too_many_tasks_for_the_classes():
    # 3 tasks of 5 sharing 0 need 15 classes
    with pytest.raises(SplitError, match=r"need 15 classes.*has 10"):
        _tasks(n_tasks=3)
    # sharing 3, they need 9: fine
    assert len(_tasks(n_tasks=3, shared_classes=3).classes) == 3


def test_probe_larger_than_held_out():
    with pytest.raises(SplitError, match="probe.size 41"):
        _tasks(probe_size=41)


def test_alpha_out_of_range():
    with pytest.raises(SplitError, match="alpha"):
        _tasks(shared_classes=5, alpha=1.5)


def test_split_error_is_a_value_error():
    assert issubclass(SplitError, ValueError)


# ---- serialisation ---------------------------------------------------------------------------

def test_task_split_round_trip_through_npz(tmp_path):
    split = make_tasks(TRAIN, TEST, NUM_CLASSES, classes_per_task=3, shared_classes=1,
                       alpha=0.0, n_tasks=3, probe_size=6, probe_tasks=(1, 2, 3), seed=5)
    arrays = split.to_arrays()
    assert arrays["classes"].shape == (3, 3)
    np.testing.assert_allclose(arrays["similarity"], [1 / 5, 1 / 5])
    np.savez(tmp_path / "split.npz", **arrays)
    with np.load(tmp_path / "split.npz") as f:
        back = TaskSplit.from_arrays(dict(f))
    _assert_same(split, back)
    assert back.similarity == split.similarity
    assert all(isinstance(c, int) for cls in back.classes for c in cls)


def test_task_class_without_training_samples():
    train = TRAIN[TRAIN != 7]
    with pytest.raises(SplitError, match="no training samples"):
        make_tasks(train, TEST, NUM_CLASSES, classes_per_task=5, probe_size=5)


def test_probe_task_numbers_are_one_based():
    with pytest.raises(SplitError, match="probe"):
        _tasks(probe_tasks=(0, 1))
