"""Training loop: schedule, convergence, boundaries, divergence, and exact resume."""

import io

import pytest
import torch

from ntkpipe.models import build_model
from ntkpipe.train import Schedule, TaskSpec, loss_value, snapshot_schedule, train_tasks


def test_snapshot_schedule_exact():
    assert snapshot_schedule(100, 5) == [0, 1, 3, 10, 32, 100]
    assert snapshot_schedule(100, 5, dense_steps=4) == [0, 1, 2, 3, 4, 10, 32, 100]
    assert snapshot_schedule(3, 5, dense_steps=10) == [0, 1, 2, 3]
    assert snapshot_schedule(20, 2, every=6) == [0, 1, 6, 12, 18, 20]
    assert snapshot_schedule(5, 2, dense_steps=1, every=0) == [0, 1, 5]


def test_losses_exact():
    out = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0])
    # MSE 0.5‖f − y‖² averaged over samples: (0 + 0.5·(1 + 9)) / 2
    assert loss_value(out, y, "mse").item() == pytest.approx(2.5)
    expected = torch.nn.functional.cross_entropy(out, y)
    assert loss_value(out, y, "cross_entropy").item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="loss must be"):
        loss_value(out, y, "hinge")


def blobs(n=64, classes=(0, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat(n // len(classes))
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3
    x[:, 0, 0, 0] += y.float() * 3 - 1.5 * (y == classes[0]).float()
    return x, y


def model(seed=0):
    return build_model("mlp", (1, 4, 4), 4, width=16, depth=1, activation="relu",
                       regime="feature", seed=seed)


def test_converges_and_snapshots_on_schedule():
    x, y = blobs()
    net = model()
    rec, _ = train_tasks(net, [TaskSpec(1, x, y, max_epochs=50, target_accuracy=1.0)],
                         Schedule(lr=0.5, batch_size=16, log_points=6))
    assert rec.converged == [True]
    assert rec.epochs_run[0] < 50
    wanted = set(snapshot_schedule(50 * 4, 6))
    assert all(s in wanted for s in rec.steps[:-1])
    assert rec.steps[0] == 0 and rec.steps[-1] == rec.step == rec.epochs_run[0] * 4
    assert torch.equal(rec.states[-1]["1.weight"], net.state_dict()["1.weight"])


def test_later_tasks_do_not_repeat_the_boundary_snapshot():
    x1, y1 = blobs(classes=(0, 1))
    x2, y2 = blobs(classes=(2, 3), seed=1)
    tasks = [TaskSpec(1, x1, y1, max_epochs=2), TaskSpec(2, x2, y2, max_epochs=2, dense_steps=3)]
    rec, _ = train_tasks(model(), tasks, Schedule(lr=0.1, batch_size=16, log_points=3))
    assert rec.boundaries == [0, 8]
    assert rec.steps == sorted(set(rec.steps))  # no step twice
    assert [s for s, t in zip(rec.steps, rec.tasks) if t == 2][:3] == [9, 10, 11]
    assert rec.tasks[rec.steps.index(8)] == 1


def test_full_batch_gradient_descent_takes_one_step_per_epoch():
    x, y = blobs()
    rec, _ = train_tasks(model(), [TaskSpec(1, x, y, max_epochs=7)],
                         Schedule(lr=0.1, optimizer="gd", batch_size="full", log_points=3))
    assert rec.step == 7


def test_divergence_stops_cleanly():
    x, y = blobs()
    x = x * 1e3
    rec, _ = train_tasks(model(), [TaskSpec(1, x, y, max_epochs=50)],
                         Schedule(lr=1e6, loss="mse", batch_size=16))
    assert rec.diverged_step >= 0
    assert rec.step <= rec.diverged_step + 1
    assert rec.losses[-1] != rec.losses[-1] or abs(rec.losses[-1]) == float("inf")


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash_is_byte_identical(tmp_path):
    x1, y1 = blobs()
    x2, y2 = blobs(classes=(2, 3), seed=1)

    def tasks():
        return [TaskSpec(1, x1, y1, max_epochs=6), TaskSpec(2, x2, y2, max_epochs=6, dense_steps=2)]

    schedule = Schedule(lr=0.2, batch_size=16, log_points=5, checkpoint_every=4, momentum=0.9)
    reference_net = model()
    reference, ref_opt = train_tasks(reference_net, tasks(), schedule)

    resume = tmp_path / "state.resume"
    epochs_seen = []

    def crash_in_task_two(line):
        epochs_seen.append(line)
        if line.startswith("task 2 epoch 3"):
            raise Crash()

    with pytest.raises(Crash):
        train_tasks(model(), tasks(), schedule, resume_path=resume, log=crash_in_task_two)
    assert resume.is_file()
    resumed_lines = []
    net = model()
    record, opt = train_tasks(net, tasks(), schedule, resume_path=resume,
                              log=resumed_lines.append)
    assert resumed_lines[0].startswith("resumed from")
    assert _bytes(record.stacked()) == _bytes(reference.stacked())
    assert _bytes(net.state_dict()) == _bytes(reference_net.state_dict())
    assert _bytes(opt) == _bytes(ref_opt)


def test_progress_bar_draws_only_on_a_terminal():
    from ntkpipe.progress import ProgressBar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen, pipe = Terminal(), io.StringIO()
    for stream in (screen, pipe):
        bar = ProgressBar(4, "training", stream=stream, width=8)
        bar.update(2, "loss 0.5")
        bar.close()
    assert "training [####....] 2/4 loss 0.5" in screen.getvalue()
    assert pipe.getvalue() == ""


def test_target_loss_stops_at_the_first_epoch_reaching_it():
    x, y = blobs()
    rec, _ = train_tasks(model(), [TaskSpec(1, x, y, max_epochs=200, target_loss=0.2)],
                         Schedule(lr=0.05, loss="mse", optimizer="gd", batch_size="full"))
    stop = rec.epochs_run[0]
    assert rec.converged == [True] and 1 < stop < 200
    # full batch: losses[e] is the training loss after e steps, i.e. at the end of epoch e
    assert len(rec.losses) == stop
    assert all(loss > 0.2 for loss in rec.losses[1:stop])
