"""The real workflow, end to end, on a tiny config in a temporary directory."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from ntkpipe.summary import grid, open_results

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

TINY = {
    "results": "out",
    "probe": {"size": 20},
    "train": {"batch_size": 32, "phase1": {"max_epochs": 3}, "phase2": {"epochs": 2},
              "snapshots": {"log_points": 4, "dense_steps": 3}},
    "ntk": {"kernels": ["trace", "per_layer"]},
    "sweeps": {
        "width": {"width": [16], "regime": ["lazy", "feature"]},
        "similarity": {"shared_classes": [0, 5], "width": [16], "regime": ["lazy"]},
    },
}

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, config: dict, *args: str,
              sort_keys: bool = True) -> subprocess.CompletedProcess:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=sort_keys))
    return subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "--configfile", str(path), "--cores", "2", *args],
                          capture_output=True, text=True, timeout=900)


def jobs(dry_run_output: str) -> dict[str, int]:
    """The job-stats table of a dry run, as {rule: count}."""
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m.group(1) != "total"}


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    done = snakemake(workdir, TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def test_the_summary_names_each_runs_sweeps_and_carries_its_config(workflow):
    ds = xr.open_dataset(workflow / "out/summary/metrics.nc")
    found = {(str(r), int(k)): str(w) for r, k, w in
             zip(ds["regime"].values, ds["shared_classes"].values, ds["sweep"].values)}
    # lazy, no shared class: in both sweeps; the matched control and the feature run in one
    assert found == {("lazy", 0): "similarity,width", ("lazy", 5): "similarity",
                     ("feature", 0): "width"}
    config = json.loads(ds.attrs["workflow_config_json"])
    assert config["sweeps"]["width"]["width"] == [16] and config["results"] == "out"


def test_lint_is_clean(tmp_path):
    """Every rule that runs Python has the conda env, and nothing else is linted."""
    out = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory",
                          str(REPO), "--lint"], capture_output=True, text=True, timeout=300)
    lints = [line.strip() for line in (out.stdout + out.stderr).splitlines()
             if line.strip().startswith("* ")]
    assert lints == [] and "Congratulations" in out.stdout + out.stderr, lints
    env = yaml.safe_load((REPO / "envs/ntkpipe.yaml").read_text())
    assert "snakemake-minimal>=9,<10" in env["dependencies"]  # `script:` needs it in the env


def _reversed(mapping: dict) -> dict:
    return {k: _reversed(v) if isinstance(v, dict) else v for k, v in reversed(mapping.items())}


def test_the_same_config_written_otherwise_reruns_nothing(workflow):
    """Keys in another order (at every level), defaults spelt out, 10 for 10.0: the rules'
    params are canonical, so nothing is stale."""
    same = _reversed(TINY)
    same["train"] = {**same["train"], "lazy_lr_scale": 10, "lr": 0.1, "momentum": 0}
    done = snakemake(workflow, same, "--dry-run", sort_keys=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in done.stdout + done.stderr, done.stdout[-3000:]
    # a real change still reruns what depends on it
    changed = {**same, "train": {**same["train"], "lazy_lr_scale": 5}}
    plan = jobs(snakemake(workflow, changed, "--dry-run", sort_keys=False).stdout)
    assert plan.get("train_phase1") == 1  # the one lazy phase-1 run of width 16


def test_a_selection_writes_beside_the_full_run_not_over_it(workflow):
    """experiments=[similarity]: its summary, scorecard and figures go under
    out/selections/similarity/; the full run's stay as they were; no run retrains."""
    full = {p: p.read_bytes() for p in [workflow / "out/scorecard.csv",
                                        workflow / "out/summary/metrics.nc"]}
    selection = {**TINY, "experiments": ["similarity"]}
    done = snakemake(workflow, selection)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train_phase1" not in done.stderr  # its runs are the full run's: nothing retrains
    chosen = workflow / "out/selections/similarity"
    assert (chosen / "scorecard.csv").is_file() and (chosen / "summary/metrics.nc").is_file()
    assert xr.open_dataset(chosen / "summary/metrics.nc").sizes["run"] == 2
    assert all(p.read_bytes() == data for p, data in full.items())
    cli = Path(sys.executable).parent / "ntkpipe"
    (workflow / "sel.yaml").write_text(yaml.safe_dump(selection))
    card = subprocess.run([str(cli), "scorecard", "--config", "sel.yaml", "--json"],
                          cwd=workflow, capture_output=True, text=True, timeout=120)
    assert card.returncode == 0 and json.loads(card.stdout), card.stderr


def test_a_replaced_dataset_file_rebuilds_the_cache_and_an_untouched_one_nothing(tmp_path):
    import os

    from test_data import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"data/mnist/{prefix}-images-idx3-ubyte",
                  rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"data/mnist/{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    cfg = {**TINY, "dataset": {"name": "mnist", "root": "data/mnist", "classes_per_task": 5}}
    target = "out/data/mnist.npz"
    assert snakemake(tmp_path, cfg, target).returncode == 0
    assert "Nothing to be done" in snakemake(tmp_path, cfg, target, "-n").stdout
    labels = tmp_path / "data/mnist/train-labels-idx1-ubyte"
    write_idx(labels, (np.arange(40) + 1) % 10)  # replaced in place, newer
    os.utime(labels, (labels.stat().st_atime, labels.stat().st_mtime + 10))
    plan = jobs(snakemake(tmp_path, cfg, target, "-n").stdout)
    assert plan == {"prepare_data": 1}


def test_snapshots_can_be_dropped_once_their_kernels_exist(tmp_path):
    small = {**TINY, "storage": {"keep_snapshots": False},
             "sweeps": {"one": {"width": [16], "regime": ["feature"]}}}
    done = snakemake(tmp_path, small)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "out/runs"
    assert not list(runs.rglob("*_snapshots.pt"))  # removed after the last job using them
    assert list(runs.rglob("phase1.pt")) and len(list(runs.rglob("ntk.nc"))) == 1
    assert (tmp_path / "out/scorecard.csv").is_file()


def test_summary_has_sweep_dimensions_and_named_metrics(workflow):
    ds = grid(open_results(workflow / "out"),  # dense over these keys
              ("regime", "shared_classes", "classes_per_task", "width"))
    for name in ("spectral_norm", "kernel_distance", "kernel_velocity", "kernel_alignment"):
        assert "step" in ds[name].dims and "width" in ds[name].dims
    assert list(ds["regime"].values) == ["feature", "lazy"]
    assert list(ds["shared_classes"].values) == [0, 5]
    np.testing.assert_allclose(ds["similarity"].sel(classes_per_task=5).values, [0.0, 1.0])
    run = ds.sel(width=16, regime="lazy", shared_classes=0, probe=1).squeeze()
    norm = run["spectral_norm"].dropna("step")
    assert len(norm) >= 5 and (norm > 0).all()
    assert float(run["kernel_distance"].dropna("step")[0]) == pytest.approx(0.0, abs=1e-9)
    assert np.isfinite(run["velocity_spike"].values).all()
    assert run["accuracy_matrix"].shape == (2, 2)
    for name in ("target_alignment", "top_eigenvector_alignment"):
        values = run[name].dropna("step").values
        assert len(values) == len(norm) and ((values > 0) & (values <= 1 + 1e-9)).all()


def test_per_run_files_carry_provenance(workflow):
    ntk_files = sorted((workflow / "out/runs").rglob("ntk.nc"))
    assert len(ntk_files) == 3
    ds = xr.open_dataset(ntk_files[0])
    for key in ("config_json", "wildcards_json", "ntkpipe_version", "git_commit",
                "torch_version", "device", "seed", "Conventions"):
        assert key in ds.attrs, key
    stats = json.loads(ds.attrs["normalisation_json"])  # from the training split
    assert len(stats["mean"]) == len(stats["std"]) == 1 and stats["std"][0] > 0
    assert ds["ntk_trace"].dims == ("probe", "step", "sample", "sample_j")
    per_layer = ds["ntk_per_layer"].sum("layer")
    np.testing.assert_allclose(per_layer.values, ds["ntk_trace"].values, rtol=1e-4, atol=1e-6)
    assert list(ds["probe"].values) == [1, 2]
    assert not list(workflow.rglob("*.tmp")), "temporary files left behind"


def test_figures_and_scorecard(workflow):
    import csv

    from ntkpipe import scorecard, studies, sweep
    from ntkpipe.config import validate

    points = sweep.all_points(validate(TINY))
    expected = [name for study in studies.load_all(None) for name in
                study.applicable(points, set())]
    assert sorted(p.stem for p in (workflow / "out/figures").glob("*.png")) == sorted(expected)
    for name in expected:
        data = (workflow / f"out/figures/{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with open(workflow / "out/scorecard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["holds"] for r in rows} <= set(scorecard.VERDICTS)
    assert any(r["claim"].startswith("1.") and r["holds"] != "untested" for r in rows)


def test_second_run_has_nothing_to_do(workflow):
    again = snakemake(workflow, TINY)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


def test_phase2_setting_never_retrains_phase1(workflow):
    changed = {**TINY, "train": {**TINY["train"], "phase2": {"epochs": 3}}}
    plan = jobs(snakemake(workflow, changed, "--dry-run").stdout)
    assert "train_phase1" not in plan
    assert plan["train_phase2"] == 3


def test_a_gd_stopping_rule_never_retrains_sgd_runs(workflow):
    changed = {**TINY, "train": {**TINY["train"], "phase1": {
        "max_epochs": {"sgd": 3, "gd": 500}, "target_loss": {"mse": 0.1}}}}
    plan = snakemake(workflow, changed, "--dry-run")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "Nothing to be done" in plan.stdout + plan.stderr


def test_adding_a_width_runs_only_that_width(workflow):
    wider = {**TINY, "sweeps": {**TINY["sweeps"],
                                "width": {"width": [16, 24], "regime": ["lazy", "feature"]}}}
    out = snakemake(workflow, wider, "--dry-run")
    plan = jobs(out.stdout)
    assert plan == {"train_phase1": 2, "train_phase2": 2, "extract_ntk": 2, "metrics": 2,
                    "collect": 1, "study_measures": 4, "study_scorecard": 4,
                    "figures_reactivation": 1, "figures_continual": 1, "scorecard": 1,
                    "report_page": 1, "all": 1}
    assert "width~16" not in out.stdout.split("rule train_phase1")[1].split("\n\n")[0]


def test_bad_config_stops_before_any_job(tmp_path):
    bad = {**TINY, "sweeps": {"width": {"width": [0]}}}
    out = snakemake(tmp_path, bad)
    assert out.returncode == 1
    assert "ntkpipe: invalid config: 'sweeps.width.width[0]'" in out.stderr
    assert not (tmp_path / "out").exists()


def test_report_declares_every_figure(workflow):
    report = workflow / "report.html"
    out = snakemake(workflow, TINY, "--report", str(report))
    assert out.returncode == 0, out.stderr[-2000:]
    html = report.read_text(errors="replace")
    for name in ("metrics_by_width", "accuracy_by_task", "scorecard"):
        assert name in html


def test_the_report_page_shows_the_scorecard_table_and_every_figure_with_its_caption(workflow):
    import base64
    import csv

    from ntkpipe.figures import png_provenance

    page = (workflow / "out/report.html").read_text()
    with open(workflow / "out/scorecard.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert page.count("<tr><td class='v ") == len(rows)
    assert f"{len(rows)} claims: " in page
    for png in sorted((workflow / "out/figures").glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        assert f"src='data:image/png;base64,{data}'" in page  # the very file, at full size
        assert f"<figcaption><b>{png.stem}</b>" in page
        stamp = png_provenance(png)
        assert stamp["figure"] == png.stem and stamp["git_commit"] and stamp["config_json"]
    sidecar = json.loads((workflow / "out/scorecard.provenance.json").read_text())
    assert sidecar["file"] == "scorecard.csv" and "ntkpipe_version" in sidecar


def test_example_script_runs_on_the_summary(workflow, tmp_path):
    png = tmp_path / "v.png"
    out = subprocess.run([sys.executable, str(REPO / "examples/inspect_results.py"),
                          str(workflow / "out"), "--width", "16",
                          "--regime", "lazy", "--out", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "velocity spike" in out.stdout and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_runs_and_summary(workflow):
    cli = Path(sys.executable).parent / "ntkpipe"
    (workflow / "config.yaml").write_text(yaml.safe_dump(TINY))
    runs = subprocess.run([str(cli), "runs", "--config", "config.yaml", "--json"],
                          cwd=workflow, capture_output=True, text=True, timeout=120)
    assert runs.returncode == 0, runs.stderr
    rows = json.loads(runs.stdout)
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}
    assert all(len(r["final_accuracy"]) == 2 for r in rows)
    for r in rows:  # two tasks: BWT = R[2,1] − R[1,1]; forgetting = max(R[1,1]) − R[2,1] = −BWT
        assert -1 <= r["backward_transfer"] <= 1
        assert r["forgetting"] == pytest.approx(-r["backward_transfer"], abs=1e-4)
    summary = subprocess.run([str(cli), "summary", "--config", "config.yaml"], cwd=workflow,
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0 and "kernel_velocity" in summary.stdout
    show = subprocess.run([str(cli), "show", rows[0]["run_id"] + "/" + rows[0]["shift_id"],
                           "--config", "config.yaml"], cwd=workflow, capture_output=True,
                          text=True, timeout=120)
    assert show.returncode == 0 and "boundary 1" in show.stdout, show.stderr
    # the same run by its short id, and by the sweep values that single it out
    by_id, by_values = (subprocess.run([str(cli), "show", *words, "--config", "config.yaml",
                                        "--json"], cwd=workflow, capture_output=True, text=True,
                                       timeout=120)
                        for words in ([rows[0]["id"]], [f"{k}={rows[0][k]}" for k in
                                                        ("regime", "shared_classes")]))
    assert by_id.returncode == 0 and by_values.returncode == 0, by_values.stderr
    assert json.loads(by_id.stdout) == json.loads(by_values.stdout)  # strict JSON both


def test_cli_stale_status_follows_snakemake(workflow):
    cli = Path(sys.executable).parent / "ntkpipe"

    def statuses(config):
        (workflow / "config.yaml").write_text(yaml.safe_dump(config))
        out = subprocess.run([str(cli), "runs", "--json", "--snakefile", str(REPO / "Snakefile")],
                             cwd=workflow, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return {r["status"] for r in json.loads(out.stdout)}

    assert statuses(TINY) == {"done"}
    assert statuses({**TINY, "train": {**TINY["train"], "phase2": {"epochs": 3}}}) == {"stale"}
    (workflow / "config.yaml").write_text(yaml.safe_dump(TINY))


@pytest.mark.parametrize("damage", ["missing dataset", "truncated checkpoint"])
def test_bad_input_inside_a_job_is_one_line(tmp_path, damage):
    """A job whose input is missing or damaged fails with one line naming it, no traceback."""
    config = {**TINY, "sweeps": {"one": {"width": [16], "regime": ["feature"]}}}
    if damage == "missing dataset":
        config["dataset"] = {"name": "mnist", "root": str(tmp_path / "no-mnist")}
        log_name = "prepare_data/mnist.log"
    else:
        assert snakemake(tmp_path, config, "--until", "train_phase1").returncode == 0
        checkpoint = next((tmp_path / "out/runs").rglob("phase1.pt"))
        checkpoint.write_bytes(checkpoint.read_bytes()[:500])
        config["train"] = {**TINY["train"], "phase2": {"epochs": 1}}
        log_name = "phase2.log"
    out = snakemake(tmp_path, config)
    assert out.returncode == 1
    log = next((tmp_path / "out/logs").rglob(Path(log_name).name)).read_text()
    assert log.strip().splitlines()[-1].startswith("ntkpipe: ") and "Traceback" not in log
    assert ("mnist" in log) if damage == "missing dataset" else ("phase1.pt" in log)
    assert "ntkpipe: " in out.stderr
    assert not list((tmp_path / "out").rglob("metrics.nc"))


DYNAMICS = {
    "results": "out",
    "probe": {"size": 20, "tasks": [1]},
    "train": {"loss": "mse", "optimizer": "gd", "batch_size": "full",
              "phase1": {"target_loss": {"mse": 1e-6}, "max_epochs": {"gd": 12}},
              "snapshots": {"log_points": 3}},
    "analysis": {"sharpness": {"every": 4, "subset": 30},
                 "train_kernel": {"loss_points": 20}},
    "sweeps": {
        "eos": {"analyses": ["sharpness"], "n_tasks": [1], "width": [16],
                "regime": ["feature"], "activation": ["tanh"], "lr": [0.05, 0.1]},
        "features": {"analyses": ["train_kernel", "specialization"], "n_tasks": [1],
                     "width": [16], "regime": ["feature"], "activation": ["relu", "linear"],
                     "depth": [1, 2], "lr": [0.05], "epochs": [6]},
    },
}


@pytest.fixture(scope="module")
def dynamics(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dynamics")
    plan = jobs(snakemake(workdir, DYNAMICS, "--dry-run").stdout)
    done = snakemake(workdir, DYNAMICS)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, plan


def test_analyses_run_only_where_a_sweep_asks(dynamics):
    _, plan = dynamics
    assert plan["sharpness"] == 2 and plan["train_kernel"] == 4
    assert "train_phase2" not in plan  # a single task has no phase 2


def test_analyses_reach_the_summary(dynamics):
    workdir, _ = dynamics
    ds = open_results(workdir / "out")
    eos = ds.where(ds["activation"] == "tanh", drop=True)
    np.testing.assert_allclose(eos["stability_threshold"].values, [40.0, 20.0])
    assert np.isfinite(eos["sharpness"].values).any()
    assert np.isnan(eos["kgd_loss"].values).all()  # not asked for in that sweep
    feats = ds.where(ds["activation"] != "tanh", drop=True)
    assert feats.sizes["run"] == 4 and np.isnan(feats["sharpness"].values).all()
    for name in ("kgd_loss", "akgd_loss", "effective_gamma", "eigen_exponent",
                 "probe_specialization", "probe_layer_alignment", "train_ksm", "fe_alignment",
                 "hidden_ksm_dominance"):
        assert np.isfinite(feats[name].values).any(), name
    # the fixed horizon: six full-batch steps, whatever the loss
    last = feats["fe_alignment"].dropna("step", how="all")["step"].values.max()
    assert int(last) == 6
    first = feats.isel(loss_point=0)
    np.testing.assert_allclose(first["kgd_loss"].values, first["network_loss"].values,
                               rtol=1e-5)


def test_an_analysis_setting_reruns_only_that_analysis(dynamics):
    workdir, _ = dynamics
    changed = {**DYNAMICS, "analysis": {**DYNAMICS["analysis"],
                                        "sharpness": {**DYNAMICS["analysis"]["sharpness"], "eigenvectors": 5}}}
    plan = jobs(snakemake(workdir, changed, "--dry-run").stdout)
    assert plan["sharpness"] == 2 and plan["study_measures"] == 1  # the edge of stability's
    assert not {"train_phase1", "extract_ntk", "train_kernel", "metrics", "collect",
                "figures_feature_evolution"} & set(plan)


def test_a_sharpness_monitor_setting_retrains_only_the_runs_it_watches(dynamics):
    workdir, _ = dynamics
    changed = {**DYNAMICS, "analysis": {**DYNAMICS["analysis"],
                                        "sharpness": {**DYNAMICS["analysis"]["sharpness"],
                                                      "every": 6}}}
    plan = jobs(snakemake(workdir, changed, "--dry-run").stdout)
    # measured while training: the two sharpness runs retrain, the four others do not
    assert plan["train_phase1"] == 2 and plan["sharpness"] == 2
    assert "train_kernel" not in plan


def test_cli_shows_the_study_measures_of_a_run(dynamics):
    workdir, _ = dynamics
    cli = Path(sys.executable).parent / "ntkpipe"
    (workdir / "config.yaml").write_text(yaml.safe_dump(DYNAMICS))
    found = {}
    for path in sorted((workdir / "out/runs").rglob("metrics.nc")):
        show = subprocess.run([str(cli), "show", str(path), "--config", "config.yaml",
                               "--json"], cwd=workdir, capture_output=True, text=True,
                              timeout=120)
        assert show.returncode == 0, show.stderr
        end = json.loads(show.stdout)[-1]
        assert end["at"] == "end"
        found["tanh" if "activation~tanh" in str(path) else "other"] = end
    assert found["tanh"]["stability_threshold"] in (20.0, 40.0)
    assert found["tanh"]["final_sharpness"] > 0
    assert {"final_kgd_loss", "effective_gamma", "final_train_ksm_dominance",
            "eigen_exponent_final"} <= set(found["other"])


def test_own_study_adds_its_row_and_figure_and_reruns_nothing_else(workflow, tmp_path):
    """The example study from a file: adding it runs its jobs only; editing it reruns them
    only (its code hash), never another study's or training."""
    import csv
    import shutil

    from ntkpipe import studies

    shutil.copytree(REPO / "examples/custom_study", tmp_path / "custom")
    module = tmp_path / "custom/forgetting.py"
    config = {**TINY, "studies": [*studies.BUILTIN, str(module)]}
    plan = jobs(snakemake(workflow, config, "--dry-run").stdout)
    own = {"study_measures": 1, "study_scorecard": 1, "figures_forgetting": 1, "scorecard": 1,
           "report_page": 1, "all": 1}
    assert plan == own
    done = snakemake(workflow, config)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(workflow / "out/scorecard.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["study"] == "forgetting"]
    assert len(rows) == 1 and rows[0]["holds"] in ("true", "false")
    assert float(rows[0]["value"]) > 0  # task 1 is forgotten after disjoint classes
    assert (workflow / "out/figures/forgetting_by_similarity.png").read_bytes()[:4] == b"\x89PNG"
    module.write_text(module.read_text() + "\n# an edit\n")
    assert jobs(snakemake(workflow, config, "--dry-run").stdout) == own
    restored = snakemake(workflow, TINY)  # leave the shared workflow as the other tests expect
    assert restored.returncode == 0, restored.stderr[-3000:]


def test_a_study_that_does_not_load_is_one_line(tmp_path):
    out = snakemake(tmp_path, {**TINY, "studies": ["reactivation", "nosuch.module"]})
    assert out.returncode == 1
    assert "ntkpipe: invalid config: 'studies': study 'nosuch.module' does not import" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()


def _boundary_measures(log_points: int, workdir: Path):
    """The Reactivation measures of a width-16 run and its matched control, trained with
    `log_points` log-spaced snapshots per task."""
    config = {**TINY, "train": {**TINY["train"], "snapshots": {
        "log_points": log_points, "dense_steps": 3, "after_boundary": {"every": 4, "steps": 20}}},
        "ntk": {"kernels": ["trace"]},
        "sweeps": {"w": {"width": [16], "regime": ["feature"], "shared_classes": [0, 5]}}}
    workdir.mkdir()
    done = snakemake(workdir, config, "--until", "study_measures")
    assert done.returncode == 0, done.stderr[-3000:]
    return xr.load_dataset(workdir / "out/summary/reactivation.nc")


def test_boundary_measures_do_not_depend_on_the_log_spaced_schedule(tmp_path):
    """Three times as many log-spaced snapshots leave every boundary measure as it was: they
    read the dense dt = 1 windows and the fixed post-boundary grid only."""
    sparse = _boundary_measures(3, tmp_path / "sparse")
    dense = _boundary_measures(9, tmp_path / "dense")
    assert sparse.attrs["dense_steps"] == 3
    measured = [name for name in sparse.data_vars if "boundary" in sparse[name].dims]
    assert {"velocity_spike", "velocity_excess", "norm_dip", "alignment_deflection"} <= \
        set(measured)
    for name in measured:
        np.testing.assert_allclose(dense[name].values, sparse[name].values, rtol=1e-6,
                                   atol=1e-12, equal_nan=True, err_msg=name)
    spike = sparse["velocity_spike"].sel(probe=1, boundary=1).values
    assert np.isfinite(spike).all() and (spike > 0).all()
    assert sparse["window_before"].sel(probe=1).values.tolist() == [[3.0], [3.0]]
    excess = sparse["velocity_excess"].sel(probe=1, boundary=1).values
    assert np.isfinite(excess).all() and 1.0 in np.round(excess, 12)  # the control over itself


def test_the_resnet_example_runs_end_to_end(tmp_path):
    import shutil

    shutil.copytree(REPO / "examples/resnet", tmp_path / "examples/resnet")
    example = yaml.safe_load((REPO / "examples/resnet/config.yaml").read_text())
    done = snakemake(tmp_path, example)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ntkpipe: checked model resnet on digits (1, 8, 8) -> 10 outputs" in done.stderr
    out = tmp_path / example["results"]
    ds = open_results(out)
    assert set(ds["width"].values) == {8, 16} and (ds["arch"].values == "resnet").all()
    log = next((out / "logs").rglob("extract_ntk.log")).read_text()
    assert "(BatchNorm2d): affine rule" in log and "cotangent by autograd" in log
    assert (out / "scorecard.csv").is_file()
    assert "Nothing to be done" in snakemake(tmp_path, example, "-n").stdout


def _custom_config(tmp_path: Path, **models) -> dict:
    from test_custom import NPZ, RESNET, write_npz

    data = write_npz(tmp_path / "data/mine.npz", n_train=80, n_test=40, classes=4)
    return {**TINY, "datasets": {"mine": {"loader": NPZ, "options": {"path": str(data)},
                                          "files": ["data/mine.npz"]}},
            "models": models or {"net": {"factory": RESNET, "kwargs": {"blocks": 1}}},
            "dataset": {"name": "mine", "classes_per_task": 2}, "model": {"arch": "net"},
            "sweeps": {"one": {"width": [4], "regime": ["feature"]}}}


def test_a_custom_dataset_and_model_run_and_their_changes_rerun_what_they_feed(tmp_path):
    from test_custom import write_npz

    cfg = _custom_config(tmp_path)
    done = snakemake(tmp_path, cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked dataset mine: 80 training and 40 test samples of shape (1, 8, 8)" in done.stderr
    assert "Nothing to be done" in snakemake(tmp_path, cfg, "-n").stdout
    other = {**cfg, "models": {"net": {**cfg["models"]["net"], "kwargs": {"blocks": 2}}}}
    plan = jobs(snakemake(tmp_path, other, "-n").stdout)  # new kwargs: retrain, same data
    assert plan["train_phase1"] == 1 and "prepare_data" not in plan
    data = tmp_path / "data/mine.npz"  # the file changes: the cache and all after it rerun
    write_npz(data, n_train=80, n_test=40, classes=4, seed=1)
    os.utime(data, (data.stat().st_atime, data.stat().st_mtime + 10))
    plan = jobs(snakemake(tmp_path, cfg, "-n").stdout)
    assert plan["prepare_data"] == 1 and plan["train_phase1"] == 1


@pytest.mark.parametrize("models, says", [
    ({"net": {"factory": "nosuchpkg.nets:resnet"}}, "ntkpipe: factory 'nosuchpkg.nets:resnet' "
                                                    "does not import"),
    ({"net": {"factory": "test_custom:wrong_shape"}}, "maps a batch of shape (2, 1, 8, 8) to "
                                                      "(2, 7); it must give (N, O) = (2, 4)"),
])
def test_custom_code_breaking_its_contract_stops_before_any_job(tmp_path, models, says):
    cfg = _custom_config(tmp_path, **models)
    env_path = f"{REPO / 'tests'}"
    out = subprocess.run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(_write(tmp_path, cfg)),
                          "--cores", "1"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": env_path})
    assert out.returncode == 1
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


def test_a_loader_with_labels_out_of_range_stops_before_any_job(tmp_path):
    from test_custom import write_npz

    cfg = _custom_config(tmp_path)
    write_npz(tmp_path / "data/mine.npz", n_train=80, n_test=40, classes=4,
              y_test=np.arange(40) % 6)
    cfg["datasets"]["mine"]["num_classes"] = 4
    out = snakemake(tmp_path, cfg)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "label 5 is out of range for num_classes 4" in out.stderr
    assert not (tmp_path / "out").exists()


def _write(workdir: Path, config: dict) -> Path:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_verify_repair_rebuilds_exactly_a_corrupted_kernel_and_what_follows(tmp_path):
    one = {**TINY, "sweeps": {"one": {"width": [16], "regime": ["feature"]}}}
    assert snakemake(tmp_path, one).returncode == 0
    ntk = next((tmp_path / "out/runs").rglob("ntk.nc"))
    ntk.write_bytes(ntk.read_bytes()[:1000])  # truncated, and newer than metrics.nc
    failed = snakemake(tmp_path, one)  # the stage reading it names it and the way out
    assert failed.returncode != 0
    assert f"{ntk.relative_to(tmp_path)}: not a readable NetCDF file" in failed.stderr
    assert "`ntkpipe verify --repair` removes it" in failed.stderr

    def verify(*flags):
        return subprocess.run([str(Path(sys.executable).parent / "ntkpipe"), "verify",
                               "--config", str(tmp_path / "config.yaml"), *flags],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)

    found = verify()
    assert found.returncode == 1
    assert found.stdout.splitlines()[0].startswith("out/runs/") and "ntk.nc: " in found.stdout
    assert "1 bad" in found.stdout.splitlines()[-1]
    assert verify("--repair").returncode == 0 and not ntk.exists()
    dry = snakemake(tmp_path, one, "-n")
    assert "Job stats:" in dry.stdout, dry.stdout[-2000:] + dry.stderr[-2000:]
    plan = jobs(dry.stdout)
    assert plan["extract_ntk"] == 1 and plan["metrics"] == 1
    assert not {"train_phase1", "train_phase2", "prepare_data"} & set(plan)
    assert snakemake(tmp_path, one).returncode == 0
    assert verify().stdout.strip().endswith("all good")


def test_strategies_share_phase_1_and_their_settings_rerun_only_their_runs(tmp_path):
    cfg = {**TINY, "sweeps": {"s": {"width": [16], "regime": ["feature"],
                                    "strategy": ["finetune", "replay", "ewc"]}}}
    done = snakemake(tmp_path, cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "out/runs").rglob("phase1.pt"))) == 1  # one phase 1 for all
    assert len(list((tmp_path / "out/splits").rglob("tasks.npz"))) == 1  # one task sequence
    ds = open_results(tmp_path / "out")
    assert sorted(ds["strategy"].values) == ["ewc", "finetune", "replay"]
    changed = {**cfg, "continual": {"ewc": {"strength": 5.0}}}
    plan = jobs(snakemake(tmp_path, changed, "-n").stdout)
    assert plan["train_phase2"] == 1 and "train_phase1" not in plan
    dry = snakemake(tmp_path, changed, "-n").stdout
    assert "strategy~ewc/phase2.pt" in dry and "strategy~replay/phase2.pt" not in dry
    assert (tmp_path / "out/figures/strategy_effects.png").is_file()
