"""Sharpness: top eigenvalues of the training-loss Hessian, and the Gauss–Newton (NTK) bound.

The Hessian is that of the loss averaged over a fixed subset (x, y) with respect to all
trainable parameters, flattened in `named_parameters` order. It is never formed: eigenvalues
come from ARPACK's implicitly restarted Lanczos (scipy `eigsh`, which='LA') on exact
Hessian-vector products (reverse-over-reverse autodiff: the gradient of ⟨∇L, v⟩).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor, nn
from torch.func import functional_call

from ntkpipe.metrics import as_array, full_to_matrix
from ntkpipe.spectra import top_eigenvalues
from ntkpipe.train import loss_value

LossSpec = str | Callable[[Tensor, Tensor], Tensor]


def _loss_fn(loss: LossSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean loss over a batch: a name for `train.loss_value`, or a callable (outputs, y)."""
    if callable(loss):
        return loss
    return lambda outputs, labels: loss_value(outputs, labels, loss)


def hessian_vector_product(model: nn.Module, x: Tensor, y: Tensor, loss: LossSpec, *,
                           batch: int | None = None, dtype: torch.dtype | None = torch.float64
                           ) -> Callable[[np.ndarray], np.ndarray]:
    """v ↦ H v for the Hessian of the mean loss over (x, y), on flat float64 numpy vectors."""
    first = next((p for p in model.parameters() if p.requires_grad), None)
    if first is None:
        raise ValueError("model has no parameters with requires_grad=True")
    device, dtype = first.device, dtype or first.dtype
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    # fresh leaves: autograd.grad never writes .grad, and the caller's tensors stay untouched
    params = {k: p.detach().to(device, dtype, copy=True) for k, p in model.named_parameters()
              if p.requires_grad}
    # buffers are copied so that a train-mode forward cannot touch the caller's running stats
    fixed = {k: t.detach().clone() for k, t in [*model.named_parameters(), *model.named_buffers()]
             if not t.requires_grad}
    fixed = {k: t.to(device, dtype) if t.is_floating_point() else t.to(device)
             for k, t in fixed.items()}
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    x = x.detach().to(device)
    x = x.to(dtype) if x.is_floating_point() else x
    y = y.detach().to(device)
    y = y.to(dtype) if y.is_floating_point() else y
    n = len(x)
    if n == 0 or len(y) != n:
        raise ValueError(f"x and y must be non-empty with equal length, got {len(x)} and {len(y)}")
    step = batch or n
    chunks = [(x[i:i + step], y[i:i + step]) for i in range(0, n, step)]
    mean_loss = _loss_fn(loss)

    leaves = [params[k].requires_grad_(True) for k in names]

    def chunk_hvp(xc: Tensor, yc: Tensor, tangent: list[Tensor]) -> list[Tensor]:
        with torch.enable_grad():
            value = mean_loss(functional_call(model, {**fixed, **params}, (xc,)), yc)
            g = torch.autograd.grad(value, leaves, create_graph=True, materialize_grads=True)
            # gradient parts constant in θ (loss at most linear there) add nothing to H v
            live = [(gi, ti) for gi, ti in zip(g, tangent) if gi.requires_grad]
            if not live:
                return [torch.zeros_like(t) for t in leaves]
            return torch.autograd.grad([gi for gi, _ in live], leaves,
                                       grad_outputs=[ti for _, ti in live], allow_unused=True,
                                       materialize_grads=True)

    def matvec(v: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(np.ravel(v), dtype=dtype, device=device)
        tangent = [t.view(s) for t, s in zip(flat.split(sizes), shapes)]
        total = torch.zeros_like(flat)
        for xc, yc in chunks:
            hv = chunk_hvp(xc, yc, tangent)
            # the mean over all n samples is the chunk means weighted by chunk size
            total += (len(xc) / n) * torch.cat([t.reshape(-1) for t in hv])
        return total.detach().cpu().numpy().astype(np.float64)

    return matvec


def parameter_dimension(model: nn.Module) -> int:
    """Number of trainable scalars: the size of the Hessian."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def top_hessian_eigen(model: nn.Module, x: Tensor, y: Tensor, loss: LossSpec, k: int = 1, *,
                      iters: int = 1000, tol: float = 1e-8, seed: int = 0,
                      start: np.ndarray | None = None, batch: int | None = None,
                      dtype: torch.dtype | None = torch.float64
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenvalues (descending) of the Hessian of the mean loss over (x, y) and
    their eigenvectors (columns, flat in `named_parameters` order); see
    `top_hessian_eigenvalues`. `start` is the Lanczos start vector (e.g. the top eigenvector at
    the previous snapshot, which converges in far fewer products); default random from `seed`."""
    dim = parameter_dimension(model)
    if not 1 <= k < dim:
        raise ValueError(f"k must be in 1..{dim - 1} (number of parameters - 1), got {k}")
    op = LinearOperator((dim, dim), matvec=hessian_vector_product(model, x, y, loss,
                                                                  batch=batch, dtype=dtype),
                        dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(dim) if start is None else start
    vals, vecs = eigsh(op, k=k, which="LA", v0=v0, tol=tol, maxiter=iters,
                       ncv=min(dim, max(2 * k + 1, 20)))
    order = np.argsort(vals)[::-1]
    return vals[order], vecs[:, order]


def top_hessian_eigenvalues(model: nn.Module, x: Tensor, y: Tensor, loss: LossSpec, k: int = 1,
                            *, iters: int = 1000, tol: float = 1e-8, seed: int = 0,
                            batch: int | None = None,
                            dtype: torch.dtype | None = torch.float64) -> np.ndarray:
    """The k largest (algebraic) eigenvalues, descending, of the Hessian of the mean loss over
    (x, y) w.r.t. the trainable parameters (Jiang, Cohen & Li 2025, docs/science.md §2).

    `loss` is "mse" / "cross_entropy" (labels y as class indices, `train.loss_value`) or a
    callable (outputs, y) -> mean loss. `batch` samples per chunk bounds memory; the result is
    the exact full-subset Hessian either way. `iters` caps ARPACK restarts, `tol` is its
    relative eigenvalue tolerance, `seed` fixes the Lanczos start vector. HVPs run on the
    model's device in `dtype` (None: the parameters' dtype), with the model in its current
    train/eval mode. The model (parameters, .grad, buffers) is not modified. Raises scipy's
    ArpackNoConvergence if Lanczos has not converged within `iters` restarts.
    """
    return top_hessian_eigen(model, x, y, loss, k, iters=iters, tol=tol, seed=seed,
                             batch=batch, dtype=dtype)[0]


def ntk_sharpness(full_kernel: Any, n: int | None = None) -> float:
    """λ_max(Θ_full) / n: the top eigenvalue of the Gauss–Newton part of the Hessian of the MSE
    loss 0.5‖f − y‖² averaged over n samples, G = Jᵀ J / n (Jiang, Cohen & Li 2025, §2).

    `full_kernel` is the full NTK (n, n, O, O) or its (n·O, n·O) matrix; for the latter pass n.
    """
    k = as_array(full_kernel)
    if k.ndim == 4:
        n = k.shape[0] if n is None else n
        k = full_to_matrix(k)
    elif n is None:
        raise ValueError("n (number of samples) is required for an (n·O, n·O) kernel matrix")
    # H = JᵀJ/n + (1/n) Σ_{i,a} (f_a(x_i) − y_ia) ∇²f_a(x_i); JᵀJ/n shares its nonzero
    # eigenvalues with J Jᵀ/n = Θ_full/n (Jiang, Cohen & Li 2025; docs/science.md §2)
    return float(top_eigenvalues(k, 1)[0] / n)


def gauss_newton_sharpness(full_kernel: Any, outputs: Any, loss: str) -> float:
    """Top eigenvalue of the Gauss–Newton part G = (1/n) Σ_i J_iᵀ H_i J_i of the Hessian of a
    mean loss over n samples, from the full NTK (n, n, O, O) and the outputs (n, O).

    H_i is the Hessian of the loss in the outputs: I for MSE (G's top eigenvalue is then
    λ_max(Θ_full)/n, `ntk_sharpness`), diag(p_i) − p_i p_iᵀ with p_i = softmax(f(x_i)) for
    cross-entropy. G shares its nonzero eigenvalues with S Θ S / n, S = blockdiag(H_i^½).
    """
    if loss == "mse":
        return ntk_sharpness(full_kernel)
    if loss != "cross_entropy":
        raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}")
    k, f = as_array(full_kernel), as_array(outputs)
    n, _, o, _ = k.shape
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    hess = np.einsum("ia,ab->iab", p, np.eye(o)) - np.einsum("ia,ib->iab", p, p)
    vals, vecs = np.linalg.eigh(hess)
    root = np.einsum("iab,ib,icb->iac", vecs, np.sqrt(np.clip(vals, 0, None)), vecs)
    # (S Θ S)[(i,a),(j,b)] = Σ_{c,d} S_i[a,c] Θ[i,j,c,d] S_j[d,b]
    scaled = np.einsum("iac,ijcd,jdb->ijab", root, k, root)
    return float(top_eigenvalues(full_to_matrix(scaled), 1)[0] / n)
