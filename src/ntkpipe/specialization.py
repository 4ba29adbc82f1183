"""Kernel specialization (Shan & Bordelon 2021, docs/science.md §3): the kernel specialization
matrix over per-output NTK blocks, the per-layer alignment to each class, and the effective
feature-learning rate γ.

Alignment throughout is the *uncentered* kernel–target alignment of Shan & Bordelon (eq. 5),
    A(K, y) = yᵀ K y / (‖K‖_F ‖y‖²) = ⟨K, yyᵀ⟩_F / (‖K‖_F ‖yyᵀ‖_F),
the one docs/science.md §3 uses for A(t), the KSM and γ (γ's closed form is derived for it: adding
γ yyᵀ to K moves exactly this cosine). Class targets y^c are taken literally as the columns of
the one-hot label matrix Y (0/1 entries, not ±1, not centred); any other target matrix passed
in is used as given.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ntkpipe.metrics import as_array

# A(K_∞) this close to 1 is yyᵀ up to round-off: γ is then infinite, not a huge noisy number.
ALIGNMENT_ONE = 1e-14


def _targets(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """(n, C) float64 target columns from class indices (n,) or a one-hot / target matrix."""
    y = as_array(labels)
    if y.ndim == 1:
        classes = num_classes or int(y.max()) + 1
        return np.eye(classes)[y.astype(int)]
    if y.ndim != 2:
        raise ValueError(f"labels must be (n,) class indices or an (n, C) matrix, got {y.shape}")
    return y


def class_alignments(kernels: Any, targets: Any) -> np.ndarray:
    """A(K_b, y^c) for every kernel of a stack (B, n, n) and every target column c: (B, C)."""
    ks = as_array(kernels)
    y = _targets(targets)
    if ks.ndim != 3 or ks.shape[1:] != (len(y), len(y)):
        raise ValueError(f"kernels must be (B, n, n) with n = {len(y)}, got {ks.shape}")
    # (Shan & Bordelon 2021, eq. 5) per kernel and target column
    num = np.einsum("ic,bij,jc->bc", y, ks, y)
    norms = np.linalg.norm(ks.reshape(len(ks), -1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / (norms[:, None] * np.sum(y * y, axis=0)[None, :])


def kernel_specialization(per_output_blocks: Any, labels_onehot: Any) -> np.ndarray:
    """KSM(c, c') = A(Θ^{c,c}, y^{c'}) / ((1/O) Σ_{c''} A(Θ^{c'',c''}, y^{c'})), (O, O)
    (Shan & Bordelon 2021, kernel specialization matrix; docs/science.md §3)."""
    blocks = as_array(per_output_blocks)
    y = _targets(labels_onehot, num_classes=blocks.shape[0])
    if y.shape[1] != blocks.shape[0]:
        raise ValueError(f"{blocks.shape[0]} output blocks but {y.shape[1]} target columns")
    a = class_alignments(blocks, y)  # rows: block c, columns: target c'
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / a.mean(axis=0, keepdims=True)


def diagonal_dominance(ksm: Any) -> float:
    """Mean diagonal minus mean off-diagonal entry of a KSM (0 for a flat matrix)."""
    m = as_array(ksm)
    off = ~np.eye(len(m), dtype=bool)
    return float(np.mean(np.diag(m)) - np.mean(m[off]))


def layer_alignment(per_layer_traced: Any, labels_onehot: Any) -> np.ndarray:
    """A(Θ_l, y^c) of each layer's kernel contribution (L, n, n) to each class target: (L, O)."""
    return class_alignments(per_layer_traced, labels_onehot)


def _label_kernel(y: Any) -> np.ndarray:
    """T = yyᵀ of a target vector (n,) or matrix (n, O)."""
    y = as_array(y)
    y = y[:, None] if y.ndim == 1 else y
    return y @ y.T


def _cosine(k: np.ndarray, t: np.ndarray) -> float:
    """⟨K, T⟩_F / (‖K‖_F ‖T‖_F)."""
    return float(np.sum(k * t) / (np.linalg.norm(k) * np.linalg.norm(t)))


def gamma_alignment(k0: Any, y: Any, gamma: float) -> float:
    """Right-hand side of the γ equation, (yᵀK0y + γ‖y‖⁴) / (‖y‖² √(‖K0‖² + 2γ yᵀK0y + γ²‖y‖⁴))
    with K0 normalised to ‖K0‖_F = 1, i.e. A(K0/‖K0‖_F + γ yyᵀ) (docs/science.md §3)."""
    k0 = as_array(k0)
    k0 = k0 / np.linalg.norm(k0)
    t = _label_kernel(y)
    # for one column ⟨K0, T⟩ = yᵀK0y and ‖T‖_F = ‖y‖²
    kt, tt = float(np.sum(k0 * t)), float(np.linalg.norm(t))
    return (kt + gamma * tt ** 2) / (tt * math.sqrt(1.0 + 2 * gamma * kt + gamma ** 2 * tt ** 2))


def target_cosine(k: Any, y: Any) -> float:
    """⟨K, yyᵀ⟩_F / (‖K‖_F ‖yyᵀ‖_F): the alignment A that `effective_gamma` solves for (for a
    single target column, yᵀKy / (‖K‖_F ‖y‖²))."""
    return _cosine(as_array(k), _label_kernel(y))


def effective_gamma(k0: Any, k_inf: Any, y: Any) -> float:
    """Effective feature-learning rate γ ≥ 0 with A(K_∞) = A(K0/‖K0‖_F + γ yyᵀ)
    (Shan & Bordelon 2021, docs/science.md §3); 0.0 if K_∞ is no better aligned than K0, inf
    if A(K_∞) reaches the γ → ∞ limit 1 (to within ALIGNMENT_ONE, below which a is round-off).

    K0 and K_∞ are normalised by ‖K0‖_F (A(K_∞) is scale-free, so only K0's scale matters).
    y is a target vector (n,) or matrix (n, O); for a matrix the target kernel is T = yyᵀ and
    A the cosine ⟨K, T⟩/(‖K‖‖T‖), the same formula with ‖y‖² read as ‖T‖_F. The equation is
    solved in closed form: with c = A(K0), a = A(K_∞) and g = γ‖T‖_F it reads
    a = (c + g)/√(1 + 2cg + g²), increasing in g, whose root is g = a √((1 − c²)/(1 − a²)) − c.
    """
    t = _label_kernel(y)
    tt = float(np.linalg.norm(t))
    c, a = _cosine(as_array(k0), t), _cosine(as_array(k_inf), t)
    if a <= c:
        return 0.0
    if a >= 1.0 - ALIGNMENT_ONE:
        return math.inf
    return (a * math.sqrt((1.0 - c * c) / (1.0 - a * a)) - c) / tt
