"""Figures from synthetic summaries: which apply, each one draws, divergence is marked."""

import numpy as np
import pytest
import xarray as xr

from ntkpipe import figures, stages, store, studies, sweep
from ntkpipe.studies import feature_evolution, reactivation
from ntkpipe.summary import combine, grid, with_measures

STUDIES = studies.load_all(None)
FIGURES = {f.name: f.draw for study in STUDIES for f in study.figures}


def applicable(points, analyses=None):
    """Every built-in study's applicable figures, `analyses` as {(run, shift): names}."""
    turned_on = {name for names in (analyses or {}).values() for name in names}
    return [name for study in STUDIES for name in study.applicable(points, turned_on)]

BASE = {"dataset": "digits", "classes_per_task": 5, "arch": "mlp", "depth": 2,
        "activation": "relu", "optimizer": "sgd", "loss": "cross_entropy", "target": "labels",
        "epochs": "auto", "batch_size": 64,
        "regime": "lazy", "width": 64, "lr": 0.1, "seed": 0, "shift": "conceptual",
        "shared_classes": 0, "alpha": 0.0, "n_tasks": 2, "strategy": "finetune"}


def fake(point, diverged=-1, boundaries=1):
    steps = np.array([0, 3, 10, 11, 12, 15, 30, 40])
    rng = np.random.default_rng(point["seed"])
    series = lambda: rng.uniform(0.5, 1.5, (1, len(steps)))  # noqa: E731
    names = ("spectral_norm", "kernel_distance", "kernel_velocity", "kernel_alignment")
    ds = xr.Dataset(
        {**{n: (("probe", "step"), series()) for n in names},
         "test_accuracy": (("step", "task"), rng.uniform(0, 1, (len(steps), 2))),
         "boundary_step": ("boundary", 10 + 15 * np.arange(boundaries)),
         "diverged_step": ((), diverged),
         "task_steps": ("trained_task", rng.integers(10, 100, boundaries + 1).astype(float)),
         **{m: (("probe", "boundary"), rng.uniform(0, 2, (1, boundaries)))
            for m in reactivation.MEASURES}},
        coords={"step": steps, "probe": [1], "task": [1, 2],
                "boundary": np.arange(1, boundaries + 1),
                "trained_task": np.arange(1, boundaries + 2)})
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


EOS_POINT = {**BASE, "optimizer": "gd", "loss": "mse", "batch_size": "full",
             "activation": "tanh", "regime": "feature", "width": 200, "n_tasks": 1,
             "classes_per_task": 10}


def tag(ds, point):
    ds.attrs.update(store.provenance(wildcards={"run": sweep.run_id(point),
                                                "shift": sweep.shift_id(point)}))
    return ds


def eos_fake(point, diverged=-1):
    """An edge-of-stability run: sharpness every 5 steps, losses and the training-subset
    kernel's alignments at every 10th step."""
    steps = np.arange(0, 10 * (8 - point["seed"]), 10)  # seeds stop at different steps
    measured = np.arange(0, steps[-1] + 1, 5)
    rng = np.random.default_rng(point["seed"])
    n, threshold = len(steps), 2 / point["lr"]
    sharpness = threshold * np.minimum(1, np.linspace(0.5, 1.5, len(measured)))
    spectrum = lambda: rng.uniform(0.01, 0.1, (n, 20))  # noqa: E731
    return tag(xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, n))),
         "train_target_alignment": ("step", np.linspace(0.1, point["lr"], n)),
         "train_alignment_spectrum": (("step", "eigenvector"), spectrum()),
         "train_eigenvalue_fraction": (("step", "eigenvector"), np.sort(spectrum())[..., ::-1]),
         "train_loss": (("step", "task"), np.geomspace(1, 0.01, n)[:, None]),
         "sharpness": (("sharpness_step", "hessian_eig"), np.stack([sharpness, 0.9 * sharpness],
                                                                   1)),
         "gauss_newton_sharpness": ("step", 0.95 * sharpness[::2]),
         "stability_threshold": ((), threshold), "diverged_step": ((), diverged)},
        coords={"step": steps, "sharpness_step": measured, "probe": [1], "task": [1],
                "hessian_eig": [1, 2], "eigenvector": np.arange(1, 21)}), point)


def fe_fake(point, diverged=-1):
    """A feature-evolution run: kernel descent losses, spectra with power-law fits, KSM and
    per-layer alignment (a readout module after `depth` hidden ones)."""
    rng = np.random.default_rng(point["seed"] + 10 * point["depth"])
    steps, k = np.array([0, 1, 10, 50, 100]), np.arange(1, 101)
    layers = [str(2 * i + 1) for i in range(point["depth"] + 1)]
    when = ["final", "initial"]
    fits = {"eigen": [1.3, 1.1], "task": [1.4, 1.4]}  # (final, initial), as drawn below
    ksm = 1 + (0.3 if point["activation"] == "relu" else 0.0) * (np.eye(4) - 0.25)
    return tag(xr.Dataset(
        {"spectral_norm": (("probe", "step"), np.ones((1, 5))),
         "fe_alignment": ("step", np.array([0.1, 0.15, 0.2, 0.22, 0.23])),
         "fe_kernel_norm": ("step", np.array([1.0, 1.1, 1.5, 1.7, 1.8])),
         **{name: ("step", np.linspace(0, end, 5)) for name, end in
            (("train_ksm_dominance", 0.2), ("hidden_ksm_dominance", 0.3),
             ("readout_ksm_dominance", 0.0))},
         **{name: (("block", "target_class"), m) for name, m in
            (("train_ksm", ksm), ("train_ksm_hidden", ksm),
             ("train_ksm_readout", np.ones((4, 4))))},
         "loss_step": ("loss_point", steps.astype(float)),
         **{name: ("loss_point", np.geomspace(1, end, 5)) for name, end in
            (("network_loss", 0.01), ("kgd_loss", 0.1), ("akgd_loss", 0.05))},
         "effective_gamma": ((), 0.1 * point["depth"]),
         "train_eigenvalues": (("when", "mode"), np.stack([k ** -1.3, k ** -1.1])),
         "task_spectrum": (("when", "mode"), rng.uniform(0.5, 2, (2, 100)) * k ** -1.4),
         **{f"{fit}_{name}": ("when", np.array(value)) for fit, b in fits.items()
            for name, value in (("exponent", b), ("fit_kmin", [2.0] * 2),
                                ("fit_kmax", [80.0] * 2), ("fit_r2", [0.99] * 2))},
         "specialization": (("probe", "when", "output", "output_j"),
                            np.stack([ksm, np.ones((4, 4))])[None]),
         "layer_alignment": (("probe", "when", "layer", "output"),
                             rng.uniform(0.1, 0.3, (1, 2, len(layers), 4))),
         "diverged_step": ((), diverged)},
        coords={"step": steps, "probe": [1], "when": when, "mode": k, "layer": layers,
                "block": np.arange(4), "target_class": np.arange(4)}), point)


def study_runs():
    """Edge-of-stability runs (3 η × 2 seeds, one diverged) and feature-evolution runs
    (ReLU and linear, depth 1–3, 2 seeds)."""
    eos = [eos_fake({**EOS_POINT, "lr": lr, "seed": s}, diverged=30 if lr == 0.2 and s else -1)
           for lr in (0.05, 0.1, 0.2) for s in (0, 1)]
    fe = [fe_fake({**EOS_POINT, "activation": a, "depth": d, "lr": 0.05, "seed": s})
          for a in ("relu", "linear") for d in (1, 2, 3) for s in (0, 1)]
    return eos + fe


@pytest.fixture(scope="module")
def summary():
    points = [{**BASE, "regime": r, "width": w, "seed": s}
              for r in ("lazy", "feature") for w in (64, 256) for s in (0, 1)]
    points += [{**BASE, "shared_classes": k, "seed": s} for k in range(1, 6) for s in (0, 1)]
    points += [{**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a} for a in (0.5, 1.0)]
    points += [{**BASE, "lr": lr} for lr in (0.02, 0.5)]
    runs = [fake(p, diverged=5 if p["width"] == 256 and p["seed"] == 1 else -1) for p in points]
    runs.append(fake({**BASE, "shared_classes": 3, "n_tasks": 3}, boundaries=2))
    runs += [fake({**BASE, "strategy": s, "seed": seed}) for s in ("replay", "lwf")
             for seed in (0, 1)]
    ds = combine(runs + study_runs(), provenance={})
    # the continual study's figures read its measures, as its figures job gets them
    rng = np.random.default_rng(0)
    shape = (ds.sizes["run"], ds.sizes["boundary"])
    measures = xr.Dataset({name: (("run", "boundary"), rng.uniform(0.1, 10, shape))
                           for name in ("boundary_spike", "boundary_dip", "boundary_forgetting")},
                          coords={"boundary": ds["boundary"].values})
    return with_measures(ds, measures), points


def test_applicable_follows_the_sweeps(summary):
    _, points = summary
    assert applicable(points) == ["metrics_by_width", "accuracy_by_task", "laziness",
                                  "similarity_sweep", "frequency_shift", "learning_rate",
                                  "reactivation_forgetting"]
    assert applicable([{**p, "n_tasks": 3} for p in points[:1]]) == [
        "task_sequence", "sequence_measures", "reactivation_forgetting"]
    assert applicable([{**points[0], "strategy": "ewc"}])[-2:] == [
        "strategy_effects", "reactivation_forgetting"]


def test_applicable_with_analyses(summary):
    _, points = summary
    runs = [(sweep.run_id(p), sweep.shift_id(p)) for p in points]
    assert applicable(points, {}) == applicable(points)
    assert applicable(points, {runs[0]: ["sharpness"], runs[1]: []})[-3:-1] == \
        ["edge_of_stability", "eos_alignment"]
    eos = [{**EOS_POINT, "lr": lr} for lr in (0.05, 0.1)]
    both = {(sweep.run_id(p), sweep.shift_id(p)): ["sharpness"] for p in eos}
    both[("other", "run")] = ["specialization", "train_kernel"]
    assert applicable(eos, both) == [
        "edge_of_stability", "eos_alignment", "kernel_descent", "alignment_by_depth",
        "kernel_spectra", "specialization"]
    assert applicable(eos) == []


def test_new_figures_need_their_runs(tmp_path):
    reactivation_only = combine([fake({**BASE, "seed": s}) for s in (0, 1)], provenance={})
    for name in ("edge_of_stability", "kernel_descent", "specialization"):
        with pytest.raises(ValueError, match="is its sweep"):
            FIGURES[name](reactivation_only, tmp_path / f"{name}.png")


def test_study_figures_from_their_runs_alone(tmp_path):
    ds = combine(study_runs(), provenance={})
    for name in ("edge_of_stability", "eos_alignment", "kernel_descent", "alignment_by_depth",
                 "kernel_spectra", "specialization"):
        FIGURES[name](ds, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_power_law_is_drawn_over_its_fit_range():
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    k = np.arange(1.0, 101.0)
    fit = {"exponent": [1.3], "kmin": [2.0], "kmax": [80.0], "r2": [0.99]}
    text = feature_evolution._power_law(ax, k, 2 * k ** -1.3, fit, "final", "b", "C0")
    x, y = ax.lines[0].get_data()
    assert text == "final: b = 1.30 (k 2–80, R² 0.99)"
    assert (x.min(), x.max()) == pytest.approx((2.0, 80.0))
    np.testing.assert_allclose(y, 2 * x ** -1.3)
    plt.close(fig)


def test_last_snapshot_and_seed_table():
    da = xr.DataArray([[1.0, 2.0, np.nan, np.nan], [3.0, np.nan, 4.0, np.nan]],
                      dims=("seed", "step"), coords={"step": [0, 5, 9, 12]})
    assert float(figures.last_snapshot(da.isel(seed=0))) == pytest.approx(2.0)
    assert int(figures.last_snapshot(da)["step"]) == 9
    x, table = figures.seed_table(da)
    np.testing.assert_array_equal(x, [0, 5, 9])
    assert table.shape == (2, 3)


@pytest.mark.parametrize("name", list(FIGURES))
def test_every_figure_draws(summary, tmp_path, name):
    ds, _ = summary
    out = tmp_path / f"{name}.png"
    FIGURES[name](ds, out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_divergence_is_marked(summary):
    ds, _ = summary
    sub = grid(ds, ("regime", "width", "seed"), shift="conceptual", shared_classes=0, n_tasks=2)
    assert figures.status_note(sub.sel(regime="lazy", width=256)) == " (1 diverged)"
    assert figures.status_note(sub.sel(regime="lazy", width=64)) == ""


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
    for study in STUDIES:
        outputs = [tmp_path / f"{f.name}.png" for f in study.figures]
        stages.study_figures(study.name, tmp_path / "summary.nc", None, outputs)
        assert all(out.read_bytes()[:4] == b"\x89PNG" for out in outputs)


def test_seed_series_keep_only_dt1_velocities_and_lines_break_at_gaps():
    steps = np.array([0, 4, 8, 9, 10, 11, 20])
    one = xr.Dataset(
        {"kernel_velocity": (("probe", "step"), np.arange(7.0)[None]),
         "spectral_norm": (("probe", "step"), np.ones((1, 7))),
         "boundary_step": ("boundary", [9])},
        coords={"step": steps, "probe": [1], "boundary": [1]})
    [(x, y)] = reactivation.seed_series(one, "kernel_velocity")
    np.testing.assert_array_equal(x, [-1, 0, 1])  # 8 → 9, 9 → 10, 10 → 11: dt = 1 only
    np.testing.assert_array_equal(y, [2.0, 3.0, 4.0])
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    [(x, y)] = reactivation.seed_series(one, "spectral_norm")
    reactivation.draw_series(ax, [(x, y), (x, 2 * y)], "C0", "mean", join=1)
    joined = [line.get_xdata() for line in ax.lines if line.get_linestyle() == "-"]
    assert [list(part) for part in joined] == [[-1, 0, 1, 2]]  # nothing drawn across a gap
    plt.close(fig)


def test_unknown_figure_name_is_refused(summary, tmp_path):
    with pytest.raises(ValueError, match="unknown figure 'nope' of study 'reactivation'"):
        figures.draw(studies.load("reactivation"), summary[0], [tmp_path / "nope.png"])
    assert not (tmp_path / "nope.png").exists()


def test_figures_for_partial_sweeps(tmp_path):
    frequency_only = [{**BASE, "shift": "frequency", "shared_classes": 5, "alpha": a, "seed": s}
                      for a in (0.5, 1.0) for s in (0, 1)]
    assert applicable(frequency_only) == ["frequency_shift", "reactivation_forgetting"]
    assert applicable([{**BASE, "n_tasks": 1}]) == []
    ds = combine([fake(p) for p in frequency_only], provenance={})
    reactivation.frequency_shift(ds, tmp_path / "f.png")  # no class-incremental baseline to draw
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_the_continual_figures_draw_without_a_positive_spike(summary, tmp_path):
    ds, _ = summary
    ds = ds.assign(boundary_spike=ds["boundary_spike"] * np.nan)  # no spike to log-scale
    for name in ("strategy_effects", "reactivation_forgetting"):
        FIGURES[name](ds, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
