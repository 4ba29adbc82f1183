"""Kernel gradient descent (KGD) with a frozen kernel, the baseline of Shan & Bordelon 2021.

Convention. The loss is L = (1/n) Σ_i 0.5‖f(x_i) − y_i‖² (MSE averaged over the n training
samples, as `train.loss_value`), trained by gradient descent with step η. Linearising the network
around its parameters and freezing its NTK K0 gives, for the training residual Δ = f − y,

    discrete GD:   Δ_{t+1} = (I − η K0 / n) Δ_t    ⇒  Δ_t = (I − η K0 / n)^t Δ_0
    gradient flow: dΔ/dt = −(η / n) K0 Δ            ⇒  Δ(t) = exp(−η K0 t / n) Δ_0

with t counted in optimiser steps, so both agree as η → 0 at fixed η·t. docs/science.md §3 writes
Δ(t) = −exp(−η K0 t) y: the same with f_0 = 0 and the 1/n absorbed into K0 (a loss summed
rather than averaged over samples); `averaged=False` gives that convention literally.

Kernels are (n, n) — the traced NTK, the same kernel for every output column of y — or the full
NTK (n, n, O, O), which couples the outputs (rows ordered (sample, output)). Everything is
computed in float64 from one eigendecomposition of K0; results keep y's shape with a leading
axis over the requested steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ntkpipe.metrics import as_array, full_to_matrix


def _flatten_kernel(k: Any) -> np.ndarray:
    """An (n, n) or (n·O, n·O) float64 matrix from an (n, n) or full (n, n, O, O) kernel."""
    k = as_array(k)
    return full_to_matrix(k) if k.ndim == 4 else k


def _system(k0: Any, y: Any, f0: Any) -> tuple[np.ndarray, np.ndarray, int, tuple[int, ...]]:
    """(symmetric kernel matrix, initial residual as columns, n samples, shape of y)."""
    full = as_array(k0).ndim == 4
    mat = _flatten_kernel(k0)
    y = as_array(y)
    n = y.shape[0]
    f0 = np.zeros_like(y) if f0 is None else as_array(f0)
    if f0.shape != y.shape:
        raise ValueError(f"f0 must have y's shape {y.shape}, got {f0.shape}")
    delta = (f0 - y).reshape(mat.shape[0], -1) if full else (f0 - y).reshape(n, -1)
    if mat.shape != (delta.shape[0], delta.shape[0]):
        raise ValueError(f"kernel of shape {as_array(k0).shape} does not fit targets of shape "
                         f"{y.shape}")
    return (mat + mat.T) / 2, delta, n, y.shape


def _rates(vals: np.ndarray, eta: float, n: int, averaged: bool) -> np.ndarray:
    """Per-mode step rate x = η λ / n (η λ when not averaged)."""
    return eta * vals / (n if averaged else 1)


def _decay(x: np.ndarray, steps: np.ndarray, flow: bool) -> np.ndarray:
    """(S, m) factors (1 − x)^t (discrete) or exp(−x t) (flow)."""
    # per eigenmode of K0: Δ(t) = exp(−η K0 t/n) Δ(0) (Shan & Bordelon 2021; docs/science.md §3)
    if flow:
        return np.exp(-np.outer(steps, x))
    return np.power(1.0 - x[None, :], steps[:, None])


def _check_steps(steps: Any, flow: bool) -> np.ndarray:
    """Steps as an array: non-negative integers for GD, non-negative reals for flow."""
    steps = np.atleast_1d(np.asarray(steps))
    if np.any(steps < 0):
        raise ValueError("steps must be non-negative")
    if flow:
        return steps.astype(np.float64)
    if not np.all(np.equal(np.mod(steps, 1), 0)):
        raise ValueError("discrete GD steps must be integers (use the flow for real times)")
    return steps.astype(np.int64)


def _residuals(k0: Any, y: Any, eta: float, steps: Any, f0: Any, averaged: bool,
               flow: bool) -> np.ndarray:
    """Training residuals (S, *y.shape) of KGD or of its gradient flow."""
    mat, delta, n, shape = _system(k0, y, f0)
    steps = _check_steps(steps, flow)
    vals, vecs = np.linalg.eigh(mat)
    decay = _decay(_rates(vals, eta, n, averaged), steps, flow)
    coeff = vecs.T @ delta  # (m, c)
    out = np.einsum("ik,sk,kc->sic", vecs, decay, coeff)
    return out.reshape((len(steps),) + shape)


def kgd_residuals(k0: Any, y: Any, eta: float, steps: Any, f0: Any = None, *,
                  averaged: bool = True) -> np.ndarray:
    """f_t − y on the training set after t steps of GD with frozen kernel K0, for each t in
    `steps`: (I − η K0/n)^t (f0 − y) (f0 = 0 by default; n → 1 when not `averaged`)."""
    return _residuals(k0, y, eta, steps, f0, averaged, flow=False)


def kgd_flow_residuals(k0: Any, y: Any, eta: float, times: Any, f0: Any = None, *,
                       averaged: bool = True) -> np.ndarray:
    """f(t) − y under gradient flow with frozen kernel K0: exp(−η K0 t/n) (f0 − y)
    (Shan & Bordelon 2021, docs/science.md §3, with their K0 = our K0/n when `averaged`)."""
    return _residuals(k0, y, eta, times, f0, averaged, flow=True)


def kgd_loss_curve(k0: Any, y: Any, eta: float, steps: Any, f0: Any = None, *,
                   averaged: bool = True, flow: bool = False) -> np.ndarray:
    """Training loss 0.5 · mean_i ‖Δ_i(t)‖² of KGD with frozen kernel K0 at each step, without
    forming the residuals: K0's eigenvectors are orthonormal, so ‖Δ(t)‖²_F is
    Σ_k decay_k(t)² ‖V_kᵀ Δ_0‖² (O(S·m) after one eigendecomposition, not O(S·m²))."""
    mat, delta, n, _ = _system(k0, y, f0)
    vals, vecs = np.linalg.eigh(mat)
    return mode_loss_curve(vals, np.sum((vecs.T @ delta) ** 2, axis=1), eta, steps, n,
                           averaged=averaged, flow=flow)


def mode_loss_curve(vals: Any, energy: Any, eta: float, steps: Any, n: int, *,
                    averaged: bool = True, flow: bool = False) -> np.ndarray:
    """`kgd_loss_curve` from K0's eigenvalues and the initial residual's energy per eigenmode,
    ‖V_kᵀ Δ_0‖²: a caller holding K0's eigendecomposition (or that of c·K0, whose eigenvalues
    are c times K0's on the same modes, as aKGD's) reuses it."""
    steps = _check_steps(steps, flow)
    decay = _decay(_rates(as_array(vals), eta, n, averaged), steps, flow)
    with np.errstate(over="ignore", invalid="ignore"):
        return 0.5 * (decay ** 2 @ as_array(energy)) / n


def kgd_loss(residuals: Any) -> np.ndarray:
    """Training loss 0.5 · mean_i ‖Δ_i‖² at each step of residuals (S, n[, O])."""
    r = as_array(residuals)
    return 0.5 * np.sum(r.reshape(r.shape[0], r.shape[1], -1) ** 2, axis=2).mean(axis=1)


def rescale_to(k0: Any, k_final: Any) -> np.ndarray:
    """K0 scaled to the Frobenius norm of K_final: the aKGD kernel (Shan & Bordelon 2021)."""
    k0, k_final = as_array(k0), as_array(k_final)
    return k0 * (np.linalg.norm(k_final) / np.linalg.norm(k0))


def akgd_residuals(k0: Any, k_final: Any, y: Any, eta: float, steps: Any, f0: Any = None, *,
                   averaged: bool = True, flow: bool = False) -> np.ndarray:
    """Residuals of KGD with K0 rescaled to ‖K_final‖_F (aKGD, docs/science.md §3)."""
    return _residuals(rescale_to(k0, k_final), y, eta, steps, f0, averaged, flow)


def _gain(x: np.ndarray, vals: np.ndarray, steps: np.ndarray, scale: float,
          flow: bool) -> np.ndarray:
    """(S, m) factors (1 − decay_t(λ)) / λ, with the λ → 0 limit t·scale (= t·η/n) on null
    modes."""
    t = steps[:, None].astype(np.float64)
    if flow:
        h = -np.expm1(-x[None, :] * t)
    else:
        # log1p/expm1 keep 1 − (1 − x)^t accurate for tiny x; x ≥ 1 has no real log
        with np.errstate(invalid="ignore", divide="ignore"):
            small = -np.expm1(t * np.log1p(-x[None, :]))
        h = np.where(x[None, :] < 1, small, 1.0 - np.power(1.0 - x[None, :], t))
    null = np.abs(vals) <= 1e-12 * max(np.max(np.abs(vals)), np.finfo(float).tiny)
    safe = np.where(null, 1.0, vals)
    return np.where(null[None, :], t * scale, h / safe[None, :])


def kgd_predictions(k0: Any, k_cross: Any, y: Any, eta: float, steps: Any, f0: Any = None,
                    f0_test: Any = None, *, averaged: bool = True,
                    flow: bool = False) -> np.ndarray:
    """Predictions on held-out points under KGD with frozen kernel K0:
    f_test(t) = f_test(0) + K(test, train) K0⁻¹ (I − (I − η K0/n)^t) (y − f0)
    (exp(−η K0 t/n) for the flow), via K0's eigendecomposition; on K0's null space the
    factor is its limit t·η/n. `k_cross` is (m, n) (or (m, n, O, O) with a full K0)."""
    mat, delta, n, shape = _system(k0, y, f0)
    steps = _check_steps(steps, flow)
    cross = _flatten_kernel(k_cross)
    if cross.shape[1] != mat.shape[0]:
        raise ValueError(f"k_cross has {cross.shape[1]} train columns, K0 has {mat.shape[0]}")
    full = as_array(k0).ndim == 4
    m = cross.shape[0] // (len(mat) // n) if full else cross.shape[0]
    test_shape = (m,) + shape[1:]
    base = np.zeros(test_shape) if f0_test is None else as_array(f0_test)
    if base.shape != test_shape:
        raise ValueError(f"f0_test must have shape {test_shape}, got {base.shape}")
    vals, vecs = np.linalg.eigh(mat)
    scale = eta / (n if averaged else 1)
    gain = _gain(_rates(vals, eta, n, averaged), vals, steps, scale, flow)
    coeff = vecs.T @ (-delta)  # components of y − f0
    move = np.einsum("ik,sk,kc->sic", cross @ vecs, gain, coeff)
    return base[None] + move.reshape((len(steps),) + test_shape)
