"""Tests of ntkpipe.metrics: CKA, distance, spectral norm, velocity, alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ntkpipe import metrics as m


def _psd(n: int, rank: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, rank))
    return x @ x.T


K0 = _psd(6, 4, 0)
K1 = _psd(6, 4, 1)


def _h(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def _cka_explicit(k: np.ndarray, l: np.ndarray) -> float:
    """CKA with an explicit centering matrix (independent of metrics.center)."""
    h = _h(len(k))
    a, b = h @ k @ h, h @ l @ h
    return float(np.trace(a @ b.T) / math.sqrt(np.trace(a @ a.T) * np.trace(b @ b.T)))


# ---- CKA and distance ---------------------------------------------------------------------

@pytest.mark.parametrize("centered", [True, False])
def test_cka_self_and_positive_multiple_is_one(centered):
    assert m.cka(K0, K0, centered) == pytest.approx(1.0, abs=1e-12)
    assert m.cka(K0, 3.7 * K0, centered) == pytest.approx(1.0, abs=1e-12)
    assert m.cka(K0, -2.0 * K0, centered) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("centered", [True, False])
def test_cka_invariant_to_isotropic_scaling(centered):
    base = m.cka(K0, K1, centered)
    assert m.cka(2.5 * K0, 0.1 * K1, centered) == pytest.approx(base, rel=1e-12)
    assert m.cka(K1, K0, centered) == pytest.approx(base, rel=1e-12)  # symmetric
    assert -1 <= base <= 1 and abs(base) < 0.999


def test_cka_hand_case():
    """K = e1e1ᵀ, L = e2e2ᵀ on N = 3: centred vectors h1 = (2,-1,-1)/3, h2 = (-1,2,-1)/3,
    CKA = (h1·h2)² / (|h1|²|h2|²) = (1/9) / (4/9) = 1/4; the uncentred cosine is 0."""
    k = np.diag([1.0, 0.0, 0.0])
    l = np.diag([0.0, 1.0, 0.0])
    assert m.cka(k, l) == pytest.approx(0.25, abs=1e-14)
    assert m.cka(k, l, centered=False) == pytest.approx(0.0, abs=1e-12)


def test_cka_matches_explicit_centering_matrix():
    for seed in range(5):
        k, l = _psd(7, 3, 10 + seed), _psd(7, 5, 20 + seed)
        assert m.cka(k, l) == pytest.approx(_cka_explicit(k, l), rel=1e-12)


def test_center_matches_hkh_on_a_stack():
    stack = np.stack([K0, K1, K0 + 5])
    h = _h(6)
    np.testing.assert_allclose(m.center(stack), [h @ k @ h for k in stack], atol=1e-12)


def test_centered_and_uncentered_differ_on_constant_offset():
    shifted = K0 + 4.0 * np.ones_like(K0)
    # the offset is removed by centering ...
    assert m.cka(K0, shifted) == pytest.approx(1.0, abs=1e-12)
    # ... but not by the uncentred cosine of Fort et al., which is the plain cosine
    cosine = np.sum(K0 * shifted) / (np.linalg.norm(K0) * np.linalg.norm(shifted))
    assert m.cka(K0, shifted, centered=False) == pytest.approx(cosine, rel=1e-12)
    assert cosine < 0.99


def test_cka_of_a_zero_kernel_is_nan():
    assert math.isnan(m.cka(np.zeros((3, 3)), K0[:3, :3]))
    assert math.isnan(m.cka(np.ones((3, 3)), K0[:3, :3]))  # constant: zero after centering


@pytest.mark.parametrize("centered", [True, False])
def test_kernel_distance_is_one_minus_cka(centered):
    assert m.kernel_distance(K0, K1, centered) == pytest.approx(1 - m.cka(K0, K1, centered),
                                                                abs=1e-15)
    assert m.kernel_distance(K0, 2 * K0, centered) == pytest.approx(0.0, abs=1e-12)
    # hand case: 1 − 1/4
    assert m.kernel_distance(np.diag([1.0, 0, 0]), np.diag([0, 1.0, 0])) == pytest.approx(0.75)


def test_distances_to_matches_pairwise_distance():
    stack = np.stack([K0, K1, 2 * K0, K0 + K1])
    for centered in (True, False):
        expected = [m.kernel_distance(K0, k, centered) for k in stack]
        np.testing.assert_allclose(m.distances_to(stack, K0, centered), expected, atol=1e-12)


# ---- spectral norm ------------------------------------------------------------------------

def test_spectral_norm_hand_case_and_cross_check():
    assert m.spectral_norm(np.array([[2.0, 1.0], [1.0, 2.0]])) == pytest.approx(3.0)
    for k in (K0, K1):
        assert m.spectral_norm(k) == pytest.approx(scipy.linalg.eigh(k, eigvals_only=True)[-1],
                                                   rel=1e-12)
        assert m.spectral_norm(k) == pytest.approx(np.linalg.norm(k, 2), rel=1e-10)


def test_spectral_norms_batched_equals_single_and_nan_for_non_finite():
    bad_nan, bad_inf = K0.copy(), K1.copy()
    bad_nan[1, 2] = np.nan
    bad_inf[0, 0] = np.inf
    stack = np.stack([K0, bad_nan, K1, bad_inf, 3 * K0])
    out = m.spectral_norms(stack)
    assert out.shape == (5,)
    assert np.isnan(out[1]) and np.isnan(out[3])
    np.testing.assert_allclose(out[[0, 2, 4]], [m.spectral_norm(K0), m.spectral_norm(K1),
                                                3 * m.spectral_norm(K0)], rtol=1e-12)
    assert np.isnan(m.spectral_norms(np.stack([bad_nan]))).all()


def test_spectral_norm_symmetrises():
    k = np.array([[1.0, 2.0], [0.0, 1.0]])  # symmetric part [[1, 1], [1, 1]] → λ_max 2
    assert m.spectral_norm(k) == pytest.approx(2.0)
    assert m.spectral_norms(k[None])[0] == pytest.approx(2.0)


# ---- velocity -----------------------------------------------------------------------------

def test_velocity_zero_for_rescaled_kernels():
    v = m.kernel_velocity(np.stack([K0, K0, 2 * K0]), [0, 1, 3])
    np.testing.assert_allclose(v[:2], [0.0, 0.0], atol=1e-12)
    assert np.isnan(v[2])


def test_velocity_of_orthogonal_after_centering_kernel_is_one_over_dt():
    u = np.array([1.0, -1.0, 0.0, 0.0])   # mean zero
    w = np.array([1.0, 1.0, -2.0, 0.0])   # mean zero, u·w = 0
    a, b = np.outer(u, u) + 1.0, np.outer(w, w) + 5.0  # offsets vanish after centering
    v = m.kernel_velocity(np.stack([a, b]), [10, 14])
    assert v[0] == pytest.approx(1 / 4, abs=1e-12)
    assert np.isnan(v[1])
    # uncentred, the offset makes them similar: less than 1/dt
    vu = m.kernel_velocity(np.stack([a, b]), [10, 14], centered=False)
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert vu[0] == pytest.approx((1 - cos) / 4, rel=1e-12)
    assert vu[0] < 0.25


def test_velocity_matches_pairwise_distances_with_uneven_steps():
    stack = np.stack([_psd(5, 3, s) for s in range(5)])
    steps = np.array([0, 1, 3, 7, 20])
    v = m.kernel_velocity(stack, steps)
    expected = [m.kernel_distance(stack[i], stack[i + 1]) / (steps[i + 1] - steps[i])
                for i in range(4)]
    np.testing.assert_allclose(v[:-1], expected, rtol=1e-10)
    assert np.isnan(v[-1])


def test_velocity_of_a_single_snapshot_is_nan():
    v = m.kernel_velocity(K0[None], [0])
    assert v.shape == (1,) and np.isnan(v[0])


# ---- alignment ----------------------------------------------------------------------------

LABELS = np.array([0, 1, 2, 0, 1, 2])
Y = np.eye(3)[LABELS]


def test_label_kernel_hand_case():
    np.testing.assert_array_equal(m.label_kernel([0, 1, 0]), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(m.label_kernel(LABELS), Y @ Y.T)
    np.testing.assert_array_equal(m.label_kernel(Y), Y @ Y.T)


@pytest.mark.parametrize("centered", [True, False])
def test_alignment_of_the_label_kernel_is_one(centered):
    assert m.kernel_alignment(Y @ Y.T, LABELS, centered) == pytest.approx(1.0, abs=1e-12)
    assert m.kernel_alignment(7 * Y @ Y.T, Y, centered) == pytest.approx(1.0, abs=1e-12)


def test_alignments_batched_equals_single():
    stack = np.stack([K0, Y @ Y.T, K1])
    for centered in (True, False):
        expected = [m.kernel_alignment(k, LABELS, centered) for k in stack]
        np.testing.assert_allclose(m.alignments(stack, LABELS, centered), expected, atol=1e-12)
        np.testing.assert_allclose(m.alignments(stack, Y, centered), expected, atol=1e-12)
    assert m.alignments(stack, LABELS)[1] == pytest.approx(1.0)
    assert m.kernel_alignment(K0, LABELS) == pytest.approx(_cka_explicit(K0, Y @ Y.T), rel=1e-12)


def test_target_alignment_hand_case():
    k = np.array([[2.0, 1.0], [1.0, 3.0]])
    # yᵀKy = 2 − 1 − 1 + 3 = 3, ‖K‖_F = √15, ‖y‖² = 2
    assert m.target_alignment(k, np.array([1.0, -1.0])) == pytest.approx(3 / (2 * math.sqrt(15)))
    # two columns: Σ_c y_cᵀKy_c = tr K = 5, ‖Y‖² = 2
    assert m.target_alignment(k, np.eye(2)) == pytest.approx(5 / (2 * math.sqrt(15)))
    # K = yyᵀ is perfectly aligned
    y = np.array([1.0, 2.0, -1.0])
    assert m.target_alignment(np.outer(y, y), y) == pytest.approx(1.0)


def test_numpy_and_torch_inputs_agree():
    tk0, tk1 = torch.from_numpy(K0), torch.from_numpy(K1)
    stack = np.stack([K0, K1, 2 * K0])
    tstack = torch.from_numpy(stack).requires_grad_(True)  # detach is handled
    assert m.cka(tk0, tk1) == m.cka(K0, K1)
    assert m.cka(tk0, tk1, centered=False) == m.cka(K0, K1, centered=False)
    assert m.spectral_norm(tk0) == m.spectral_norm(K0)
    np.testing.assert_array_equal(m.spectral_norms(tstack), m.spectral_norms(stack))
    np.testing.assert_array_equal(m.kernel_velocity(tstack, torch.tensor([0, 1, 2])),
                                  m.kernel_velocity(stack, [0, 1, 2]))
    np.testing.assert_array_equal(m.alignments(tstack, torch.from_numpy(LABELS)),
                                  m.alignments(stack, LABELS))
    assert m.target_alignment(tk0, torch.from_numpy(Y)) == m.target_alignment(K0, Y)
    assert m.as_array(torch.ones(2, dtype=torch.float32)).dtype == np.float64


def test_full_to_matrix_ordering():
    n, mm, o, p = 2, 3, 2, 4
    k = np.zeros((n, mm, o, p))
    for i, j, a, b in np.ndindex(k.shape):
        k[i, j, a, b] = 1000 * i + 100 * j + 10 * a + b
    mat = m.full_to_matrix(k)
    assert mat.shape == (n * o, mm * p)
    for i, j, a, b in np.ndindex(k.shape):
        assert mat[i * o + a, j * p + b] == k[i, j, a, b]
    # rows (sample 0, output 1) then (sample 1, output 0)
    np.testing.assert_array_equal(mat[1, :4], [10, 11, 12, 13])
    np.testing.assert_array_equal(mat[2, :4], [1000, 1001, 1002, 1003])


def test_full_matrix_traced_kernel_relation():
    """The traced kernel is the mean of the per-output diagonal blocks of the full matrix."""
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(4, 3, 11))  # (sample, output, parameter)
    full = np.einsum("iap,jbp->ijab", jac, jac)
    mat = m.full_to_matrix(full)
    flat = jac.reshape(12, 11)
    np.testing.assert_allclose(mat, flat @ flat.T, atol=1e-12)
    traced = np.mean([mat[a::3, a::3] for a in range(3)], axis=0)
    np.testing.assert_allclose(traced, np.einsum("ijaa->ij", full) / 3, atol=1e-12)


def test_batched_top_eigen_and_target_alignment_match_single_kernel_forms():
    from ntkpipe import metrics as m

    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 6, 6))
    stack = a @ a.transpose(0, 2, 1)
    stack[1, 0, 0] = np.nan
    y = np.eye(3)[rng.integers(0, 3, 6)]
    values, aligns = m.eigen_alignment_stack(stack, y, 2)
    top, align = values[:, 0], aligns[:, 0]
    target = m.target_alignments(stack, y)
    for t in (0, 2):
        vals, vecs = np.linalg.eigh(stack[t])
        assert top[t] == pytest.approx(vals[-1])
        assert align[t] == pytest.approx(((vecs[:, -1] @ y) ** 2).sum() / (y * y).sum())
        assert values[t, 1] == pytest.approx(vals[-2])
        assert aligns[t, 1] == pytest.approx(((vecs[:, -2] @ y) ** 2).sum() / (y * y).sum())
        assert target[t] == pytest.approx(m.target_alignment(stack[t], y))
    assert np.isnan(top[1]) and np.isnan(align[1])
