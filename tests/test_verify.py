"""`ntkpipe verify`: bad files under results/ found (unreadable, incomplete, misplaced,
leftover temporaries), good ones left alone, and --repair removing exactly the bad ones."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from ntkpipe import store, verify

RUN = "dataset~digits/width~16/seed~0"
SHIFT = "shift~conceptual/n_tasks~2"


def metrics_file(path, run=RUN, shift=SHIFT, drop=()):
    variables = {"spectral_norm": ("step", np.ones(3)), "kernel_distance": ("step", np.zeros(3)),
                 "accuracy_matrix": (("trained_task", "task"), np.eye(2)),
                 "diverged_step": ((), -1)}
    ds = xr.Dataset({k: v for k, v in variables.items() if k not in drop})
    ds.attrs["wildcards_json"] = json.dumps({"run": run, "shift": shift})
    store.write_netcdf(ds, path)


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    base = root / "runs" / RUN
    store.save_torch({"model": {"w": torch.ones(2)}}, base / "phase1.pt")
    metrics_file(base / SHIFT / "metrics.nc")
    store.save_arrays({"x": np.ones(3)}, root / "data/digits.npz", meta={"a": 1})
    (root / "figures").mkdir(parents=True)
    (root / "figures/a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (root / "scorecard.csv").write_text("study,claim\nr,c\n")
    (root / "logs").mkdir()
    (root / "logs/x.log").write_text("not checked")
    return root


def test_a_good_tree_is_all_good(results):
    assert verify.verify(results) == []
    assert verify.count_files(results) == 5  # logs are not outputs
    assert verify.report([], 5, False) == ["5 files checked: all good"]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


P1, M = f"runs/{RUN}/phase1.pt", f"runs/{RUN}/{SHIFT}/metrics.nc"
AGG = {"figures/a.png", "scorecard.csv"}  # built from every run


@pytest.mark.parametrize("damage, problem, removed", [
    (lambda r: truncate(r / P1), "not a readable checkpoint", {P1, M} | AGG),
    (lambda r: (r / P1).write_bytes(b""), "empty file", {P1, M} | AGG),
    (lambda r: truncate(r / M), "not a readable NetCDF", {M} | AGG),
    (lambda r: truncate(r / "data/digits.npz"), "not a readable array file",
     {"data/digits.npz", P1, M} | AGG),
    (lambda r: (r / "figures/a.png").write_bytes(b"GIF89a"), "not a PNG image",
     {"figures/a.png"}),  # nothing is built from a figure
    (lambda r: (r / "scorecard.csv").write_text("a,b\n1\n"), "row 2 has another number",
     {"scorecard.csv"}),
    (lambda r: (r / ".cache").mkdir() or (r / ".cache/plan.json").write_text("{"),
     "not readable", {".cache/plan.json"}),
    (lambda r: (r / "runs" / RUN / ".phase1.pt.x1y2.tmp").write_bytes(b"12"),
     "leftover temporary file", {f"runs/{RUN}/.phase1.pt.x1y2.tmp"}),
    (lambda r: metrics_file(r / M, drop=("accuracy_matrix",)), "lacks accuracy_matrix", {M} | AGG),
    (lambda r: metrics_file(r / M, run="dataset~digits/x"),
     "its provenance names run 'dataset~digits/x'", {M} | AGG),
])
def test_each_kind_of_damage_is_found_and_repaired_with_what_was_built_from_it(
        results, damage, problem, removed):
    damage(results)
    found = verify.verify(results)
    assert len(found) == 1 and problem in found[0].problem and not found[0].removed
    before = {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()}
    repaired = verify.verify(results, repair=True)
    assert repaired[0].path == found[0].path and all(f.removed for f in repaired)
    assert {str(Path(f.path).relative_to(results)) for f in repaired} == removed
    assert all(f.problem == f"built from {found[0].path}" for f in repaired[1:])
    after = {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()}
    assert after == before - removed
    assert verify.verify(results) == []


def test_a_bad_split_takes_the_runs_trained_on_it(results):
    split = results / "splits/dataset~digits/classes_per_task~5/seed~0/task1.npz"
    store.save_arrays({"train_1": np.arange(3)}, split)
    other = results / "runs/dataset~digits/width~16/seed~1/phase1.pt"
    store.save_torch({"model": {}}, other)
    run = "dataset~digits/classes_per_task~5/width~16/seed~0"
    mine = results / "runs" / run / "phase1.pt"
    store.save_torch({"model": {}}, mine)
    truncate(split)
    removed = {Path(f.path) for f in verify.verify(results, repair=True)}
    assert split in removed and mine in removed and other not in removed


def test_the_report_says_what_to_do(results):
    truncate(results / "runs" / RUN / "phase1.pt")
    found = verify.verify(results)
    lines = verify.report(found, 5, False)
    assert lines[0].startswith(str(results / "runs" / RUN / "phase1.pt") + ": ")
    assert "`ntkpipe verify --repair` removes them" in lines[-1]
    assert json.loads(json.dumps(verify.as_json(found, 5)))["bad"][0]["removed"] is False


def test_a_bad_task_sequence_takes_every_strategys_runs_on_it(results):
    tasks = "shift~conceptual/shared_classes~0/alpha~0.0/n_tasks~2"
    split = results / "splits/dataset~digits/classes_per_task~5/seed~0" / tasks / "tasks.npz"
    store.save_arrays({"train_1": np.arange(3)}, split)
    run = "dataset~digits/classes_per_task~5/width~16/seed~0"
    mine = [results / "runs" / run / f"{tasks}/strategy~{s}" / "phase2.pt"
            for s in ("finetune", "ewc")]
    other = results / "runs" / run / "shift~conceptual/shared_classes~5/alpha~0.0/n_tasks~2" \
        / "strategy~finetune" / "phase2.pt"
    for path in (*mine, other):
        store.save_torch({"model": {}}, path)
    truncate(split)
    removed = {Path(f.path) for f in verify.verify(results, repair=True)}
    assert split in removed and set(mine) <= removed and other not in removed
