"""Continual-learning strategies: each term against a direct computation, the buffer drawn from
the seed, the effect each is built for on a two-task problem, and exact resume."""

import io
from dataclasses import replace

import pytest
import torch
from torch import nn

from test_train import Crash, blobs, model

from ntkpipe import strategies as st
from ntkpipe.errors import InputError
from ntkpipe.train import Schedule, TaskSpec, evaluate, train_tasks

SETTINGS = {"replay": {"buffer_size": 32, "batch_size": None},
            "ewc": {"strength": 10.0, "fisher_samples": 64},
            "lwf": {"alpha": 1.0, "temperature": 2.0}}


def _bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def two_tasks():
    (x1, y1), (x2, y2) = blobs(), blobs(classes=(2, 3), seed=1)
    return [TaskSpec(1, x1, y1, max_epochs=8), TaskSpec(2, x2, y2, max_epochs=8, dense_steps=2)]


def run(name, schedule=None, **kw):
    schedule = schedule or Schedule(lr=0.2, batch_size=16, log_points=5, checkpoint_every=4)
    strategy = st.make_strategy(name, SETTINGS.get(name, {}), loss=schedule.loss, seed=3)
    net = model()
    record, opt = train_tasks(net, two_tasks(), replace(schedule, strategy=strategy), **kw)
    return net, record, opt


def task1_accuracy(net):
    x, y = blobs()
    return float(evaluate(net, x, y, "cross_entropy")[1].float().mean())


def test_finetune_is_plain_training_to_the_bit():
    schedule = Schedule(lr=0.2, batch_size=16, log_points=5)
    net, record, _ = run("finetune", schedule)
    plain = model()
    reference, _ = train_tasks(plain, two_tasks(), schedule)
    assert _bytes(net.state_dict()) == _bytes(plain.state_dict())
    assert _bytes(record.stacked()) == _bytes(reference.stacked())


def test_the_replay_buffer_is_drawn_from_the_seed_among_the_earlier_samples():
    x, y = torch.arange(50.0).unsqueeze(1), torch.arange(50) % 2
    a, b, c = (st.Replay(10, None, seed) for seed in (1, 1, 2))
    for buffer in (a, b, c):
        buffer.begin_task(nn.Identity(), [(x, y)], 2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert len(set(a.x.flatten().tolist())) == 10 and set(a.x.flatten().tolist()) <= set(range(50))
    assert torch.equal(a.y, a.x.flatten().long() % 2)  # samples keep their labels
    extra = a.extra_batch(torch.Generator().manual_seed(0), 7)
    assert extra[0].shape == (7, 1) and a.extra_batch(torch.Generator(), None)[0].shape == (10, 1)
    with pytest.raises(InputError, match="a replay buffer of 60 samples is larger than the 50"):
        st.Replay(60, None, 0).begin_task(nn.Identity(), [(x, y)], 2)


def test_the_diagonal_fisher_of_a_linear_model_is_mean_squared_residual_times_input():
    torch.manual_seed(0)
    net = nn.Linear(3, 2, bias=False).double()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    (fisher,) = st.diagonal_fisher(net, x, y, "mse")
    residual = x @ net.weight.detach().T - y  # ∂ℓ/∂W[a, j] = r_a x_j for ℓ = ½‖Wx − y‖²
    expected = (residual.unsqueeze(2) * x.unsqueeze(1)).pow(2).mean(0)
    assert torch.allclose(fisher, expected, rtol=1e-12, atol=1e-14)


def test_the_ewc_penalty_is_half_lambda_fisher_weighted_squared_distance():
    net = nn.Linear(2, 1, bias=False).double()
    ewc = st.EWC(strength=4.0, samples=10, loss="mse", seed=0)
    ewc.terms = [([torch.tensor([[1.0, 3.0]], dtype=torch.float64)],
                  [torch.zeros(1, 2, dtype=torch.float64)])]
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.5, -1.0]]))
    value = ewc.penalty(net, None, torch.zeros((), dtype=torch.float64)).item()
    assert value == pytest.approx(0.5 * 4.0 * (1.0 * 0.25 + 3.0 * 1.0))


def test_the_lwf_term_vanishes_at_the_old_network_and_matches_its_formula():
    torch.manual_seed(0)
    net, x = nn.Linear(3, 4), torch.randn(5, 3)
    for loss in ("cross_entropy", "mse"):
        lwf = st.LwF(alpha=2.0, temperature=3.0, loss=loss)
        lwf.begin_task(net, [], 2)
        assert lwf.penalty(net, x, net(x)).item() == pytest.approx(0.0, abs=1e-7)
    moved = nn.Linear(3, 4)
    old = lwf.old(x).detach()
    mse = lwf.penalty(moved, x, moved(x))
    assert mse.item() == pytest.approx((2.0 * 0.5 * (moved(x) - old).pow(2).sum(1).mean()).item())
    ce = st.LwF(alpha=2.0, temperature=3.0, loss="cross_entropy")
    ce.begin_task(net, [], 2)
    p, q = torch.softmax(old / 3, 1), torch.log_softmax(moved(x) / 3, 1)
    expected = 2.0 * 9.0 * (p * (p.log() - q)).sum(1).mean()
    assert ce.penalty(moved, x, moved(x)).item() == pytest.approx(expected.item(), rel=1e-5)


def test_replay_keeps_more_of_task_1_than_finetuning():
    finetuned, _, _ = run("finetune")
    kept, record, _ = run("replay")
    assert record.diverged_step < 0 and task1_accuracy(kept) > task1_accuracy(finetuned)


def _after_task_1():
    net = model()
    train_tasks(net, two_tasks()[:1], Schedule(lr=0.2, batch_size=16, log_points=5))
    return net


def test_ewc_keeps_the_weights_closer_to_task_1_in_the_fishers_metric(monkeypatch):
    monkeypatch.setitem(SETTINGS, "ewc", {"strength": 1000.0, "fisher_samples": 64})
    anchor = _after_task_1()
    x, y = blobs()
    fisher = st.diagonal_fisher(anchor, x, y, "cross_entropy")

    def distance(net):
        return sum(float((f * (p - a).pow(2)).sum()) for f, p, a in
                   zip(fisher, net.parameters(), anchor.parameters()))

    finetuned, _, _ = run("finetune")
    kept, record, _ = run("ewc")
    assert record.diverged_step < 0 and distance(kept) < 0.5 * distance(finetuned)


def test_lwf_keeps_the_outputs_on_task_1_closer_to_the_old_network():
    old = _after_task_1()
    x, _ = blobs()

    def drift(net):
        with torch.no_grad():
            return float((net(x) - old(x)).pow(2).sum(1).mean())

    finetuned, _, _ = run("finetune")
    kept, record, _ = run("lwf")
    assert record.diverged_step < 0 and drift(kept) < drift(finetuned)


@pytest.mark.parametrize("name", ["replay", "ewc", "lwf"])
def test_a_strategy_run_resumes_to_the_same_bytes(tmp_path, name):
    reference_net, reference, ref_opt = run(name)

    def crash(line):
        if line.startswith("task 2 epoch 6"):
            raise Crash()

    resume = tmp_path / "state.resume"
    with pytest.raises(Crash):
        run(name, resume_path=resume, log=crash)
    assert "strategy" in torch.load(resume, weights_only=True)
    lines = []
    net, record, opt = run(name, resume_path=resume, log=lines.append)
    assert lines[0].startswith("resumed from")
    assert _bytes(net.state_dict()) == _bytes(reference_net.state_dict())
    assert _bytes(record.stacked()) == _bytes(reference.stacked())
    assert _bytes(opt) == _bytes(ref_opt)


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        st.make_strategy("si", {}, loss="mse", seed=0)
