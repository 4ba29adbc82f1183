"""Figures from synthetic summaries: which apply, each one draws, divergence is marked."""

import numpy as np
import pytest
import xarray as xr

from ntkpipe import figures, store, sweep
from ntkpipe.summary import combine, grid

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2}


def fake(point, diverged=-1, boundaries=1):
    steps = np.array([0, 3, 10, 11, 12, 15, 30, 40])
    rng = np.random.default_rng(point["seed"])
    series = lambda: rng.uniform(0.5, 1.5, (1, len(steps)))  # noqa: E731
    names = ("spectral_norm", "kernel_distance", "kernel_velocity", "kernel_alignment")
    measures = ("velocity_spike", "norm_dip", "alignment_deflection", "distance_jump")
    ds = xr.Dataset(
        {**{n: (("probe", "step"), series()) for n in names},
         "test_accuracy": (("step", "task"), rng.uniform(0, 1, (len(steps), 2))),
         "boundary_step": ("boundary", 10 + 15 * np.arange(boundaries)),
         "diverged_step": ((), diverged),
         **{m: (("probe", "boundary"), rng.uniform(0, 2, (1, boundaries))) for m in measures}},
        coords={"step": steps, "probe": [1], "task": [1, 2],
                "boundary": np.arange(1, boundaries + 1)})
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


@pytest.fixture(scope="module")
def summary():
    points = [{**BASE, "regime": r, "width": w, "seed": s}
              for r in ("lazy", "feature") for w in (64, 256) for s in (0, 1)]
    points += [{**BASE, "shared_classes": k, "seed": s} for k in range(1, 6) for s in (0, 1)]
    points += [{**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a} for a in (0.5, 1.0)]
    points += [{**BASE, "lr": lr} for lr in (0.02, 0.5)]
    runs = [fake(p, diverged=5 if p["width"] == 256 and p["seed"] == 1 else -1) for p in points]
    runs.append(fake({**BASE, "shared_classes": 3, "n_tasks": 3}, boundaries=2))
    return combine(runs, provenance={}), points


def test_applicable_follows_the_sweeps(summary):
    _, points = summary
    assert figures.applicable(points) == ["metrics_by_width", "accuracy_by_task",
                                          "similarity_sweep", "frequency_shift", "learning_rate"]
    assert figures.applicable([{**p, "n_tasks": 3} for p in points[:1]]) == ["task_sequence"]


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_every_figure_draws(summary, tmp_path, name):
    ds, _ = summary
    out = tmp_path / f"{name}.png"
    figures.FIGURES[name](ds, out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_divergence_is_marked(summary):
    ds, _ = summary
    sub = grid(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    assert figures.diverged_note(sub.sel(regime="lazy", width=256)) == " (1 diverged)"
    assert figures.diverged_note(sub.sel(regime="lazy", width=64)) == ""


def test_relative_curves_align_runs_on_the_boundary(summary):
    ds, _ = summary
    sub = grid(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0,
               n_tasks=2).sel(regime="lazy", width=64)
    x, table = figures.relative_curves(sub, "spectral_norm")
    np.testing.assert_array_equal(x, [-10, -7, 0, 1, 2, 5, 20, 30])
    assert table.shape == (2, 8) and np.isfinite(table).all()


def test_draw_all_from_a_written_summary(summary, tmp_path):
    """Text coordinates read back from NetCDF as fixed-width strings select the same runs."""
    ds, _ = summary
    ds.to_netcdf(tmp_path / "summary.nc", engine="netcdf4",
                 encoding={k: {"dtype": "str"} for k in ds.variables if ds[k].dtype == object})
    outputs = [tmp_path / f"{name}.png" for name in figures.FIGURES]
    figures.draw_all(tmp_path / "summary.nc", outputs)
    assert all(out.read_bytes()[:4] == b"\x89PNG" for out in outputs)


def test_unknown_figure_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown figure"):
        figures.draw_all(tmp_path / "missing.nc", [tmp_path / "nope.png"])


def test_figures_for_partial_sweeps(tmp_path):
    frequency_only = [{**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a, "seed": s}
                      for a in (0.5, 1.0) for s in (0, 1)]
    assert figures.applicable(frequency_only) == ["frequency_shift"]
    assert figures.applicable([{**BASE, "n_tasks": 1}]) == []
    ds = combine([fake(p) for p in frequency_only], provenance={})
    figures.frequency_shift(ds, tmp_path / "f.png")  # no class-incremental baseline to draw
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
