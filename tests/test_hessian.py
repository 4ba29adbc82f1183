"""Tests of ntkpipe.hessian: Lanczos sharpness against closed-form and explicit Hessians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntkpipe import hessian as h
from ntkpipe.metrics import full_to_matrix
from ntkpipe.ntk import empirical_ntk

N, D, O = 24, 5, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny HVPs: extra intra-op threads only add contention on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(seed: int = 0, n: int = N, d: int = D, o: int = O):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, o, (n,), generator=g)


def _linear(d: int = D, o: int = O, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d, o)


def _linear_mse_hessian(x: torch.Tensor, o: int) -> np.ndarray:
    """Closed form for f = Wx + b, L = (1/n) Σ 0.5‖f_i − y_i‖², parameters ordered (vec W
    row-major, b): ∂²L/∂W_aj∂W_bk = δ_ab (1/n) Σ_i x_ij x_ik, ∂²L/∂W_aj∂b_b = δ_ab x̄_j,
    ∂²L/∂b_a∂b_b = δ_ab — independent of y."""
    x = x.double().numpy()
    cxx = x.T @ x / len(x)
    mean = x.mean(axis=0)[:, None]
    eye = np.eye(o)
    return np.block([[np.kron(eye, cxx), np.kron(eye, mean)],
                     [np.kron(eye, mean.T), eye]])


def _flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_linear_mse_hvp_equals_closed_form():
    x, y = _data()
    model = _linear()
    hess = _linear_mse_hessian(x, O)
    v = np.random.default_rng(0).normal(size=len(hess))
    np.testing.assert_allclose(h.hessian_vector_product(model, x, y, "mse")(v), hess @ v,
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("o", [1, 3])
def test_linear_mse_top_eigenvalues_match_closed_form(o):
    x, y = _data(o=o)
    model = _linear(o=o)
    expected = np.sort(np.linalg.eigvalsh(_linear_mse_hessian(x, o)))[::-1]
    k = 4
    got = h.top_hessian_eigenvalues(model, x, y, "mse", k=k, tol=1e-12)
    np.testing.assert_allclose(got, expected[:k], rtol=1e-6, atol=1e-10)


def test_quadratic_toy_loss_with_negative_curvature():
    class Point(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.randn(d))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.theta.expand(len(x), -1)

    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a = q @ np.diag(np.linspace(-5.0, 3.0, 12)) @ q.T
    at = torch.tensor(a)

    def loss(out: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return 0.5 * torch.einsum("ni,ij,nj->n", out, at, out).mean()

    x = torch.zeros(7, 1)
    got = h.top_hessian_eigenvalues(Point(12), x, x, loss, k=3, tol=1e-12)
    np.testing.assert_allclose(got, np.sort(np.linalg.eigvalsh(a))[::-1][:3], rtol=1e-9)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, O))


def _explicit_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
                      ) -> np.ndarray:
    """Dense Hessian (torch.autograd.functional) of the loss of the flat parameter vector."""
    from ntkpipe.train import loss_value
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(flat: torch.Tensor) -> torch.Tensor:
        params = {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_value(torch.func.functional_call(model, params, (x.double(),)), y, loss)

    return torch.autograd.functional.hessian(f, _flat_params(model).double()).numpy()


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_nonlinear_model_matches_explicit_hessian(loss):
    x, y = _data(1)
    model = _mlp()
    expected = np.sort(np.linalg.eigvalsh(_explicit_hessian(model.double(), x, y, loss)))[::-1]
    got = h.top_hessian_eigenvalues(model.float(), x, y, loss, k=3, tol=1e-12)
    np.testing.assert_allclose(got, expected[:3], rtol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_chunked_equals_unchunked(loss):
    x, y = _data(2)
    model = _mlp(1)
    whole = h.top_hessian_eigenvalues(model, x, y, loss, k=2, tol=1e-12)
    chunked = h.top_hessian_eigenvalues(model, x, y, loss, k=2, tol=1e-12, batch=7)  # uneven
    np.testing.assert_allclose(chunked, whole, rtol=1e-9)
    v = np.random.default_rng(0).normal(size=h.parameter_dimension(model))
    np.testing.assert_allclose(h.hessian_vector_product(model, x, y, loss, batch=5)(v),
                               h.hessian_vector_product(model, x, y, loss)(v), rtol=1e-10,
                               atol=1e-13)


def test_gauss_newton_equals_hessian_for_linear_mse():
    x, y = _data(3)
    model = _linear(seed=3)
    top = h.top_hessian_eigenvalues(model, x, y, "mse", k=1, tol=1e-12)[0]
    full = empirical_ntk(model, x, mode="full", dtype=torch.float64)  # (n, n, O, O)
    assert h.ntk_sharpness(full) == pytest.approx(top, rel=1e-8)
    mat = full_to_matrix(full)  # rows (sample, output)
    assert mat.shape == (N * O, N * O)
    assert h.ntk_sharpness(mat, N) == pytest.approx(top, rel=1e-8)
    with pytest.raises(ValueError):
        h.ntk_sharpness(mat)


def test_gauss_newton_equals_hessian_for_linear_cross_entropy():
    """A linear model's outputs have no curvature: the CE Hessian is exactly its Gauss–Newton
    part Jᵀ(diag p − ppᵀ)J/n, computed here from the full NTK and the outputs."""
    x, y = _data(5)
    model = _linear(seed=5)
    top = h.top_hessian_eigenvalues(model, x, y, "cross_entropy", k=1, tol=1e-12)[0]
    full = empirical_ntk(model, x, mode="full", dtype=torch.float64)
    with torch.no_grad():
        outputs = model.double()(x.double())
    assert h.gauss_newton_sharpness(full, outputs, "cross_entropy") == pytest.approx(top,
                                                                                     rel=1e-8)
    assert h.gauss_newton_sharpness(full, outputs, "mse") == h.ntk_sharpness(full)
    with pytest.raises(ValueError, match="loss"):
        h.gauss_newton_sharpness(full, outputs, "hinge")


def test_warm_start_gives_the_same_eigenpairs():
    x, y = _data(6)
    model = _linear(seed=6)
    cold_vals, cold_vecs = h.top_hessian_eigen(model, x, y, "mse", k=2, tol=1e-12)
    warm_vals, _ = h.top_hessian_eigen(model, x, y, "mse", k=2, tol=1e-12,
                                       start=cold_vecs[:, 0] + 1e-3)
    np.testing.assert_allclose(warm_vals, cold_vals, rtol=1e-10)
    assert np.all(np.diff(cold_vals) <= 0)


def test_deterministic_and_model_untouched():
    x, y = _data(4)
    model = _mlp(2)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = _flat_params(model).clone()
    first = h.top_hessian_eigenvalues(model, x, y, "cross_entropy", k=2, seed=3)
    second = h.top_hessian_eigenvalues(model, x, y, "cross_entropy", k=2, seed=3)
    np.testing.assert_array_equal(first, second)
    assert torch.equal(_flat_params(model), before)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_rejects_k_out_of_range():
    x, y = _data()
    with pytest.raises(ValueError):
        h.top_hessian_eigenvalues(_linear(), x, y, "mse", k=h.parameter_dimension(_linear()))
