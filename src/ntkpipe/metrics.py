"""Pure functions on kernels: spectral norm, CKA, kernel distance, velocity, alignment.

Kernels are (N, N) Gram matrices, or stacks (S, N, N) for the batched forms; numpy arrays and
torch tensors are both accepted and computed in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_array(k: Any) -> np.ndarray:
    """A float64 numpy copy of an array or tensor."""
    if hasattr(k, "detach"):
        k = k.detach().cpu().numpy()
    return np.asarray(k, dtype=np.float64)


def full_to_matrix(k: Any) -> np.ndarray:
    """The (N·O, N·O) matrix of a full (N, N, O, O) kernel, rows ordered (sample, output)."""
    k = as_array(k)
    n, m, o, p = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n * o, m * p)


def center(k: Any) -> np.ndarray:
    """H K H with H = I − 11ᵀ/N; works on (N, N) and on stacks (..., N, N)."""
    k = as_array(k)
    k = k - k.mean(axis=-1, keepdims=True)
    return k - k.mean(axis=-2, keepdims=True)


def spectral_norm(k: Any) -> float:
    """λ_max of a symmetric PSD kernel, ‖K‖₂."""
    k = as_array(k)
    return float(np.linalg.eigvalsh((k + k.T) / 2)[-1])


def cka(k: Any, l: Any, centered: bool = True) -> float:
    """Linear CKA ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F) (Kornblith et al. 2019, eq. 4); with
    centered=False the uncentered cosine of Fort et al. 2020."""
    k, l = (center(k), center(l)) if centered else (as_array(k), as_array(l))
    denom = np.linalg.norm(k) * np.linalg.norm(l)
    return float(np.sum(k * l) / denom) if denom > 0 else float("nan")


def kernel_distance(k: Any, l: Any, centered: bool = True) -> float:
    """S(K, L) = 1 − CKA(K, L) (Fort et al. 2020, eq. 3, centered by default)."""
    return 1.0 - cka(k, l, centered)


def label_kernel(labels: Any, num_outputs: int | None = None) -> np.ndarray:
    """YYᵀ of one-hot labels (labels given as class indices or already one-hot)."""
    y = as_array(labels)
    if y.ndim == 1:
        y = np.eye(num_outputs or int(y.max()) + 1)[y.astype(int)]
    return y @ y.T


def kernel_alignment(k: Any, y: Any, centered: bool = True) -> float:
    """A = CKA(K, YYᵀ) with one-hot Y (labels as indices or one-hot rows)."""
    return cka(k, label_kernel(y), centered)


def target_alignment(k: Any, y: Any) -> float:
    """yᵀKy / (‖K‖_F ‖y‖²), summed over output columns of y (Shan & Bordelon 2021, eq. 5)."""
    k, y = as_array(k), as_array(y)
    y = y[:, None] if y.ndim == 1 else y
    return float(np.trace(y.T @ k @ y) / (np.linalg.norm(k) * np.sum(y * y)))


# ---- batched over snapshots -------------------------------------------------------------

def _unit_stack(kernels: Any, centered: bool) -> np.ndarray:
    ks = center(kernels) if centered else as_array(kernels)
    norms = np.linalg.norm(ks.reshape(len(ks), -1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ks / norms[:, None, None]


def spectral_norms(kernels: Any) -> np.ndarray:
    """λ_max of each kernel of a stack (S, N, N)."""
    ks = as_array(kernels)
    ks = (ks + ks.transpose(0, 2, 1)) / 2
    out = np.full(len(ks), np.nan)
    finite = np.isfinite(ks).all(axis=(1, 2))
    if finite.any():
        out[finite] = np.linalg.eigvalsh(ks[finite])[:, -1]
    return out


def eigen_alignment_stack(kernels: Any, y: Any, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The `top` largest eigenvalues (descending) of each kernel of a stack and the alignment of
    their eigenvectors with the targets, a_i = Σ_o (u_iᵀy_o)² / ‖y‖²: (B, top) each, from one
    eigendecomposition per kernel; NaN rows for non-finite kernels."""
    ks, y = as_array(kernels), as_array(y)
    y = y[:, None] if y.ndim == 1 else y
    ks = (ks + ks.transpose(0, 2, 1)) / 2
    top = min(top, ks.shape[-1])
    values, align = np.full((len(ks), top), np.nan), np.full((len(ks), top), np.nan)
    finite = np.isfinite(ks).all(axis=(1, 2))
    if finite.any():
        vals, vecs = np.linalg.eigh(ks[finite])
        values[finite] = vals[:, ::-1][:, :top]
        proj = np.einsum("bnk,no->bko", vecs[:, :, ::-1][:, :, :top], y)
        align[finite] = (proj ** 2).sum(axis=2) / np.sum(y * y)
    return values, align


def target_alignments(kernels: Any, y: Any) -> np.ndarray:
    """yᵀKy / (‖K‖_F ‖y‖²) for every kernel of a stack (see `target_alignment`)."""
    ks, y = as_array(kernels), as_array(y)
    y = y[:, None] if y.ndim == 1 else y
    quadratic = np.einsum("ia,sij,ja->s", y, ks, y)
    return quadratic / (np.linalg.norm(ks.reshape(len(ks), -1), axis=1) * np.sum(y * y))


def distances_to(kernels: Any, reference: Any, centered: bool = True) -> np.ndarray:
    """S(K_ref, K_t) for every kernel of a stack."""
    units = _unit_stack(kernels, centered)
    ref = _unit_stack(as_array(reference)[None], centered)[0]
    return 1.0 - np.einsum("sij,ij->s", units, ref)


def kernel_velocity(kernels: Any, steps: Any, centered: bool = True) -> np.ndarray:
    """v(t) = S(Θ_t, Θ_{t+dt}) / dt between consecutive snapshots, at the earlier one; the last
    entry is NaN (Reactivation study §1)."""
    steps = as_array(steps)
    units = _unit_stack(kernels, centered)
    out = np.full(len(units), np.nan)
    if len(units) > 1:
        sims = np.einsum("sij,sij->s", units[:-1], units[1:])
        out[:-1] = (1.0 - sims) / np.diff(steps)
    return out


def alignments(kernels: Any, y: Any, centered: bool = True) -> np.ndarray:
    """CKA(Θ_t, YYᵀ) for every kernel of a stack."""
    return 1.0 - distances_to(kernels, label_kernel(y), centered)
