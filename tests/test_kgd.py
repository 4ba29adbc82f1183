"""Tests of ntkpipe.kgd: frozen-kernel gradient descent, its flow limit, aKGD, predictions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch
from torch import nn

from ntkpipe import kgd
from ntkpipe.ntk import empirical_ntk

N, O = 8, 3


def _psd(n: int, rank: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, rank))
    return x @ x.T


K0 = _psd(N, N, 0)
Y = np.eye(O)[np.random.default_rng(1).integers(0, O, N)]
F0 = np.random.default_rng(2).normal(size=(N, O))


def _gd_loop(k: np.ndarray, y: np.ndarray, eta: float, steps: int, f0: np.ndarray,
             n: int) -> list[np.ndarray]:
    f, out = f0.copy(), [f0 - y]
    for _ in range(steps):
        f = f - (eta / n) * k @ (f - y)
        out.append(f - y)
    return out


def test_discrete_matches_explicit_loop():
    eta = 0.7 * 2 * N / np.linalg.eigvalsh(K0)[-1]
    steps = [0, 1, 2, 5, 17]
    loop = _gd_loop(K0, Y, eta, 17, F0, N)
    got = kgd.kgd_residuals(K0, Y, eta, steps, F0)
    assert got.shape == (len(steps), N, O)
    np.testing.assert_allclose(got, np.stack([loop[t] for t in steps]), atol=1e-12)
    np.testing.assert_allclose(kgd.kgd_residuals(torch.tensor(K0), Y, eta, steps, F0), got)


def test_flow_matches_science_closed_form():
    """Δ(t) = −exp(−η K0 t) y (science.md §3): f0 = 0, loss not averaged."""
    eta, times = 0.05, [0.0, 0.3, 2.0, 10.0]
    got = kgd.kgd_flow_residuals(K0, Y, eta, times, averaged=False)
    expected = [-scipy.linalg.expm(-eta * K0 * t) @ Y for t in times]
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-12)
    # averaged loss: the kernel is K0 / n
    averaged = kgd.kgd_flow_residuals(K0, Y, eta, times)
    np.testing.assert_allclose(averaged, kgd.kgd_flow_residuals(K0 / N, Y, eta, times,
                                                                averaged=False), atol=1e-14)


def test_discrete_converges_to_flow():
    eta, t = 0.2, 30.0
    flow = kgd.kgd_flow_residuals(K0, Y, eta, [t], F0)[0]
    errors = []
    for m in (10, 100):  # m substeps of η/m per unit time
        gd = kgd.kgd_residuals(K0, Y, eta / m, [int(t * m)], F0)[0]
        errors.append(np.abs(gd - flow).max())
    assert errors[1] < errors[0] / 5 and errors[1] < 1e-2


def test_one_by_one_by_hand():
    k, y, eta = 2.0, 3.0, 0.1
    got = kgd.kgd_residuals([[k]], [[y]], eta, [0, 1, 3], averaged=False)
    np.testing.assert_allclose(got[:, 0, 0], [-y, -y * (1 - eta * k), -y * (1 - eta * k) ** 3])
    flow = kgd.kgd_flow_residuals([[k]], [y], eta, [4.0])
    assert flow.shape == (1, 1)
    assert flow[0, 0] == pytest.approx(-y * np.exp(-eta * k * 4.0))
    loss = kgd.kgd_loss(got)
    np.testing.assert_allclose(loss, 0.5 * got[:, 0, 0] ** 2)


def test_loss_monotone_below_stability_threshold_and_not_above():
    lam = np.linalg.eigvalsh(K0)[-1]
    steps = np.arange(60)
    stable = kgd.kgd_loss(kgd.kgd_residuals(K0, Y, 1.95 * N / lam, steps, F0))
    assert np.all(np.diff(stable) <= 1e-15)
    unstable = kgd.kgd_loss(kgd.kgd_residuals(K0, Y, 2.1 * N / lam, steps, F0))
    assert unstable[-1] > unstable[0]


def test_kgd_loss_matches_train_convention():
    r = np.random.default_rng(5).normal(size=(4, N, O))
    np.testing.assert_allclose(kgd.kgd_loss(r), 0.5 * (r ** 2).sum(axis=2).mean(axis=1))


def test_akgd_with_scaled_final_kernel_equals_kgd_with_scaled_rate():
    c, eta, steps = 3.5, 0.01, [0, 4, 40]
    np.testing.assert_allclose(kgd.rescale_to(K0, c * K0), c * K0, rtol=1e-13)
    np.testing.assert_allclose(kgd.akgd_residuals(K0, c * K0, Y, eta, steps, F0),
                               kgd.kgd_residuals(K0, Y, c * eta, steps, F0), atol=1e-12)
    np.testing.assert_allclose(kgd.akgd_residuals(K0, c * K0, Y, eta, [2.5], F0, flow=True),
                               kgd.kgd_flow_residuals(K0, Y, c * eta, [2.5], F0), atol=1e-12)


def _joint(n: int, m: int, rank: int, seed: int):
    """Train and cross blocks of one PSD kernel over train + test points."""
    k = _psd(n + m, rank, seed)
    return k[:n, :n], k[n:, :n]


@pytest.mark.parametrize("rank", [12, 5])  # full rank, and K0 with a null space
def test_predictions_match_explicit_loop(rank):
    n, m, eta, steps = 8, 4, 0.3, [0, 1, 7, 25]
    k_train, k_cross = _joint(n, m, rank, 6)
    g0_test = np.random.default_rng(7).normal(size=(m, O))
    eta = eta * n / np.linalg.eigvalsh(k_train)[-1]
    # f_test(t+1) = f_test(t) − (η/n) K(test, train) (f_t − y)
    f, g, out = F0.copy(), g0_test.copy(), [g0_test.copy()]
    for _ in range(25):
        f, g = f - (eta / n) * k_train @ (f - Y), g - (eta / n) * k_cross @ (f - Y)
        out.append(g.copy())
    got = kgd.kgd_predictions(k_train, k_cross, Y, eta, steps, F0, g0_test)
    np.testing.assert_allclose(got, np.stack([out[t] for t in steps]), atol=1e-10)


def test_flow_predictions_match_ode_solution():
    n, m, eta, t = 6, 3, 0.4, 5.0
    k_train, k_cross = _joint(n, m, 4, 8)
    y, f0 = Y[:n], F0[:n]

    # d f/dt = −(η/n) K0 (f − y), d f_test/dt = −(η/n) K(test, train) (f − y)
    def rhs(_: float, state: np.ndarray) -> np.ndarray:
        f = state[:n * O].reshape(n, O)
        return -(eta / n) * np.concatenate([(k_train @ (f - y)).ravel(),
                                            (k_cross @ (f - y)).ravel()])

    sol = scipy.integrate.solve_ivp(rhs, (0.0, t), np.concatenate([f0.ravel(),
                                                                    np.zeros(m * O)]),
                                    rtol=1e-11, atol=1e-12, method="DOP853")
    expected = sol.y[n * O:, -1].reshape(m, O)
    got = kgd.kgd_predictions(k_train, k_cross, y, eta, [t], f0, flow=True)[0]
    np.testing.assert_allclose(got, expected, atol=1e-9)


def test_full_kernel_of_traced_form_matches_traced_kernel():
    n, m, eta, steps = 8, 4, 0.05, [0, 5, 50]
    k_train, k_cross = _joint(n, m, 12, 9)
    eye = np.eye(O)
    full_train = np.einsum("ij,ab->ijab", k_train, eye)
    full_cross = np.einsum("ij,ab->ijab", k_cross, eye)
    np.testing.assert_allclose(kgd.kgd_residuals(full_train, Y, eta, steps, F0),
                               kgd.kgd_residuals(k_train, Y, eta, steps, F0), atol=1e-12)
    np.testing.assert_allclose(kgd.kgd_predictions(full_train, full_cross, Y, eta, steps, F0),
                               kgd.kgd_predictions(k_train, k_cross, Y, eta, steps, F0),
                               atol=1e-12)


def test_training_points_as_test_points_reproduce_residuals():
    eta, steps = 0.05, [0, 3, 30]
    pred = kgd.kgd_predictions(K0, K0, Y, eta, steps, F0, F0)
    np.testing.assert_allclose(pred - Y, kgd.kgd_residuals(K0, Y, eta, steps, F0), atol=1e-11)


def test_linear_network_gd_equals_kgd_with_its_ntk():
    """For f = Wx the linearisation is exact, so real GD on the averaged MSE loss follows
    f_{t+1} = f_t − (η/n) Θ (f_t − y), with the full NTK (which couples nothing here)."""
    torch.manual_seed(0)
    n, d = 10, 4
    x = torch.randn(n, d, dtype=torch.float64)
    labels = torch.randint(0, O, (n,))
    y = torch.nn.functional.one_hot(labels, O).double()
    model = nn.Linear(d, O, bias=False).double()
    full = empirical_ntk(model, x, mode="full")
    trace = empirical_ntk(model, x, mode="trace")
    f0 = model(x).detach().numpy()
    eta, steps = 0.3, 12
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((model(x) - y) ** 2).sum(1).mean()).backward()
        opt.step()
    real = model(x).detach().numpy() - y.numpy()
    for k in (full, trace):
        np.testing.assert_allclose(kgd.kgd_residuals(k, y, eta, [steps], f0)[0], real,
                                   atol=1e-10)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        kgd.kgd_residuals(K0, Y, 0.1, [1.5])
    with pytest.raises(ValueError):
        kgd.kgd_residuals(K0, Y, 0.1, [-1])
    with pytest.raises(ValueError):
        kgd.kgd_residuals(K0[:5, :5], Y, 0.1, [1])
    with pytest.raises(ValueError):
        kgd.kgd_residuals(K0, Y, 0.1, [1], F0[:, :2])


@pytest.mark.parametrize("flow", [False, True])
def test_loss_curve_equals_the_loss_of_the_residuals(flow):
    """The eigenmode shortcut gives the loss of the explicit residuals, traced and full."""
    rng = np.random.default_rng(11)
    a = rng.standard_normal((7, 4))
    k0 = a @ a.T
    y, f0 = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    steps = [0, 1, 5, 40]
    residuals = kgd.kgd_flow_residuals if flow else kgd.kgd_residuals
    np.testing.assert_allclose(kgd.kgd_loss_curve(k0, y, 0.3, steps, f0, flow=flow),
                               kgd.kgd_loss(residuals(k0, y, 0.3, steps, f0)), rtol=1e-12)
    full = rng.standard_normal((7 * 3, 5))
    full = (full @ full.T).reshape(7, 3, 7, 3).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(kgd.kgd_loss_curve(full, y, 0.1, steps, f0),
                               kgd.kgd_loss(kgd.kgd_residuals(full, y, 0.1, steps, f0)),
                               rtol=1e-12)


def test_mode_loss_curve_reuses_one_eigendecomposition_for_a_rescaled_kernel():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((9, 5))
    k0 = a @ a.T
    y, f0 = rng.standard_normal((9, 2)), rng.standard_normal((9, 2))
    vals, vecs = np.linalg.eigh(k0)
    energy = np.sum((vecs.T @ (f0 - y)) ** 2, axis=1)
    steps = [0, 3, 30]
    np.testing.assert_allclose(kgd.mode_loss_curve(2.5 * vals, energy, 0.05, steps, 9),
                               kgd.kgd_loss_curve(2.5 * k0, y, 0.05, steps, f0), rtol=1e-12)
