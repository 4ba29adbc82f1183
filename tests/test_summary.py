"""Tests of ntkpipe.summary.combine / grid / collect and the sweep ids they rely on."""

from __future__ import annotations


import numpy as np
import pytest
import xarray as xr

from ntkpipe import store, sweep
from ntkpipe.summary import collect, combine, grid, run_parameters
from ntkpipe.sweep import PHASE1_KEYS, SHIFT_KEYS, SWEEP_KEYS

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "target": "labels",
        "epochs": "auto", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2, "strategy": "finetune"}
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


def _row(ds, point):
    """The index along `run` of the run a point names."""
    rows = np.flatnonzero((ds["run_id"] == sweep.run_id(point)).values
                          & (ds["shift_id"] == sweep.shift_id(point)).values)
    assert len(rows) == 1
    return int(rows[0])


def test_runs_stack_along_run_with_sweep_keys_as_coordinates(combined):
    assert combined.sizes["run"] == 4
    ids = [(sweep.run_id(p), sweep.shift_id(p)) for p in _points()]
    assert list(zip(combined["run_id"].values, combined["shift_id"].values)) == sorted(ids)
    for k in (*SWEEP_KEYS, "similarity", "run_id", "shift_id"):
        assert combined[k].dims == ("run",), k
    assert combined["spectral_norm"].dims == ("run", "probe", "step")
    assert combined["test_accuracy"].dims == ("run", "step", "task")
    assert combined["diverged_step"].dims == ("run",)
    for point in _points():
        row = _row(combined, point)
        assert {k: combined[k][row].item() for k in SWEEP_KEYS} == point
    assert combined["width"].dtype == np.int64 and combined["lr"].dtype == np.float64
    assert combined["regime"].dtype == object and combined["batch_size"].dtype == np.int64
    # the union of every run's step grid, sorted
    np.testing.assert_array_equal(combined["step"], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    # per-run coordinates along `step` are dropped
    assert "phase" not in combined.coords and "epoch" not in combined.coords
    assert combined.attrs["runs"] == 4
    assert combined.attrs["title"] == "ntkpipe sweep summary"
    assert combined["spectral_norm"].attrs["long_name"] == "spectral norm"


def test_values_land_in_their_runs(combined):
    for point, (over, steps, base, boundary, diverged) in zip(_points(), RUNS):
        run = combined.isel(run=_row(combined, point))
        for p in PROBES:
            got = run.sel(probe=p)
            for s in steps:
                assert got["spectral_norm"].sel(step=s).item() == _value(base, p, s)
                assert got["kernel_distance"].sel(step=s).item() == _value(base, p, s) + 0.5
                assert got["kernel_velocity"].sel(step=s).item() == _value(base, p, s) + 0.25
                assert got["kernel_alignment"].sel(step=s).item() == _value(base, p, s) + 0.75
            # steps this run has no snapshot at stay NaN
            missing = sorted(set(combined["step"].values) - set(steps))
            assert missing
            assert np.isnan(got["spectral_norm"].sel(step=missing).values).all()
        for s in steps:
            np.testing.assert_allclose(run["test_accuracy"].sel(step=s).values,
                                       [(base + 10 * s + t) / 1e6 for t in TASKS], rtol=0)
        assert run["boundary_step"].sel(boundary=1).item() == boundary
        assert run["diverged_step"].item() == diverged
    # total finite entries: exactly what the runs brought
    n_norm = sum(len(steps) * len(PROBES) for _, steps, *_ in RUNS)
    assert int(np.isfinite(combined["spectral_norm"].values).sum()) == n_norm


def test_similarity_coordinate(combined):
    for point in _points():
        k, c = point["shared_classes"], point["classes_per_task"]
        assert combined["similarity"].values[_row(combined, point)] == k / (2 * c - k)


def test_variables_and_grids_differ_between_runs():
    """(a) The union of variables over runs; one present in a later run only is NaN elsewhere,
    its dims and attrs from the first run that has it; text own dims survive."""
    a = fake_run({**BASE, "seed": 0}, [0, 2, 4], 10.0, 2)
    b = fake_run({**BASE, "seed": 1}, [0, 1, 3, 5], 20.0, 3)
    c = fake_run({**BASE, "seed": 2}, [0, 5], 30.0, 5)
    layers = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    b["layer_norm"] = (("step", "layer"), layers, {"long_name": "per-layer norm"})
    b = b.assign_coords(layer=["fc1", "fc0"])
    c["layer_norm"] = (("step", "layer"), np.array([[9.0], [10.0]]), {"long_name": "other"})
    c = c.assign_coords(layer=["out"])
    a["logits"] = (("output",), np.array([1.0, 2.0, 3.0]))  # a dim without a coordinate
    c["logits"] = (("output",), np.array([4.0, 5.0]))
    out = combine([c, a, b], provenance={})
    assert list(out["seed"].values) == [0, 1, 2]  # sorted by run id, not input order
    assert "output" not in out.coords
    np.testing.assert_array_equal(out["logits"].values,
                                  [[1.0, 2.0, 3.0], [np.nan] * 3, [4.0, 5.0, np.nan]])
    np.testing.assert_array_equal(out["step"], [0, 1, 2, 3, 4, 5])
    assert list(out["layer"].values) == ["fc0", "fc1", "out"]
    assert out["layer_norm"].dims == ("run", "step", "layer")
    assert out["layer_norm"].attrs["long_name"] == "per-layer norm"  # b sorts before c
    nan = np.nan
    np.testing.assert_array_equal(out["layer_norm"].values, [
        np.full((6, 3), nan),
        [[2.0, 1.0, nan], [4.0, 3.0, nan], [nan] * 3, [6.0, 5.0, nan], [nan] * 3,
         [8.0, 7.0, nan]],
        [[nan, nan, 9.0], [nan] * 3, [nan] * 3, [nan] * 3, [nan] * 3, [nan, nan, 10.0]]])
    expected = np.full((3, 6), nan)
    for row, (steps, base) in enumerate([([0, 2, 4], 10.0), ([0, 1, 3, 5], 20.0),
                                         ([0, 5], 30.0)]):
        expected[row, steps] = [_value(base, 1, s) for s in steps]
    np.testing.assert_array_equal(out["spectral_norm"].sel(probe=1).values, expected)


def _dense_case():
    """Runs where `grid` must fix lr by the most finite spectral norms, not the most runs."""
    runs = [fake_run({**BASE, "width": w, "seed": s}, [0, 1, 2], 100.0 * w + s, 1)
            for w in (64, 256) for s in (0, 1)]
    runs.append(fake_run({**BASE, "width": 64, "seed": 0, "lr": 0.5}, list(range(20)), 7.0, 5))
    runs.append(fake_run({**BASE, "width": 256, "seed": 1, "lr": 0.5}, [0, 3], 8.0, 1))
    runs.append(fake_run({**BASE, "regime": "feature"}, list(range(30)), 9.0, 5))
    return runs


def test_grid_equals_the_dense_expectation():
    """(b) lr 0.5 has fewer runs but more finite values than lr 0.1 among lazy runs."""
    ds = combine(_dense_case(), provenance={})
    got = grid(ds, ("width", "seed"), regime="lazy", not_a_sweep_key=3)
    steps = np.arange(30)
    expected = np.full((2, 2, 2, 30), np.nan)  # width, seed, probe, step
    for p in PROBES:
        expected[0, 0, p, :20] = [_value(7.0, p, s) for s in range(20)]
        expected[1, 1, p, [0, 3]] = [_value(8.0, p, s) for s in (0, 3)]
    want = xr.DataArray(expected, dims=("width", "seed", "probe", "step"),
                        coords={"width": [64, 256], "seed": [0, 1], "probe": PROBES,
                                "step": steps})
    norm = got["spectral_norm"]
    xr.testing.assert_equal(norm.drop_vars([c for c in norm.coords if c not in want.coords]),
                            want)
    assert got["spectral_norm"].dims == ("width", "seed", "probe", "step")
    assert got["lr"].item() == 0.5 and got["regime"].item() == "lazy"
    assert {k for k in SWEEP_KEYS if got[k].ndim == 0} == set(SWEEP_KEYS) - {"width", "seed"}
    assert got["similarity"].item() == 0.0
    assert "run_id" not in got.coords and "run" not in got.dims
    # counting another variable (present only in the lr 0.1 runs) changes the choice
    ds["extra"] = ds["spectral_norm"].where(ds["lr"] == 0.1)
    assert grid(ds, ("width", "seed"), count="extra", regime="lazy")["lr"].item() == 0.1
    # regime is fixed first, in SWEEP_KEYS order: the 30-step feature run wins it
    lone = grid(ds, ("width",), seed=0)
    assert lone["regime"].item() == "feature" and lone.sizes["width"] == 1
    # own dims are selected; no kept key leaves one run or an error
    one = grid(ds, (), regime="lazy", width=64, seed=1, probe=1)
    assert one["spectral_norm"].dims == ("step",) and one["lr"].item() == 0.1
    with pytest.raises(ValueError, match="0 runs match"):
        grid(ds, (), regime="lazy", width=1024)


def test_grid_matches_the_old_dense_selection():
    """A fixed key in `keep` becomes scalar; ties go to the first sorted value; similarity
    spans the kept classes_per_task × shared_classes."""
    runs = [fake_run({**BASE, "classes_per_task": c, "shared_classes": k}, [0, 1], 1.0 + k, 1)
            for c in (3, 5) for k in range(c + 1)]
    ds = combine(runs, provenance={})
    both = grid(ds, ("classes_per_task", "shared_classes"))
    assert both["similarity"].dims == ("classes_per_task", "shared_classes")
    expected = [[k / (2 * c - k) for k in range(6)] for c in (3, 5)]
    np.testing.assert_allclose(both["similarity"].values, expected)  # like the old summary
    assert np.isnan(both["spectral_norm"].sel(classes_per_task=3, shared_classes=5)).all()
    tie = grid(ds, ("shared_classes",))
    assert tie["classes_per_task"].item() == 5  # 6 runs beat 4
    np.testing.assert_allclose(tie["similarity"].values, [k / (10 - k) for k in range(6)])
    fixed = grid(ds, ("shared_classes", "classes_per_task"), classes_per_task=3)
    assert fixed["classes_per_task"].item() == 3 and fixed.sizes["shared_classes"] == 4
    sub = combine(runs[:2] + runs[4:6], provenance={})  # k = 0, 1 for both c: a tie
    assert grid(sub, ("shared_classes",))["classes_per_task"].item() == 3


def test_round_trip_of_text_coordinates_and_mixed_batch_sizes(tmp_path):
    """(c) Text coordinates and a batch_size of 64 and "full" survive NetCDF."""
    a = fake_run({**BASE, "batch_size": 64}, [0, 1, 2], 1.0, 1)
    b = fake_run({**BASE, "batch_size": "full", "optimizer": "gd"}, [0, 2, 4], 2.0, 2)
    b = b.assign(layer_norm=(("layer",), [1.0, 2.0])).assign_coords(layer=["fc0", "fc1"])
    out = combine([a, b], provenance={})
    assert sorted(out["batch_size"].values) == ["64", "full"]
    paths = []
    for i, ds in enumerate([a, b]):
        paths.append(tmp_path / f"run{i}" / "metrics.nc")
        store.write_netcdf(ds, paths[-1])
    collect(paths, tmp_path / "summary.nc", provenance=store.provenance(seed=0))
    back = store.open_netcdf(tmp_path / "summary.nc")
    for k in (*SWEEP_KEYS, "similarity", "run_id", "shift_id", "layer", "step"):
        assert back[k].values.tolist() == out[k].values.tolist(), k
    xr.testing.assert_allclose(back["spectral_norm"], out["spectral_norm"])
    xr.testing.assert_allclose(back["layer_norm"], out["layer_norm"])
    assert back.attrs["runs"] == 2
    full = grid(back, ("seed",), batch_size="full")
    assert full["optimizer"].item() == "gd"
    assert full["spectral_norm"].sel(probe=0, step=4).item() == _value(2.0, 0, 4)
    assert np.isnan(full["spectral_norm"].sel(probe=0, step=1).item())
    assert grid(back, ("seed",), batch_size=64)["optimizer"].item() == "sgd"
    xr.testing.assert_identical(grid(back, ("batch_size", "seed"))["spectral_norm"].load(),
                                grid(out, ("batch_size", "seed"))["spectral_norm"])


def test_size_grows_with_runs_not_with_the_sweeps():
    """(d) 40 runs over independent sweeps of 5 keys: arrays are (runs, own dims)."""
    rng = np.random.default_rng(0)
    choices = {"width": [16, 64, 256, 1024], "depth": [1, 2, 3, 4], "lr": [0.01, 0.1, 0.5],
               "activation": ["relu", "tanh", "linear"], "seed": list(range(10))}
    points = {}
    while len(points) < 40:
        point = {**BASE, **{k: v[rng.integers(len(v))] for k, v in choices.items()}}
        points[sweep.run_id(point)] = point
    runs = [fake_run(p, [0, 1, 2, 4], float(i), 1) for i, p in enumerate(points.values())]
    ds = combine(runs, provenance={})
    for name in ds.data_vars:
        assert ds[name].shape == (40, *runs[0][name].shape), name
    assert sum(ds[n].size for n in ds.data_vars) == 40 * sum(v.size for v in runs[0].values())
    assert all(ds[k].shape == (40,) for k in SWEEP_KEYS)
    dense = np.prod([len(np.unique(ds[k].values)) for k in SWEEP_KEYS])
    assert dense > 25 * 40  # cells a grid over every sweep combination would hold


def test_duplicate_runs_are_refused(runs):
    with pytest.raises(ValueError, match="same run and shift"):
        combine([runs[0], runs[1], runs[0]], provenance={})


def test_run_parameters_from_wildcards(runs):
    assert run_parameters(runs[3]) == {**BASE, "width": 256, "regime": "feature", "seed": 1,
                                       "shared_classes": 2}


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
                   "optimizer~sgd/loss~cross_entropy/target~labels/batch_size~full/"
                   "epochs~auto/regime~lazy/width~64/lr~0.003/seed~0")
    fixed = {**point, "epochs": 300, "target": "teacher"}
    assert sweep.parse_id(sweep.run_id(fixed), PHASE1_KEYS)["epochs"] == 300
    assert sid == "shift~frequency/shared_classes~5/alpha~0.25/n_tasks~2/strategy~finetune"
    assert sweep.tasks_id(sid) == "shift~frequency/shared_classes~5/alpha~0.25/n_tasks~2"
    assert sweep.parse_id(rid, PHASE1_KEYS) == {k: point[k] for k in PHASE1_KEYS}
    assert sweep.parse_id(sid, SHIFT_KEYS) == {k: point[k] for k in SHIFT_KEYS}
    assert sweep.split_id(point) == "dataset~digits/classes_per_task~5/seed~0"


@pytest.mark.parametrize("text, match", [
    ("shift~conceptual/shared_classes~0/alpha~0.0/n_tasks~2", "4 segments, expected 5"),
    ("shift~conceptual/shared_classes~0/alpha~0.0/n_tasks~2/strategy~ewc/x~1", "6 segments"),
    ("shift~conceptual/shared~0/alpha~0.0/n_tasks~2/strategy~ewc", "'shared_classes~<value>'"),
    ("shift~conceptual/shared_classes=0/alpha~0.0/n_tasks~2/strategy~ewc",
     "should be 'shared_classes~"),
    ("alpha~0.0/shift~conceptual/shared_classes~0/n_tasks~2/strategy~ewc", "should be 'shift~"),
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
    run = ds.isel(run=_row(ds, point))
    assert np.isfinite(run["spectral_norm"].sel(probe=0).dropna("step")).all()
    assert np.isnan(run["boundary_step"]).all()


def test_text_labels_keep_the_runs_order():
    from ntkpipe.summary import _own_union

    assert list(_own_union([np.array(["initial", "final"])] * 2)) == ["initial", "final"]
    layers = [np.array(["1", "3"]), np.array(["1", "3", "5", "7", "9", "11"])]
    assert list(_own_union(layers)) == ["1", "3", "5", "7", "9", "11"]
    assert list(_own_union([np.array(["b", "c"]), np.array(["a", "c"])])) == ["a", "b", "c"]
    assert list(_own_union([np.array([3, 1]), np.array([2])])) == [1, 2, 3]
