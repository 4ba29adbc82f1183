"""The per-run analysis stages (sharpness, training-set kernel) and what the studies' measures
make of them, on a tiny digits run, cross-checked against independent computations."""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import defaults

from ntkpipe import stages, store, sweep
from ntkpipe.errors import InputError
from ntkpipe.stages.data import sharpness_subset
from ntkpipe.stages.kernels import load_snapshots
from ntkpipe.studies import edge_of_stability, feature_evolution
from ntkpipe.summary import combine, with_measures

RUN = {"dataset": "digits", "classes_per_task": 3, "arch": "mlp", "depth": 1,
       "activation": "tanh", "optimizer": "gd", "loss": "mse", "target": "labels",
       "batch_size": "full", "epochs": "auto",
       "regime": "feature", "width": 8, "lr": 0.05, "seed": 3}
POINT = {**RUN, "shift": "conceptual", "shared_classes": 0, "alpha": 0.0, "n_tasks": 1,
         "strategy": "finetune"}
IDS = (sweep.run_id(POINT), sweep.shift_id(POINT))
PROV = {"wildcards_json": json.dumps({"run": IDS[0], "shift": IDS[1]})}
MODEL = {"bias": True, "bias_std": 0.1}
# the dense window opens at the first measurement (any sharpness ≥ 0.01 · 2/η)
SHARPNESS = {"every": 5, "snapshot_every": 5, "dense": {"from": 0.01, "every": 1, "steps": 3},
             "subset": 40, "top": 2, "tolerance": 1e-12, "eigenvectors": 6}
TRAIN = defaults("train", phase1={"target_accuracy": 0.99, "target_loss": {"mse": 1e-9},
                                  "min_epochs": 1, "max_epochs": {"sgd": 2, "gd": 12}},
                 snapshots={"log_points": 3}, snapshot_every=5, checkpoint_every=0,
                 sharpness=SHARPNESS)
NTK = {"kernels": ["trace", "per_output", "per_layer"], "dtype": "float64", "max_memory_gb": 1}
METRICS = {**defaults("metrics", spectrum_top=5), "status": defaults("status")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("analyses")
    p = {name: d / name for name in ("data.npz", "tasks.npz", "phase1.pt", "snaps.pt",
                                     "ntk.nc", "sharpness.nc", "train_kernel.nc", "metrics.nc")}
    stages.prepare_data("digits", None, p["data.npz"], provenance=PROV)
    stages.make_split(p["data.npz"], p["tasks.npz"], provenance=PROV, split={
        "classes_per_task": 3, "seed": 3, "order": "natural", "train_per_task": 60,
        "probe_size": 12, "probe_tasks": [1], "imbalance": 8.0, "n_tasks": 1,
        "shared_classes": 0, "alpha": 0.0})
    stages.train_phase1(p["data.npz"], p["tasks.npz"], p["phase1.pt"], p["snaps.pt"], run=RUN,
                        train_cfg=TRAIN, model_cfg=MODEL, provenance=PROV)
    stages.extract_ntk(p["data.npz"], p["tasks.npz"], [p["snaps.pt"]], p["ntk.nc"], run=RUN,
                       model_cfg=MODEL, ntk_cfg=NTK, provenance=PROV)
    stages.measure_sharpness(p["data.npz"], p["tasks.npz"], [p["snaps.pt"]], p["sharpness.nc"],
                             run=RUN, model_cfg=MODEL, train_cfg=TRAIN, sharpness_cfg=SHARPNESS,
                             provenance=PROV)
    stages.train_kernel(p["data.npz"], p["tasks.npz"], p["snaps.pt"], p["train_kernel.nc"],
                        run=RUN, model_cfg=MODEL, train_cfg=TRAIN, ntk_cfg=NTK,
                        settings={"block_subset": 30}, provenance=PROV)
    stages.compute_metrics(p["ntk.nc"], p["metrics.nc"], metrics_cfg=METRICS, provenance=PROV)
    return p


@pytest.fixture(scope="module")
def measured(run):
    """The run's metrics with the edge-of-stability and feature-evolution measures merged in,
    as the studies' jobs compute them from a one-run summary."""
    summary = combine([store.open_netcdf(run["metrics.nc"])], provenance={})
    fe = feature_evolution.feature_measures(
        summary, {"ntk": {IDS: run["ntk.nc"]}, "train_kernel": {IDS: run["train_kernel.nc"]}},
        {"fit_range": None, "loss_points": 50})
    eos = edge_of_stability.sharpness_measures(summary, {"sharpness": {IDS: run["sharpness.nc"]}},
                                               {})
    return with_measures(with_measures(summary, fe), eos).isel(run=0)


def _model_at(p, step):
    data = stages.load_data(p["data.npz"])
    snaps = load_snapshots([p["snaps.pt"]])
    model = stages.make_model(data, RUN, MODEL).double()
    model.load_state_dict(snaps["states"][snaps["steps"].index(step)])
    return data, model


def test_snapshots_every_k_steps_and_threshold(run):
    sharp = xr.open_dataset(run["sharpness.nc"])
    steps = sharp["step"].values.tolist()
    assert {0, 1, 2, 3, 5, 10, 12} <= set(steps)  # the window 0-3, every 5, the last (12)
    assert steps == xr.open_dataset(run["ntk.nc"])["step"].values.tolist()
    assert float(sharp["stability_threshold"]) == pytest.approx(2 / 0.05)
    # measured in training at 0, every 5 and over the dense window
    assert sharp["sharpness_step"].values.tolist() == [0, 1, 2, 3, 5, 10]
    assert int(sharp["dense_window_step"]) == 0


def test_training_subset_kernel_alignment(run):
    """The full training-subset NTK's target alignment and eigenvector alignment spectrum
    equal those of the reference (torch.func) kernel, eigendecomposed independently."""
    from ntkpipe.ntk import reference_ntk

    data, model = _model_at(run, 10)
    split = stages.load_split(run["tasks.npz"])
    idx = np.unique(split.train[0])
    pos = sharpness_subset(data["y_train"][idx], split.classes[0], 40, RUN["seed"], 1)
    x = torch.from_numpy(data["x_train"][idx[pos]]).double()
    full = reference_ntk(model, x, mode="full").numpy()  # (n, n, O, O)
    n, o = full.shape[0], full.shape[2]
    matrix = full.transpose(0, 2, 1, 3).reshape(n * o, n * o)
    y = np.eye(o)[data["y_train"][idx[pos]]].reshape(-1)
    vals, vecs = np.linalg.eigh(matrix)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    sharp = xr.open_dataset(run["sharpness.nc"]).sel(step=10)
    assert float(sharp["train_target_alignment"]) == pytest.approx(
        y @ matrix @ y / (np.linalg.norm(matrix) * y @ y), rel=1e-8)
    np.testing.assert_allclose(sharp["train_alignment_spectrum"].values,
                               (vecs[:, :6].T @ y) ** 2 / (y @ y), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(sharp["train_eigenvalue_fraction"].values,
                               vals[:6] / np.linalg.norm(matrix), rtol=1e-8)
    assert float(sharp["gauss_newton_sharpness"]) == pytest.approx(vals[0] / n, rel=1e-8)


def test_sharpness_matches_a_dense_hessian(run):
    """The stage's Lanczos eigenvalues equal those of the Hessian built by autograd in full."""
    data, model = _model_at(run, 10)
    split = stages.load_split(run["tasks.npz"])
    idx = np.unique(split.train[0])
    pos = sharpness_subset(data["y_train"][idx], split.classes[0], 40, RUN["seed"], 1)
    x = torch.from_numpy(data["x_train"][idx[pos]]).double()
    y = torch.from_numpy(data["y_train"][idx[pos]])
    names = [n for n, _ in model.named_parameters()]
    shapes = [q.shape for q in model.parameters()]
    flat0 = torch.cat([q.detach().reshape(-1) for q in model.parameters()])

    def loss(flat):
        params, at = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = flat[at:at + shape.numel()].view(shape)
            at += shape.numel()
        out = torch.func.functional_call(model, params, (x,))
        return 0.5 * ((out - torch.nn.functional.one_hot(y, out.shape[1])) ** 2).sum(1).mean()

    dense = torch.autograd.functional.hessian(loss, flat0).numpy()
    expected = np.sort(np.linalg.eigvalsh(dense))[::-1][:2]
    got = xr.open_dataset(run["sharpness.nc"])["sharpness"].sel(sharpness_step=10).values
    np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_subset_is_class_balanced_and_fixed():
    labels = np.repeat([4, 7, 9], 20)
    a = sharpness_subset(labels, [4, 7, 9], 12, seed=1, task=1)
    assert np.array_equal(a, sharpness_subset(labels, [4, 7, 9], 12, seed=1, task=1))
    assert np.bincount(labels[a], minlength=10)[[4, 7, 9]].tolist() == [4, 4, 4]
    assert np.array_equal(sharpness_subset(labels, [4, 7, 9], 60, 1, 1), np.arange(60))
    with pytest.raises(InputError, match="larger than task 1, which has 60"):
        sharpness_subset(labels, [4, 7, 9], 61, 1, 1)


def test_kgd_starts_from_the_network(measured):
    """At step 0 KGD, aKGD and the network share f₀, so their losses agree exactly."""
    m = measured
    first = m.sel(loss_point=0)
    assert int(first["loss_step"]) == 0
    assert float(first["kgd_loss"]) == pytest.approx(float(first["network_loss"]), rel=1e-6)
    assert float(first["akgd_loss"]) == pytest.approx(float(first["network_loss"]), rel=1e-6)
    assert int(m["loss_step"][-1]) == 11  # the loss of the last step's update is recorded
    net = m["network_loss"].values
    assert np.all(np.isfinite(net)) and net[-1] < net[0]


def test_training_kernel_spectra(run, measured):
    m = measured
    tk = xr.open_dataset(run["train_kernel.nc"])
    n = tk.sizes["sample"]
    assert n == 60
    for when in ("initial", "final"):
        eig = m["train_eigenvalues"].sel(when=when).values
        assert np.all(np.diff(eig) <= 1e-9)
        # the eigenvectors are a basis: the task spectrum sums to ‖Y‖_F² = n for one-hot Y
        assert m["task_spectrum"].sel(when=when).sum() == pytest.approx(n, rel=1e-9)
        k_min, k_max = (int(m[f"eigen_fit_{e}"].sel(when=when)) for e in ("kmin", "kmax"))
        assert (k_min, k_max) == (2, n // 10)  # fixed before looking: modes 2 … ⌊P/10⌋
    assert float(m["effective_gamma"]) >= 0
    # λ_max(K0) from the stored spectrum: the stability ratio η λ_max / 2n (n = 60, η = 0.05)
    lam = float(m["train_eigenvalues"].sel(when="initial", mode=1))
    assert float(m["kgd_stability"]) == pytest.approx(0.05 * lam / 120, rel=1e-12)
    assert tk["when_step"].values.tolist() == [0, 12]


def test_specialization_columns_average_to_one(measured):
    """KSM(c, c') divides by the mean over blocks c: every column averages to exactly 1."""
    m = measured
    ksm = m["probe_specialization"].sel(probe=1, when="final").values
    assert ksm.shape == (10, 10)  # one head over all classes; task 1 holds classes 0-2
    np.testing.assert_allclose(ksm[:3, :3].mean(axis=0), 1.0, rtol=1e-9)
    assert np.isnan(ksm[3:]).all() and np.isnan(ksm[:, 3:]).all()
    assert np.isfinite(m["probe_specialization_dominance"].sel(probe=1).values).all()
    layers = m["probe_layer_alignment"].sel(probe=1, when="final")
    assert layers.sizes["probe_layer"] == 2  # one hidden layer and the readout
    # the training-set KSM: over task 1's three classes, every column averages to 1
    train = m["train_ksm"].dropna("block", how="all").dropna("target_class", how="all").values
    assert train.shape == (3, 3)
    np.testing.assert_allclose(train.mean(axis=0), 1.0, rtol=1e-9)


def test_readout_blocks_are_alike_and_parts_sum_to_the_kernel(run):
    """The readout's per-output blocks are h·h' (+ σ_b²) for every output: its KSM is exactly
    flat; and the per-layer parts of the training-set blocks add up to the whole kernel's."""
    from ntkpipe.ntk import empirical_ntk
    from ntkpipe.specialization import class_alignments

    tk = xr.open_dataset(run["train_kernel.nc"])
    readout = tk["layer_block_alignment"].values[:, -1]  # (step, block, target)
    np.testing.assert_allclose(readout, readout[:, :1, :].repeat(readout.shape[1], 1),
                               rtol=1e-9)
    # an independent recomputation at the last snapshot: the traced kernel's A(t) and norm
    data, model = _model_at(run, int(tk["step"][-1]))
    x = torch.from_numpy(data["x_train"])[torch.from_numpy(tk["train_index"].values)].double()
    k = empirical_ntk(model, x, mode="trace", implementation="reference").numpy()
    y = np.eye(10)[tk["train_label"].values]
    assert float(tk["train_kernel_norm"][-1]) == pytest.approx(np.linalg.norm(k), rel=1e-9)
    assert float(tk["train_alignment_t"][-1]) == pytest.approx(
        np.sum(k * (y @ y.T)) / (np.linalg.norm(k) * np.linalg.norm(y @ y.T)), rel=1e-9)
    blocks = empirical_ntk(model, x[torch.from_numpy(tk["block_sample"].values.copy())],
                           mode="per_output",
                           implementation="reference").numpy()[:3]
    np.testing.assert_allclose(tk["block_alignment"].values[-1],
                               class_alignments(blocks, y[tk["block_sample"].values][:, :3]),
                               rtol=1e-9)


def test_alignment_spectrum_and_eigenvalue_fraction(run):
    m = xr.open_dataset(run["metrics.nc"])
    ntk = xr.open_dataset(run["ntk.nc"])["ntk_trace"].sel(probe=1).values.astype(np.float64)
    frac = m["eigenvalue_fraction"].sel(probe=1).values
    assert frac.shape[1] == 5 and np.all(np.diff(frac, axis=1) <= 1e-12)
    np.testing.assert_allclose(frac[:, 0], m["spectral_norm"].sel(probe=1).values
                               / np.linalg.norm(ntk, axis=(1, 2)), rtol=1e-6)
    a = m["alignment_spectrum"].sel(probe=1).values
    assert np.all(a >= 0) and np.all(a.sum(axis=1) <= 1 + 1e-9)
    np.testing.assert_allclose(a[:, 0], m["top_eigenvector_alignment"].sel(probe=1).values)


def test_sharpness_measures_land_on_the_runs_steps(run, measured):
    sharp = xr.open_dataset(run["sharpness.nc"])
    np.testing.assert_array_equal(
        measured["train_target_alignment"].sel(step=sharp["step"]).values,
        sharp["train_target_alignment"].values)
    np.testing.assert_array_equal(measured["sharpness"].values, sharp["sharpness"].values)
    assert float(measured["stability_threshold"]) == float(sharp["stability_threshold"])


def test_sharpness_file_of_other_steps_is_refused(run, tmp_path):
    """A sharpness file whose steps are not the run's snapshots (an older run) is an error."""
    sharp = xr.open_dataset(run["sharpness.nc"]).load()
    store.write_netcdf(sharp.assign_coords(step=sharp["step"] + 1000), tmp_path / "other.nc")
    summary = combine([store.open_netcdf(run["metrics.nc"])], provenance={})
    with pytest.raises(ValueError, match="not in the summary"):
        edge_of_stability.sharpness_measures(summary, {"sharpness": {IDS: tmp_path / "other.nc"}},
                                             {})


def test_spectrum_fits_stop_at_the_kernels_rank():
    """Past a kernel's rank the eigenvectors are an arbitrary null-space basis: neither power
    law is fitted there, and γ's alignment is the cosine with YYᵀ."""
    from ntkpipe.specialization import target_cosine
    from ntkpipe.studies.feature_evolution import _train_kernel_measures

    rng = np.random.default_rng(2)
    n, rank = 30, 4
    a = rng.standard_normal((n, rank))
    k0 = a @ a.T
    k1 = k0 + 0.5 * np.outer(a[:, 0], a[:, 0])
    labels = rng.integers(0, 3, n)
    tk = xr.Dataset(
        {"train_ntk": (("when", "sample", "sample_j"), np.stack([k0, k1])),
         "train_output": (("when", "sample", "output"), np.zeros((2, n, 3))),
         "network_loss": ("loss_step", np.linspace(1.0, 0.5, 10))},
        coords={"when": ["initial", "final"], "train_label": ("sample", labels),
                "loss_step": np.arange(10), "output": np.arange(3)},
        attrs={"learning_rate": 0.1, "loss": "mse"})
    out = _train_kernel_measures(tk, {"fit_range": None, "loss_points": 5})
    assert (out["eigen_fit_kmax"].values <= rank).all()
    assert (out["task_fit_kmax"].values <= rank).all()
    assert float(out["train_alignment"].sel(when="final")) == pytest.approx(
        target_cosine(k1, np.eye(3)[labels]))


def test_linear_teacher_is_a_fixed_linear_map_of_the_flat_input():
    from ntkpipe.stages.data import linear_teacher

    x = np.random.default_rng(0).standard_normal((50, 64))
    y = linear_teacher(x, 10, seed=4)
    assert y.shape == (50, 10)
    np.testing.assert_allclose(linear_teacher(x[:7], 10, seed=4), y[:7], rtol=1e-12)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)  # exactly linear: the fit leaves no residual
    np.testing.assert_allclose(x @ w, y, atol=1e-10)
    assert abs(np.std(w) - 1 / 8) < 0.02  # s^c ~ N(0, I/d), d = 64
    assert not np.allclose(linear_teacher(x, 10, seed=5), y)
    with pytest.raises(ValueError, match="flat inputs"):
        linear_teacher(x.reshape(50, 8, 8), 10, seed=4)


def test_a_deep_linear_net_on_teacher_targets_trains_for_the_fixed_horizon(tmp_path):
    """target teacher: the loss is the MSE to y^c = s^cᵀx; epochs 7: seven full-batch steps
    whatever the loss does (the target loss, 1e-9, is never reached)."""
    from ntkpipe.stages.data import linear_teacher

    p = {name: tmp_path / name for name in ("data.npz", "tasks.npz", "p1.pt", "snaps.pt",
                                            "tk.nc")}
    run = {**RUN, "activation": "linear", "depth": 3, "target": "teacher", "epochs": 7}
    stages.prepare_data("digits", None, p["data.npz"], provenance=PROV)
    stages.make_split(p["data.npz"], p["tasks.npz"], provenance=PROV, split={
        "classes_per_task": 10, "seed": 3, "order": "natural", "train_per_task": 100,
        "probe_size": 20, "probe_tasks": [1], "imbalance": 8.0, "n_tasks": 1,
        "shared_classes": 0, "alpha": 0.0})
    train = {**TRAIN, "sharpness": None}
    stages.train_phase1(p["data.npz"], p["tasks.npz"], p["p1.pt"], p["snaps.pt"], run=run,
                        train_cfg=train, model_cfg=MODEL, provenance=PROV)
    stages.train_kernel(p["data.npz"], p["tasks.npz"], p["snaps.pt"], p["tk.nc"], run=run,
                        model_cfg=MODEL, train_cfg=train, ntk_cfg=NTK,
                        settings={"block_subset": 50}, provenance=PROV)
    tk = xr.open_dataset(p["tk.nc"])
    assert int(tk["step"][-1]) == 7 and tk.attrs["target"] == "teacher"
    data = stages.load_data(p["data.npz"])
    x = data["x_train"].reshape(len(data["x_train"]), -1)
    np.testing.assert_allclose(tk["train_target"].values,
                               linear_teacher(x, 10, run["seed"])[tk["train_index"].values],
                               rtol=1e-12)
    # the recorded loss at step 0 is the MSE of the initial outputs to the teacher's targets
    f0, y = tk["train_output"].values[0], tk["train_target"].values
    assert float(tk["network_loss"][0]) == pytest.approx(
        0.5 * np.mean(np.sum((f0 - y) ** 2, axis=1)), rel=1e-5)
    assert np.isfinite(tk["block_alignment"].values).all()  # every output has a target
