"""Tests of ntkpipe.spectra: spectrum, task spectrum, power-law fits, alignment spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ntkpipe import spectra as s


def _orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q * np.sign(np.diag(r))


def _power_law_problem(n: int, a: float, b: float, seed: int = 0):
    """K = U diag(k^−b) Uᵀ and y with task spectrum (u_k·y)² = k^−a."""
    u = _orthogonal(n, seed)
    k = np.arange(1, n + 1)
    kernel = u @ np.diag(k ** -b) @ u.T
    signs = np.random.default_rng(seed + 1).choice([-1.0, 1.0], size=n)
    y = u @ (signs * k ** (-a / 2))
    return kernel, y


def test_eigen_spectrum_descending_and_reconstructs():
    x = np.random.default_rng(0).normal(size=(7, 4))
    k = x @ x.T
    vals, vecs = s.eigen_spectrum(torch.tensor(k))
    assert np.all(np.diff(vals) <= 0)
    np.testing.assert_allclose(vecs @ np.diag(vals) @ vecs.T, k, atol=1e-12)
    np.testing.assert_allclose(vals, np.sort(np.linalg.eigvalsh(k))[::-1], atol=1e-12)


def test_power_law_fit_recovers_eigen_and_task_exponents():
    a, b = 1.7, 1.3
    kernel, y = _power_law_problem(60, a, b)
    vals, _ = s.eigen_spectrum(kernel)
    fit_b = s.power_law_fit(vals, (1, 40))
    assert fit_b["exponent"] == pytest.approx(b, abs=1e-6)
    assert fit_b["prefactor"] == pytest.approx(1.0, abs=1e-6)
    assert fit_b["r2"] == pytest.approx(1.0, abs=1e-9)
    assert (fit_b["k_min"], fit_b["k_max"], fit_b["points"]) == (1, 40, 40)
    fit_a = s.power_law_fit(s.task_spectrum(kernel, y), (2, 50))
    assert fit_a["exponent"] == pytest.approx(a, abs=1e-6)


def test_power_law_default_range_is_recorded():
    values = np.arange(1, 101, dtype=float) ** -2.0
    fit = s.power_law_fit(values)
    assert (fit["k_min"], fit["k_max"]) == (1, 50)  # capped at n/2
    assert fit["exponent"] == pytest.approx(2.0, abs=1e-10)
    cut = values.copy()
    cut[30:] = 1e-14  # below 1e-10 of the top from k = 31 on
    assert s.default_power_law_range(cut) == (1, 30)


def test_power_law_fit_rejects_bad_range():
    with pytest.raises(ValueError):
        s.power_law_fit(np.ones(5), (3, 3))
    with pytest.raises(ValueError):
        s.power_law_fit(np.zeros(5), (1, 5))


def test_task_spectrum_sums_over_outputs():
    kernel, y = _power_law_problem(12, 1.0, 2.0)
    y2 = np.stack([y, 2 * y], axis=1)
    np.testing.assert_allclose(s.task_spectrum(kernel, y2), 5 * s.task_spectrum(kernel, y),
                               rtol=1e-12)
    assert s.task_spectrum(kernel, y2).sum() == pytest.approx(np.sum(y2 ** 2), rel=1e-12)


def test_alignment_spectrum_bounds_and_normalisation():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 30))
    k = x @ x.T
    y = rng.normal(size=(30, 3))
    lam, a = s.alignment_spectrum(k, y, top=20)
    assert lam.shape == a.shape == (20,)
    assert np.all(a >= 0) and a.sum() <= 1.0
    np.testing.assert_allclose(lam, np.sort(np.linalg.eigvalsh(k))[::-1][:20] / np.linalg.norm(k),
                               rtol=1e-10)
    _, a_all = s.alignment_spectrum(k, y, top=30)
    assert a_all.sum() == pytest.approx(1.0, abs=1e-12)
    assert s.top_eigen_alignment(k, y) == pytest.approx(a[0], rel=1e-12)


def test_top_eigen_alignment_of_target_aligned_kernel():
    y = np.random.default_rng(4).normal(size=10)
    assert s.top_eigen_alignment(np.outer(y, y) + 1e-3 * np.eye(10), y) == \
        pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [40, 300])
def test_top_eigenvalues_match_eigvalsh(n, monkeypatch):
    monkeypatch.setattr(s, "DENSE_MAX_SIZE", 100)  # n = 300 takes the Lanczos path
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 60)) * np.linspace(3, 0.1, 60)
    k = x @ x.T
    expected = np.sort(np.linalg.eigvalsh(k))[::-1][:5]
    assert s._use_lanczos(n, 5) == (n > s.DENSE_MAX_SIZE)
    np.testing.assert_allclose(s.top_eigenvalues(k, 5), expected, rtol=1e-9)
    lam, a = s.alignment_spectrum(k, rng.normal(size=n), top=5)
    np.testing.assert_allclose(lam, expected / np.linalg.norm(k), rtol=1e-9)
    assert np.all(a >= 0)
