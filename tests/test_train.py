"""Training loop: schedule, convergence, boundaries, divergence, and exact resume."""

import io

import pytest
import torch

import numpy as np

from ntkpipe.models import build_model
from ntkpipe.schedule import LogSpacer, log_grid
from ntkpipe.train import (Schedule, TaskSpec, has_converged, loss_value, snapshot_schedule,
                           train_tasks)


def test_snapshot_schedule_exact():
    assert snapshot_schedule(100, 5) == [0, 1, 3, 10, 33, 100]  # geomspace(1, 100, 5)
    assert snapshot_schedule(100, 5, dense_steps=4) == [0, 1, 3, 10, 33, 96, 97, 98, 99, 100]
    assert snapshot_schedule(100, 5, dense_steps=4, first_task=False) == [
        1, 2, 3, 4, 10, 33, 96, 97, 98, 99, 100]  # a later task: dense on both sides
    assert snapshot_schedule(3, 5, dense_steps=10) == [0, 1, 2, 3]
    assert snapshot_schedule(20, 2, every=6) == [0, 1, 6, 12, 18, 20]


def spaced(points, end):
    spacer = LogSpacer(points)
    most = 0
    for step in range(1, end + 1):
        if spacer.wants(step):
            spacer.add(step)
        most = max(most, len(spacer.kept))
    return spacer.select(end), most


@pytest.mark.parametrize("end", [60, 600, 6000, 60000])
def test_log_spaced_snapshots_cover_the_steps_the_task_ran(end):
    """Whatever the final length, ~`points` snapshots close to geomspace(1, end, points), from
    a bounded number of candidates held while the length was unknown."""
    chosen, most = spaced(16, end)
    assert most <= 2 * 16 + 3
    assert chosen[0] == 1 and chosen[-1] == end and len(chosen) >= 14
    spacing = np.log(end) / 15
    for target in np.geomspace(1, end, 16):
        assert np.min(np.abs(np.log(chosen) - np.log(target))) <= 0.7 * spacing + np.log(2)


def test_log_grid():
    assert log_grid(100, 4).tolist() == [0, 1, 10, 100]
    assert log_grid(0, 4).tolist() == [0, 1]


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


def test_converges_and_snapshots_over_the_steps_it_ran():
    x, y = blobs()
    net = model()
    rec, _ = train_tasks(net, [TaskSpec(1, x, y, max_epochs=50, target_accuracy=1.0,
                                        dense_steps=3)],
                         Schedule(lr=0.5, batch_size=16, log_points=6))
    assert rec.converged == [True] and rec.stop_reasons == ["converged"]
    assert rec.epochs_run[0] < 50
    assert rec.steps == snapshot_schedule(rec.step, 6, dense_steps=3)  # sized by its real length
    assert rec.steps[0] == 0 and rec.steps[-1] == rec.step == rec.epochs_run[0] * 4
    assert torch.equal(rec.states[-1]["1.weight"], net.state_dict()["1.weight"])


def test_every_boundary_has_dense_steps_on_both_sides():
    x1, y1 = blobs(classes=(0, 1))
    x2, y2 = blobs(classes=(2, 3), seed=1)
    tasks = [TaskSpec(1, x1, y1, max_epochs=5, dense_steps=3),
             TaskSpec(2, x2, y2, max_epochs=5, dense_steps=3)]
    rec, _ = train_tasks(model(), tasks, Schedule(lr=0.1, batch_size=16, log_points=3))
    assert rec.boundaries == [0, 20]
    assert rec.steps == sorted(set(rec.steps))  # no step twice
    assert set(range(17, 24)) <= set(rec.steps)  # the last 3 + 1 of task 1, the first 3 of task 2
    assert set(range(37, 41)) <= set(rec.steps)  # and the last 3 + 1 of task 2
    assert rec.tasks[rec.steps.index(20)] == 1 and rec.tasks[rec.steps.index(21)] == 2
    assert rec.stop_reasons == ["epochs", "epochs"]


def test_snapshots_never_change_the_training():
    """Another snapshot density keeps the same dense windows with the same weights."""
    x1, y1 = blobs(classes=(0, 1))
    x2, y2 = blobs(classes=(2, 3), seed=1)
    runs = []
    for points, every in ((3, 0), (9, 7)):
        tasks = [TaskSpec(1, x1, y1, max_epochs=5, dense_steps=3),
                 TaskSpec(2, x2, y2, max_epochs=5, dense_steps=3)]
        rec, _ = train_tasks(model(), tasks, Schedule(lr=0.1, batch_size=16, log_points=points,
                                                      snapshot_every=every))
        runs.append({s: state for s, state in zip(rec.steps, rec.states)})
    assert len(runs[1]) > len(runs[0])
    for step in range(17, 24):
        assert all(torch.equal(runs[0][step][k], runs[1][step][k]) for k in runs[0][step])


def test_convergence_needs_the_accuracy_held_and_the_loss_levelled_off():
    task = TaskSpec(1, None, None, max_epochs=100, target_accuracy=0.99, plateau_epochs=3,
                    loss_tolerance=0.02)
    falling = [[1.0 * 0.9 ** e, 1.0] for e in range(10)]  # 10 % per epoch: still falling
    assert not has_converged(task, falling)
    flat = falling + [[falling[-1][0] * 0.99 ** e, 1.0] for e in range(1, 4)]
    assert has_converged(task, flat)  # 1 % per epoch over the last 3 epochs
    dropped = flat[:-1] + [[flat[-1][0], 0.98]]
    assert not has_converged(task, dropped)  # the accuracy did not hold
    assert has_converged(TaskSpec(1, None, None, 9, target_accuracy=0.99), [[5.0, 0.995]])
    assert has_converged(TaskSpec(1, None, None, 9, target_loss=0.1), [[0.09, 0.1]])
    assert not has_converged(TaskSpec(1, None, None, 9, target_loss=0.1, min_epochs=2),
                             [[0.09, 0.1]])


def test_a_budget_that_runs_out_is_flagged():
    x, y = blobs()
    rec, _ = train_tasks(model(), [TaskSpec(1, x, y, max_epochs=2, target_accuracy=1.0,
                                            plateau_epochs=5, loss_tolerance=1e-9)],
                         Schedule(lr=0.01, batch_size=16))
    assert rec.converged == [False] and rec.stop_reasons == ["budget"] and rec.epochs_run == [2]


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


def test_a_resume_file_left_by_other_settings_is_discarded_not_resumed(tmp_path):
    """Kill, change a setting (lr and momentum here), rerun: the same bytes as a clean run
    with the new setting, never the old optimiser state."""
    x1, y1 = blobs()

    def tasks():
        return [TaskSpec(1, x1, y1, max_epochs=6)]

    old = Schedule(lr=0.2, batch_size=16, log_points=5, checkpoint_every=4, momentum=0.0)
    new = Schedule(lr=0.1, batch_size=16, log_points=5, checkpoint_every=4, momentum=0.5)
    resume = tmp_path / "state.resume"

    def crash(line):
        if line.startswith("task 1 epoch 4"):
            raise Crash()

    with pytest.raises(Crash):
        train_tasks(model(), tasks(), old, resume_path=resume, resume_key="old", log=crash)
    assert resume.is_file()
    lines = []
    net = model()
    record, opt = train_tasks(net, tasks(), new, resume_path=resume, resume_key="new",
                              log=lines.append)
    assert lines[0].startswith("discarded") and not any("resumed" in l for l in lines)
    clean_net = model()
    clean, clean_opt = train_tasks(clean_net, tasks(), new)
    assert _bytes(record.stacked()) == _bytes(clean.stacked())
    assert _bytes(net.state_dict()) == _bytes(clean_net.state_dict())
    assert _bytes(opt) == _bytes(clean_opt)


def test_a_training_job_resume_key_follows_its_params_not_its_commit():
    from ntkpipe.stages.training import resume_key

    a = {"config_json": '{"lr": 0.1}', "wildcards_json": "{}", "git_commit": "abc"}
    assert resume_key(a) == resume_key({**a, "git_commit": "def"})
    assert resume_key(a) != resume_key({**a, "config_json": '{"lr": 0.2}'})


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
