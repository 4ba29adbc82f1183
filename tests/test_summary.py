"""Tests of ntkpipe.summary.combine / collect and the sweep ids they rely on."""

from __future__ import annotations


import numpy as np
import pytest
import xarray as xr

from ntkpipe import store, sweep
from ntkpipe.summary import collect, combine, run_parameters
from ntkpipe.sweep import PHASE1_KEYS, SHIFT_KEYS, SWEEP_KEYS

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2}
PROBES = [0, 1]
TASKS = [1, 2]


def _value(base: float, probe: int, step: int) -> float:
    return base + 100.0 * probe + step


def fake_run(point: dict, steps: list[int], base: float, boundary: int,
             diverged: int = -1) -> xr.Dataset:
    """A per-run metrics dataset shaped like the output of stages.compute_metrics."""
    steps_a = np.array(steps, dtype=np.int64)
    pm = np.array([[_value(base, p, s) for s in steps] for p in PROBES])
    acc = np.array([[base + 10 * s + t for t in TASKS] for s in steps]) / 1e6
    ds = xr.Dataset(
        {"spectral_norm": (("probe", "step"), pm, {"long_name": "spectral norm"}),
         "kernel_distance": (("probe", "step"), pm + 0.5),
         "kernel_velocity": (("probe", "step"), pm + 0.25),
         "kernel_alignment": (("probe", "step"), pm + 0.75),
         "test_accuracy": (("step", "task"), acc),
         "boundary_step": ("boundary", np.array([boundary], dtype=np.int64)),
         "diverged_step": ((), diverged)},
        coords={"step": steps_a, "phase": ("step", (steps_a >= boundary).astype(int) + 1),
                "epoch": ("step", steps_a // 3), "probe": PROBES, "task": TASKS,
                "boundary": [1]},
    )
    ds.attrs.update(store.dataset_attrs("ntkpipe kernel metrics", store.provenance(
        wildcards={"run": sweep.run_id(point), "shift": sweep.shift_id(point)})))
    return ds


RUNS = [  # (overrides, steps, base, boundary, diverged)
    (dict(width=64, regime="lazy", seed=0), [0, 1, 2, 4, 8], 1000.0, 4, -1),
    (dict(width=256, regime="lazy", seed=0), [0, 1, 3, 6], 2000.0, 3, -1),
    (dict(width=64, regime="feature", seed=1), [0, 2, 4, 5, 9], 3000.0, 4, 5),
    (dict(width=256, regime="feature", seed=1, shared_classes=2), [0, 1, 2, 7], 4000.0, 2, -1),
]


def _points():
    return [{**BASE, **over} for over, *_ in RUNS]


@pytest.fixture(scope="module")
def runs():
    return [fake_run({**BASE, **over}, steps, base, b, d) for over, steps, base, b, d in RUNS]


@pytest.fixture(scope="module")
def combined(runs):
    return combine(runs, provenance=store.provenance(seed=None))


def _cell(ds, point, **own):
    sel = {k: point[k] for k in SWEEP_KEYS}
    return ds.sel(**sel, **own)


def test_every_sweep_key_is_a_dimension(combined):
    for k in SWEEP_KEYS:
        assert k in combined.dims
    assert combined["spectral_norm"].dims == (*SWEEP_KEYS, "probe", "step")
    assert combined["test_accuracy"].dims == (*SWEEP_KEYS, "step", "task")
    assert combined["diverged_step"].dims == SWEEP_KEYS
    assert combined.sizes["width"] == 2 and combined.sizes["regime"] == 2
    assert combined.sizes["seed"] == 2 and combined.sizes["shared_classes"] == 2
    assert combined.sizes["dataset"] == combined.sizes["lr"] == 1
    np.testing.assert_array_equal(combined["width"], [64, 256])
    np.testing.assert_array_equal(combined["shared_classes"], [0, 2])
    assert list(combined["regime"].values) == ["feature", "lazy"]
    # the union of every run's step grid, sorted
    np.testing.assert_array_equal(combined["step"], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    # per-run coordinates along `step` are dropped
    assert "phase" not in combined.coords and "epoch" not in combined.coords
    assert combined.attrs["runs"] == 4
    assert combined.attrs["title"] == "ntkpipe sweep summary"


def test_values_land_in_their_cells(combined):
    for point, (over, steps, base, boundary, diverged) in zip(_points(), RUNS):
        for p in PROBES:
            got = _cell(combined, point, probe=p)
            for s in steps:
                assert got["spectral_norm"].sel(step=s).item() == _value(base, p, s)
                assert got["kernel_distance"].sel(step=s).item() == _value(base, p, s) + 0.5
                assert got["kernel_velocity"].sel(step=s).item() == _value(base, p, s) + 0.25
                assert got["kernel_alignment"].sel(step=s).item() == _value(base, p, s) + 0.75
            # steps this run has no snapshot at stay NaN
            missing = sorted(set(combined["step"].values) - set(steps))
            assert missing
            assert np.isnan(got["spectral_norm"].sel(step=missing).values).all()
        cell = _cell(combined, point)
        for s in steps:
            np.testing.assert_allclose(cell["test_accuracy"].sel(step=s).values,
                                       [(base + 10 * s + t) / 1e6 for t in TASKS], rtol=0)
        assert cell["boundary_step"].sel(boundary=1).item() == boundary
        assert cell["diverged_step"].item() == diverged


def test_cells_no_run_has_are_nan(combined):
    filled = {tuple(p[k] for k in SWEEP_KEYS) for p in _points()}
    n_nan = 0
    for w in (64, 256):
        for r in ("feature", "lazy"):
            for s in (0, 1):
                for k in (0, 2):
                    point = {**BASE, "width": w, "regime": r, "seed": s, "shared_classes": k}
                    cell = _cell(combined, point)
                    if tuple(point[k] for k in SWEEP_KEYS) in filled:
                        assert np.isfinite(cell["diverged_step"].item())
                    else:
                        n_nan += 1
                        for name in combined.data_vars:
                            assert np.isnan(cell[name].values).all(), (point, name)
    assert n_nan == 16 - 4
    # total finite entries: exactly what the runs brought
    n_norm = sum(len(steps) * len(PROBES) for _, steps, *_ in RUNS)
    assert int(np.isfinite(combined["spectral_norm"].values).sum()) == n_norm


def test_similarity_coordinate(combined):
    sim = combined["similarity"]
    assert sim.dims == ("classes_per_task", "shared_classes")
    np.testing.assert_allclose(sim.sel(classes_per_task=5).values, [0.0, 2 / 8])


def test_similarity_grid_over_two_task_sizes():
    pts = [({"classes_per_task": 3, "shared_classes": 0}), ({"classes_per_task": 5,
                                                             "shared_classes": 3}),
           ({"classes_per_task": 5, "shared_classes": 5})]
    out = combine([fake_run({**BASE, **p}, [0, 1], 10.0 * i, 1) for i, p in enumerate(pts)],
                  provenance={})
    np.testing.assert_array_equal(out["shared_classes"], [0, 3, 5])
    expected = [[k / (2 * c - k) for k in (0, 3, 5)] for c in (3, 5)]
    np.testing.assert_allclose(out["similarity"].values, expected)
    assert out["similarity"].sel(classes_per_task=5, shared_classes=3).item() == \
        pytest.approx(3 / 7)
    assert out["similarity"].sel(classes_per_task=5, shared_classes=5).item() == 1.0


def test_sel_by_width(combined):
    narrow = combined.sel(width=64)
    assert "width" not in narrow.dims
    np.testing.assert_array_equal(
        narrow["spectral_norm"].sel(regime="lazy", seed=0, shared_classes=0, probe=1)
        .squeeze(drop=True).sel(step=[0, 1, 2, 4, 8]).values,
        [_value(1000.0, 1, s) for s in (0, 1, 2, 4, 8)])
    wide = combined["spectral_norm"].sel(width=[256])
    assert wide.sizes["width"] == 1


def test_run_parameters_from_wildcards(runs):
    assert run_parameters(runs[3]) == {**BASE, "width": 256, "regime": "feature", "seed": 1,
                                       "shared_classes": 2}


def test_mixed_batch_sizes_become_text_and_collect_writes_netcdf(tmp_path):
    a = fake_run({**BASE, "batch_size": 64}, [0, 1, 2], 1.0, 1)
    b = fake_run({**BASE, "batch_size": "full", "optimizer": "gd"}, [0, 2, 4], 2.0, 2)
    out = combine([a, b], provenance={})
    assert list(out["batch_size"].values) == ["64", "full"]
    cell = out["spectral_norm"].sel(batch_size="full", optimizer="gd").squeeze(drop=True)
    assert cell.sel(probe=0, step=4).item() == _value(2.0, 0, 4)
    assert np.isnan(cell.sel(probe=0, step=1).item())
    paths = []
    for i, ds in enumerate([a, b]):
        paths.append(tmp_path / f"run{i}" / "metrics.nc")
        store.write_netcdf(ds, paths[-1])
    collect(paths, tmp_path / "summary.nc", provenance=store.provenance(seed=0))
    back = store.open_netcdf(tmp_path / "summary.nc")
    assert list(back["batch_size"].values) == ["64", "full"]
    xr.testing.assert_allclose(back["spectral_norm"], out["spectral_norm"])
    assert back.attrs["runs"] == 2


def test_collect_without_files(tmp_path):
    with pytest.raises(ValueError, match="no metrics files"):
        collect([], tmp_path / "s.nc", provenance={})


# ---- sweep ids ----------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, text", [
    ("lr", 0.1, "0.1"), ("lr", 1e-05, "1e-05"), ("lr", 2, "2.0"), ("alpha", 0.0, "0.0"),
    ("alpha", 1 / 3, repr(1 / 3)), ("width", 256, "256"), ("seed", 0, "0"),
    ("batch_size", 64, "64"), ("batch_size", "full", "full"), ("regime", "lazy", "lazy"),
    ("arch", "cnn-relu", "cnn-relu"),
])
def test_format_and_parse_value_round_trip(key, value, text):
    assert sweep.format_value(key, value) == text
    back = sweep.parse_value(key, text)
    assert back == value and type(back) is type(float(value) if key in ("lr", "alpha")
                                                 else value)


def test_ids_round_trip():
    point = {**BASE, "lr": 0.003, "alpha": 0.25, "batch_size": "full", "shift": "frequency",
             "shared_classes": 5}
    rid, sid = sweep.run_id(point), sweep.shift_id(point)
    assert rid == ("dataset~digits/classes_per_task~5/arch~mlp/depth~2/activation~relu/"
                   "optimizer~sgd/loss~cross_entropy/batch_size~full/regime~lazy/width~64/"
                   "lr~0.003/seed~0")
    assert sid == "shift~frequency/shared_classes~5/alpha~0.25/n_tasks~2"
    assert sweep.parse_id(rid, PHASE1_KEYS) == {k: point[k] for k in PHASE1_KEYS}
    assert sweep.parse_id(sid, SHIFT_KEYS) == {k: point[k] for k in SHIFT_KEYS}
    assert sweep.split_id(point) == "dataset~digits/classes_per_task~5/seed~0"


@pytest.mark.parametrize("text, match", [
    ("shift~conceptual/shared_classes~0/alpha~0.0", "3 segments, expected 4"),
    ("shift~conceptual/shared_classes~0/alpha~0.0/n_tasks~2/x~1", "5 segments"),
    ("shift~conceptual/shared~0/alpha~0.0/n_tasks~2", "'shared_classes~<value>'"),
    ("shift~conceptual/shared_classes=0/alpha~0.0/n_tasks~2", "should be 'shared_classes~"),
    ("alpha~0.0/shift~conceptual/shared_classes~0/n_tasks~2", "should be 'shift~"),
])
def test_parse_id_errors(text, match):
    with pytest.raises(ValueError, match=match):
        sweep.parse_id(text, SHIFT_KEYS)


def test_parse_id_bad_value():
    with pytest.raises(ValueError):
        sweep.parse_id("shift~conceptual/shared_classes~two/alpha~0.0/n_tasks~2", SHIFT_KEYS)


def test_runs_without_boundaries_combine_with_others(runs):
    """A single-task run (n_tasks 1) has an empty `boundary` dimension."""
    point = {**BASE, "n_tasks": 1, "seed": 5}
    single = fake_run(point, [0, 1, 5], 500.0, boundary=99).isel(boundary=slice(0, 0))
    ds = combine([*runs, single], provenance={})
    cell = ds.sel(n_tasks=1, seed=5, width=64, regime="lazy", shared_classes=0)
    assert np.isfinite(cell["spectral_norm"].sel(probe=0).dropna("step")).all()
    assert np.isnan(cell["boundary_step"]).all()
