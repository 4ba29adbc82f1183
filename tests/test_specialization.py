"""Tests of ntkpipe.specialization: KSM, per-layer class alignment, effective γ."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from ntkpipe import specialization as sp
from ntkpipe.metrics import target_alignment

O = 4
LABELS = np.repeat(np.arange(O), 5)[np.random.default_rng(0).permutation(5 * O)]
Y = np.eye(O)[LABELS]
N = len(LABELS)


def _psd(n: int, rank: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, rank))
    return x @ x.T


def test_class_alignments_match_metrics_target_alignment():
    ks = np.stack([_psd(N, 6, s) for s in range(3)])
    a = sp.class_alignments(ks, Y)
    assert a.shape == (3, O)
    for b in range(3):
        for c in range(O):
            assert a[b, c] == pytest.approx(target_alignment(ks[b], Y[:, c]), rel=1e-12)


def test_ksm_of_specialised_blocks_is_diagonal_dominant():
    blocks = np.stack([np.outer(Y[:, c], Y[:, c]) + 0.1 * np.eye(N) for c in range(O)])
    ksm = sp.kernel_specialization(blocks, Y)
    assert ksm.shape == (O, O)
    off = ~np.eye(O, dtype=bool)
    assert np.all(np.diag(ksm) > ksm[off].max())
    np.testing.assert_allclose(ksm.mean(axis=0), 1.0, rtol=1e-12)  # normalised per target
    assert sp.diagonal_dominance(ksm) > 1.0
    # by hand: A(Θ^cc, y^c') = (δ m² + ε m) / (‖Θ^cc‖_F m), m = 5 per class, ε = 0.1
    norm = math.sqrt(25 + 2 * 5 * 0.1 + N * 0.01)
    a_diag, a_off = (25 + 0.5) / (norm * 5), 0.5 / (norm * 5)
    mean = (a_diag + (O - 1) * a_off) / O
    assert ksm[0, 0] == pytest.approx(a_diag / mean, rel=1e-12)
    assert ksm[1, 0] == pytest.approx(a_off / mean, rel=1e-12)


def test_ksm_of_identical_blocks_is_flat():
    k = _psd(N, 8, 3)
    ksm = sp.kernel_specialization(torch.tensor(np.stack([k] * O)), LABELS)  # class indices
    np.testing.assert_allclose(ksm, np.ones((O, O)), rtol=1e-12)
    assert sp.diagonal_dominance(ksm) == pytest.approx(0.0, abs=1e-12)


def test_ksm_rejects_mismatched_outputs():
    with pytest.raises(ValueError):
        sp.kernel_specialization(np.stack([np.eye(N)] * (O - 1)), Y)


def test_layer_alignment_readout_aligns_with_all_hidden_specialises():
    readout = Y @ Y.T + 0.05 * np.eye(N)  # aligned with every class target
    hidden = np.outer(Y[:, 2], Y[:, 2]) + 0.05 * np.eye(N)  # only with class 2
    a = sp.layer_alignment(np.stack([hidden, readout]), Y)
    assert a.shape == (2, O)
    assert np.ptp(a[1]) == pytest.approx(0.0, abs=1e-12)  # balanced classes: all equal
    assert int(np.argmax(a[0])) == 2 and a[0, 2] > 5 * np.delete(a[0], 2).max()
    m = 5
    assert a[0, 2] == pytest.approx((m * m + 0.05 * m) / (np.linalg.norm(hidden) * m),
                                    rel=1e-12)


@pytest.mark.parametrize("gamma", [1e-3, 0.1, 0.7, 3.0, 25.0])
@pytest.mark.parametrize("target", ["vector", "one_hot"])
def test_effective_gamma_recovers_gamma(gamma, target):
    y = np.random.default_rng(4).normal(size=N) if target == "vector" else Y
    k0 = 37.0 * _psd(N, 10, 5)  # arbitrary scale: γ is defined after K0 → K0/‖K0‖_F
    t = np.outer(y, y) if y.ndim == 1 else y @ y.T
    k_inf = 0.2 * (k0 / np.linalg.norm(k0) + gamma * t)  # A is scale-free in K_∞
    assert sp.effective_gamma(k0, k_inf, y) == pytest.approx(gamma, rel=1e-8)
    assert sp.gamma_alignment(k0, y, gamma) == pytest.approx(
        float(np.sum(k_inf * t) / (np.linalg.norm(k_inf) * np.linalg.norm(t))), rel=1e-12)


def test_effective_gamma_solves_science_equation_as_written():
    """Cross-check the closed form against brentq on the formula of science.md §3."""
    rng = np.random.default_rng(6)
    y, k0 = rng.normal(size=N), _psd(N, 12, 7)
    k0n = k0 / np.linalg.norm(k0)
    k_inf = k0 + 4.0 * np.outer(y, y) + 0.3 * _psd(N, 3, 8)
    a_inf = target_alignment(k_inf, y)
    yky, yy = y @ k0n @ y, y @ y

    def rhs(g: float) -> float:
        return (yky + g * yy ** 2) / (yy * math.sqrt(1 + 2 * g * yky + g ** 2 * yy ** 2))

    root = scipy.optimize.brentq(lambda g: rhs(g) - a_inf, 0.0, 1e6, xtol=1e-15, rtol=1e-14)
    assert sp.effective_gamma(k0, k_inf, y) == pytest.approx(root, rel=1e-9)
    assert rhs(root) == pytest.approx(sp.gamma_alignment(k0, y, root), rel=1e-12)


def test_effective_gamma_limits():
    y, k0 = np.random.default_rng(9).normal(size=N), _psd(N, 10, 10)
    assert sp.effective_gamma(k0, 3 * k0, y) == pytest.approx(0.0, abs=1e-12)
    off_target = np.eye(N) - np.outer(y, y) / (y @ y)  # adds norm, not yᵀKy
    assert sp.effective_gamma(k0, k0 + 5 * off_target, y) == pytest.approx(0.0, abs=1e-12)
    assert sp.effective_gamma(k0, np.outer(y, y), y) == math.inf


def test_gamma_reproduces_the_reported_target_cosine():
    """A(K0/‖K0‖ + γ yyᵀ) with the solved γ equals the target cosine of K_∞ (the alignment the
    metrics stage reports beside γ)."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((12, 6))
    k0 = a @ a.T
    y = np.eye(3)[rng.integers(0, 3, 12)]
    k_inf = k0 / np.linalg.norm(k0) + 0.02 * y @ y.T
    gamma = sp.effective_gamma(k0, k_inf, y)
    rebuilt = k0 / np.linalg.norm(k0) + gamma * y @ y.T
    assert sp.target_cosine(rebuilt, y) == pytest.approx(sp.target_cosine(k_inf, y), rel=1e-10)
    assert sp.target_cosine(y @ y.T, y) == pytest.approx(1.0)
