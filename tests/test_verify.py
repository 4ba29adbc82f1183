"""`ntkpipe verify`: bad files under results/ found (unreadable, incomplete, misplaced,
leftover temporaries), good ones left alone, and --repair removing exactly the bad ones."""

import json

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


@pytest.mark.parametrize("damage, problem", [
    (lambda r: truncate(r / "runs" / RUN / "phase1.pt"), "not a readable checkpoint"),
    (lambda r: (r / "runs" / RUN / "phase1.pt").write_bytes(b""), "empty file"),
    (lambda r: truncate(r / "runs" / RUN / SHIFT / "metrics.nc"), "not a readable NetCDF"),
    (lambda r: truncate(r / "data/digits.npz"), "not a readable array file"),
    (lambda r: (r / "figures/a.png").write_bytes(b"GIF89a"), "not a PNG image"),
    (lambda r: (r / "scorecard.csv").write_text("a,b\n1\n"), "row 2 has another number"),
    (lambda r: (r / "runs" / RUN / ".phase1.pt.x1y2.tmp").write_bytes(b"12"),
     "leftover temporary file"),
    (lambda r: metrics_file(r / "runs" / RUN / SHIFT / "metrics.nc", drop=("accuracy_matrix",)),
     "lacks accuracy_matrix"),
    (lambda r: metrics_file(r / "runs" / RUN / SHIFT / "metrics.nc", run="dataset~digits/x"),
     "its provenance names run 'dataset~digits/x'"),
])
def test_each_kind_of_damage_is_found_and_repaired(results, damage, problem):
    damage(results)
    found = verify.verify(results)
    assert len(found) == 1 and problem in found[0].problem and not found[0].removed
    kept = sorted(p for p in results.rglob("*") if p.is_file())
    repaired = verify.verify(results, repair=True)
    assert [f.path for f in repaired] == [found[0].path] and repaired[0].removed
    after = sorted(p for p in results.rglob("*") if p.is_file())
    assert after == [p for p in kept if str(p) != found[0].path]  # only the bad one went
    assert verify.verify(results) == []


def test_the_report_says_what_to_do(results):
    truncate(results / "runs" / RUN / "phase1.pt")
    found = verify.verify(results)
    lines = verify.report(found, 5, False)
    assert lines[0].startswith(str(results / "runs" / RUN / "phase1.pt") + ": ")
    assert "`ntkpipe verify --repair` removes them" in lines[-1]
    assert json.loads(json.dumps(verify.as_json(found, 5)))["bad"][0]["removed"] is False
