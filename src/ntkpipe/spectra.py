"""Eigen-analyses of a kernel: spectrum, task spectrum, power-law fits, eigenvector alignment.

Kernels are symmetric (N, N) Gram matrices (numpy arrays or torch tensors, computed in float64);
targets y are (N,) or (N, O), and quantities over several output columns are summed over them.
Eigenvalues are always returned in descending order, eigenvectors as the matching columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse.linalg import eigsh

from ntkpipe.metrics import as_array

# Below this size a dense eigvalsh is fast and exact; above it, and when only a few of the top
# eigenpairs are asked for, Lanczos (ARPACK) avoids the O(N³) full decomposition.
DENSE_MAX_SIZE = 1024
# Lanczos only pays off while k is a small fraction of N.
LANCZOS_MAX_FRACTION = 0.1
# Default power-law range ends where the values fall below this fraction of the largest one.
POWER_LAW_FLOOR = 1e-10


def _symmetric(k: Any) -> np.ndarray:
    """A float64 square matrix, symmetrised against round-off."""
    k = as_array(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"kernel must be a square (N, N) matrix, got shape {k.shape}")
    return (k + k.T) / 2


def _columns(y: Any, n: int) -> np.ndarray:
    """Targets as an (N, O) float64 matrix."""
    y = as_array(y)
    y = y[:, None] if y.ndim == 1 else y
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"targets must be (N,) or (N, O) with N = {n}, got shape {y.shape}")
    return y


def eigen_spectrum(k: Any) -> tuple[np.ndarray, np.ndarray]:
    """All eigenvalues (descending) of a symmetric kernel and its eigenvectors (columns)."""
    vals, vecs = np.linalg.eigh(_symmetric(k))
    return vals[::-1].copy(), vecs[:, ::-1].copy()


def _use_lanczos(n: int, k: int) -> bool:
    """Whether the top-k eigenpairs of an N×N matrix are cheaper by Lanczos."""
    return n > DENSE_MAX_SIZE and k <= LANCZOS_MAX_FRACTION * n


def top_eigen(k: Any, count: int, *, seed: int = 0, tol: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray]:
    """The `count` largest eigenvalues (descending) of a symmetric kernel and their eigenvectors."""
    mat = _symmetric(k)
    n = len(mat)
    if not 1 <= count <= n:
        raise ValueError(f"count must be in 1..{n}, got {count}")
    if not _use_lanczos(n, count):
        vals, vecs = np.linalg.eigh(mat)
        return vals[::-1][:count].copy(), vecs[:, ::-1][:, :count].copy()
    v0 = np.random.default_rng(seed).standard_normal(n)
    vals, vecs = eigsh(mat, k=count, which="LA", v0=v0, tol=tol)
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def top_eigenvalues(k: Any, count: int, *, seed: int = 0, tol: float = 0.0) -> np.ndarray:
    """The `count` largest eigenvalues of a symmetric kernel, descending."""
    return top_eigen(k, count, seed=seed, tol=tol)[0]


def task_spectrum(k: Any, y: Any) -> np.ndarray:
    """v_k² = Σ_o (u_k · y_o)² for every eigenvector u_k in descending eigenvalue order
    (Shan & Bordelon 2021, docs/science.md §3)."""
    mat = _symmetric(k)
    _, vecs = eigen_spectrum(mat)
    return np.sum((vecs.T @ _columns(y, len(mat))) ** 2, axis=1)


def default_power_law_range(values: Any) -> tuple[int, int]:
    """(1, k_max) with k_max the last 1-based index before the values first fall below
    POWER_LAW_FLOOR × their maximum, capped at N/2 (the tail of a finite spectrum bends)."""
    values = as_array(values)
    n = len(values)
    below = np.flatnonzero(~(values > POWER_LAW_FLOOR * np.max(values)))
    k_max = int(below[0]) if len(below) else n
    return 1, max(min(k_max, n // 2), min(2, n))


def power_law_fit(values: Any, k_range: tuple[int, int] | None = None) -> dict[str, float]:
    """Least-squares fit of values_k ≈ C k^(−b) on log–log axes over 1-based k in
    [k_min, k_max] (default `default_power_law_range`); non-positive values are skipped.

    Returns exponent b, prefactor C, the range used, the number of points and r² (log–log).
    """
    values = as_array(values).ravel()
    k_min, k_max = k_range if k_range is not None else default_power_law_range(values)
    if not 1 <= k_min < k_max <= len(values):
        raise ValueError(f"k_range must satisfy 1 <= k_min < k_max <= {len(values)}, "
                         f"got ({k_min}, {k_max})")
    ks = np.arange(k_min, k_max + 1)
    vs = values[k_min - 1:k_max]
    keep = vs > 0
    if keep.sum() < 2:
        raise ValueError(f"fewer than two positive values in k_range ({k_min}, {k_max})")
    # λ_k ∼ k^−b, v_k² ∼ k^−a (Shan & Bordelon 2021; docs/science.md §3): a line in log–log
    lx, ly = np.log(ks[keep]), np.log(vs[keep])
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (slope * lx + intercept)
    total = np.sum((ly - ly.mean()) ** 2)
    r2 = 1.0 - np.sum(resid ** 2) / total if total > 0 else 1.0
    return {"exponent": float(-slope), "prefactor": float(np.exp(intercept)),
            "k_min": int(k_min), "k_max": int(k_max), "points": int(keep.sum()),
            "r2": float(r2)}


def alignment_spectrum(k: Any, y: Any, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(λ_i / ‖K‖_F, a_i) for the `top` leading eigenvectors, a_i = Σ_o (u_iᵀ y_o)² / ‖y‖_F²
    (Jiang, Cohen & Li 2025, docs/science.md §2: the eigenvector alignment spectrum)."""
    mat = _symmetric(k)
    y = _columns(y, len(mat))
    vals, vecs = top_eigen(mat, min(top, len(mat)))
    return vals / np.linalg.norm(mat), np.sum((vecs.T @ y) ** 2, axis=1) / np.sum(y * y)


def top_eigen_alignment(k: Any, y: Any) -> float:
    """a_1 = (u_1ᵀ y)² / ‖y‖² for the leading eigenvector u_1 (summed over output columns)."""
    return float(alignment_spectrum(k, y, top=1)[1][0])
