"""Reliability: same bytes from the same seed, SIGKILL then resume, divergence recorded
downstream, corrupted inputs named."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import defaults

from ntkpipe import stages, store

RUN = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 1,
       "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "target": "labels",
        "epochs": "auto", "batch_size": 64,
       "regime": "feature", "width": 16, "lr": 0.1, "seed": 3}
TRAIN = defaults("train", phase1={"target_accuracy": 0.99, "min_epochs": 1, "max_epochs": 4},
                 phase2={"epochs": 2}, snapshots={"log_points": 4, "dense_steps": 3},
                 checkpoint_every=5)
MODEL = {"bias": True, "bias_std": 0.1}
NTK = {"kernels": ["trace"], "dtype": "float64", "max_memory_gb": 1}
METRICS = {**defaults("metrics", spectrum_top=20), "status": defaults("status")}
SPLIT = {"classes_per_task": 5, "seed": 3, "order": "natural", "train_per_task": None,
         "probe_size": 15, "imbalance": 8.0}
PROV = {"test": "1"}


def run_all(root: Path, run=RUN, train=TRAIN) -> dict[str, Path]:
    """Every stage of one run, in `root`; returns the output paths."""
    p = {name: root / name for name in ("data.npz", "task1.npz", "tasks.npz", "phase1.pt",
                                        "phase1_snapshots.pt", "phase2.pt",
                                        "phase2_snapshots.pt", "ntk.nc", "metrics.nc")}
    stages.prepare_data("digits", None, p["data.npz"], provenance=PROV)
    stages.make_split(p["data.npz"], p["task1.npz"], provenance=PROV,
                      split={**SPLIT, "n_tasks": 1, "probe_tasks": (1,)})
    stages.make_split(p["data.npz"], p["tasks.npz"], provenance=PROV,
                      split={**SPLIT, "n_tasks": 2, "shared_classes": 1, "probe_tasks": (1, 2)})
    stages.train_phase1(p["data.npz"], p["task1.npz"], p["phase1.pt"], p["phase1_snapshots.pt"],
                        run=run, train_cfg=train, model_cfg=MODEL, provenance=PROV)
    stages.train_phase2(p["data.npz"], p["tasks.npz"], p["phase1.pt"], p["phase2.pt"],
                        p["phase2_snapshots.pt"], run=run, train_cfg=train, model_cfg=MODEL,
                        provenance=PROV)
    stages.extract_ntk(p["data.npz"], p["tasks.npz"],
                       [p["phase1_snapshots.pt"], p["phase2_snapshots.pt"]], p["ntk.nc"],
                       run=run, model_cfg=MODEL, ntk_cfg=NTK, provenance=PROV)
    stages.compute_metrics(p["ntk.nc"], p["metrics.nc"], metrics_cfg=METRICS, provenance=PROV)
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("reference"))


def test_same_seed_same_bytes_for_every_output(reference, tmp_path):
    again = run_all(tmp_path)
    for name, path in reference.items():
        assert path.read_bytes() == again[name].read_bytes(), f"{name} differs between runs"


def test_sigkill_during_training_then_rerun_is_byte_identical(reference, tmp_path):
    """Phase 1 killed with SIGKILL after its first resumable state, then rerun."""
    for name in ("data.npz", "task1.npz"):
        (tmp_path / name).write_bytes(reference[name].read_bytes())
    slow = {**TRAIN, "checkpoint_every": 1}
    script = f"""
import time, sys
from ntkpipe import stages
stages.train_phase1({str(tmp_path / 'data.npz')!r}, {str(tmp_path / 'task1.npz')!r},
    {str(tmp_path / 'phase1.pt')!r}, {str(tmp_path / 'phase1_snapshots.pt')!r},
    run={RUN!r}, train_cfg={slow!r}, model_cfg={MODEL!r}, provenance={PROV!r},
    log=lambda line: time.sleep(1.0))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    resume = tmp_path / "phase1.pt.resume"
    deadline = time.time() + 120
    while not resume.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert resume.exists(), "no resumable state appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "phase1.pt").exists()  # the kill left no half-written output
    lines = []
    stages.train_phase1(tmp_path / "data.npz", tmp_path / "task1.npz", tmp_path / "phase1.pt",
                        tmp_path / "phase1_snapshots.pt", run=RUN, train_cfg=slow,
                        model_cfg=MODEL, provenance=PROV, log=lines.append)
    assert lines[0].startswith("resumed from")
    assert not resume.exists()
    for name in ("phase1.pt", "phase1_snapshots.pt"):
        assert (tmp_path / name).read_bytes() == reference[name].read_bytes(), name


def test_divergence_is_recorded_downstream(tmp_path):
    paths = run_all(tmp_path, run={**RUN, "lr": 1e9, "loss": "mse"})
    snaps = store.load_torch(paths["phase1_snapshots.pt"])
    assert snaps["diverged_step"] >= 0
    ds = store.open_netcdf(paths["metrics.nc"])
    assert int(ds["diverged_step"]) == snaps["diverged_step"]
    assert len(ds["boundary_step"]) == 0  # task 2 was never trained


@pytest.mark.parametrize("name", ["data.npz", "phase1.pt", "phase1_snapshots.pt", "ntk.nc",
                                  "tasks.npz"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_inputs_are_named(reference, tmp_path, name, damage):
    data = reference[name].read_bytes()
    bad = tmp_path / name
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(2048),
                     "empty": b""}[damage])
    readers = {"data.npz": stages.load_data, "phase1.pt": store.load_torch,
               "phase1_snapshots.pt": store.load_torch, "ntk.nc": store.open_netcdf,
               "tasks.npz": stages.load_split}
    with pytest.raises(store.CorruptFileError, match=str(bad).replace("~", r"\~")):
        readers[name](bad)


def test_a_pickled_object_checkpoint_is_refused(tmp_path):
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": np.random.default_rng(0)}, path)  # arbitrary pickled object
    with pytest.raises(store.CorruptFileError, match="refused to load"):
        store.load_torch(path)


def test_metrics_match_a_direct_computation_from_the_kernels(reference):
    """metrics.nc's per-step values recomputed independently from ntk.nc."""
    from ntkpipe import metrics as m

    kernels = store.open_netcdf(reference["ntk.nc"])
    out = store.open_netcdf(reference["metrics.nc"])
    y = np.eye(kernels.sizes["output"])[kernels["label"].sel(probe=1).values]
    stack = kernels["ntk_trace"].sel(probe=1).values.astype(np.float64)
    for t in range(len(stack)):
        at = out.isel(step=t).sel(probe=1)
        assert float(at["spectral_norm"]) == pytest.approx(np.linalg.eigvalsh(stack[t])[-1])
        assert float(at["kernel_distance"]) == pytest.approx(m.kernel_distance(stack[0], stack[t]),
                                                             abs=1e-12)
        assert float(at["kernel_alignment"]) == pytest.approx(m.cka(stack[t], y @ y.T))
        assert float(at["target_alignment"]) == pytest.approx(
            np.trace(y.T @ stack[t] @ y) / (np.linalg.norm(stack[t]) * (y * y).sum()))
        u = np.linalg.eigh(stack[t])[1][:, -1]
        assert float(at["top_eigenvector_alignment"]) == pytest.approx(
            ((u @ y) ** 2).sum() / (y * y).sum())
