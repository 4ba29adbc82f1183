"""The `ntkpipe` command without a workflow run: strict JSON, one clear line for what is
missing."""

import json

import numpy as np
import pytest
import yaml

from ntkpipe import cli

CONFIG = {"results": "out", "sweeps": {"w": {"width": [16, 32], "regime": ["lazy"]}}}


@pytest.fixture()
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return "config.yaml"


def test_jsonable_turns_nan_and_numpy_into_json():
    value = {"a": float("nan"), "b": [np.float64(1.5), np.inf, np.int64(3)], 4: (np.nan,)}
    assert cli.jsonable(value) == {"a": None, "b": [1.5, None, 3], "4": [None]}
    json.dumps(cli.jsonable(value), allow_nan=False)  # strict JSON


def test_validate_json_is_json(config, capsys):
    assert cli.main(["validate", "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"config": config, "valid": True, "runs": 2, "phase1_runs": 2,
                   "sweeps": ["w"], "custom": []}  # the custom models and datasets checked


def test_validate_json_of_a_bad_config_is_json_too(config, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"sweeps": {"w": {"widht": [1]}}}))
    assert cli.main(["validate", "--config", "bad.yaml", "--json"]) == 2
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["valid"] is False and "unknown key 'widht'" in out["error"]
    assert captured.err.count("\n") == 1  # one line on stderr


@pytest.mark.parametrize("command", ["summary", "scorecard"])
def test_a_result_that_does_not_exist_yet_is_one_line(config, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--config", config])
    assert "does not exist yet; run the workflow first" in str(info.value)
    assert "\n" not in str(info.value)


def test_runs_before_a_run_lists_every_run_as_missing(config, capsys):
    assert cli.main(["runs", "--config", config, "--json", "--snakefile", "none"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["missing", "missing"]
    # a run's ids do not shadow its sweep values (the `shift` column is the kind of shift)
    assert all(r["shift_id"].startswith("shift~") and "run_id" in r for r in rows)
    assert sorted(r["width"] for r in rows) == [16, 32]


def test_runs_selects_by_key_value_and_names_runs_by_a_short_stable_id(config, capsys):
    assert cli.main(["runs", "width=32", "--config", config, "--json", "--snakefile", "x"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["width"] == 32 and len(row["id"]) == 8
    int(row["id"], 16)  # hex
    cli.main(["runs", "--config", config, "--json", "--snakefile", "x"])
    ids = [r["id"] for r in json.loads(capsys.readouterr().out)]
    assert row["id"] in ids and len(set(ids)) == 2


@pytest.mark.parametrize("words, message", [
    (["widht=3"], "'widht=3' is not a selection"),
    (["regime=lazy"], "matches 2 runs"),
    (["width=64"], "matches 0 runs"),
    (["nothing-here"], "no metrics.nc for run 'nothing-here'"),
])
def test_show_names_what_does_not_select_one_run(config, words, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["show", *words, "--config", config])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_scorecard_text_fits_100_columns_with_notes_and_a_tally():
    rows = [{"study": "edge_of_stability", "claim": "a. " + "long claim " * 20, "value": "0.83",
             "low": "0.8", "high": "1", "threshold": ">= 0.5", "holds": "true",
             "note": "n " * 100},
            {"study": "feature_evolution", "claim": "d. short", "value": "", "low": "",
             "high": "", "threshold": "< 1", "holds": "untested", "note": ""}]
    text = cli.scorecard_text(rows, notes=True)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].startswith("true") and lines[0].endswith("0.83 [0.8, 1] >= 0.5")
    assert lines[1].strip().startswith("n n")  # the note under its row
    assert lines[-1] == "all: 2 claims — 1 true, 1 untested"
    assert "n n" not in cli.scorecard_text(rows)


def test_the_snakemake_plan_is_remembered_until_the_config_code_or_outputs_change(
        config, tmp_path, monkeypatch):
    calls = []

    def plan(config_path, snakefile):
        calls.append(config_path)
        return {}

    monkeypatch.setattr(cli, "snakemake_plan", plan)
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("")
    results = tmp_path / "out"
    results.mkdir()
    assert cli.cached_plan(config, snakefile, results) == {} and len(calls) == 1
    assert cli.cached_plan(config, snakefile, results) == {} and len(calls) == 1  # remembered
    (results / "runs").mkdir()
    (results / "runs" / "new.nc").write_bytes(b"x")  # an output appeared
    cli.cached_plan(config, snakefile, results)
    assert len(calls) == 2
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**CONFIG, "probe": {"size": 9}}))
    cli.cached_plan(config, snakefile, results)
    assert len(calls) == 3
    (results / "logs").mkdir()
    (results / "logs" / "a.log").write_text("logs are not outputs")
    cli.cached_plan(config, snakefile, results)
    assert len(calls) == 3


def test_the_remembered_plan_follows_your_own_models_source(config, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "snakemake_plan", lambda *a: calls.append(a) or {})
    factory = tmp_path / "net.py"
    factory.write_text("def make(in_shape, num_outputs):\n    pass\n")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {**CONFIG, "models": {"net": {"factory": f"{factory}:make"}}}))
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("")
    results = tmp_path / "out"
    results.mkdir()
    cli.cached_plan(config, snakefile, results)
    cli.cached_plan(config, snakefile, results)
    assert len(calls) == 1
    factory.write_text("def make(in_shape, num_outputs):\n    return None\n")
    from ntkpipe.smk import code_hash

    code_hash.cache_clear()
    cli.cached_plan(config, snakefile, results)
    assert len(calls) == 2
