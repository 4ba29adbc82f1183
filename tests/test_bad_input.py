"""The reliability table: every bad input and fault of the hostile-user report (issue
"Reliability: nothing stale, nothing silent, every failure one clear line"), what ntkpipe does
with it, and the test that proves it. The config cases run here through `ntkpipe validate`
(one line on stderr, exit status 2, nothing written); the others name the test elsewhere that
covers them, and a test here checks each named test exists — the table cannot rot."""

import ast
import math
from pathlib import Path

import pytest
import yaml

from ntkpipe import cli

TESTS = Path(__file__).resolve().parent

# (case, what ntkpipe does, test that proves it)
COVERED = [
    ("a resume file outlives a change of settings", "its digest differs: discarded, logged, "
     "the run starts over (same bytes as a clean run)",
     "test_train.py::test_a_resume_file_left_by_other_settings_is_discarded_not_resumed"),
    ("dataset files replaced in place", "they are inputs of the cache rule: the cache and "
     "everything after it rerun; untouched files rerun nothing",
     "test_workflow.py::test_a_replaced_dataset_file_rebuilds_the_cache_and_an_untouched_one_nothing"),
    ("a custom dataset's file changes", "listed files are inputs: rebuilt",
     "test_workflow.py::test_a_custom_dataset_and_model_run_and_their_changes_rerun_what_they_feed"),
    ("the scorecard uses a diverged run", "rows drop runs that are not ok before computing, "
     "count them in the note, and turn untested when too few levels remain",
     "test_scorecard.py::test_a_learning_rate_left_with_no_ok_run_makes_the_lr_rows_untested"),
    ("a run ends at chance accuracy", "classified failed_to_learn and left out like a "
     "diverged one", "test_status.py::test_real_runs_are_classified_in_metrics_and_summary"),
    ("a failed-to-learn run in the scorecard", "left out, counted",
     "test_scorecard.py::test_a_run_that_failed_to_learn_is_left_out_like_a_diverged_one"),
    ("a truncated phase1.pt, ntk.nc or metrics.nc", "the reading stage names it and the way "
     "out; `ntkpipe verify --repair` removes it and what was built from it; the next run "
     "rebuilds exactly those",
     "test_workflow.py::test_verify_repair_rebuilds_exactly_a_corrupted_kernel_and_what_follows"),
    ("every kind of corrupted output", "found by `ntkpipe verify`",
     "test_verify.py::test_each_kind_of_damage_is_found_and_repaired_with_what_was_built_from_it"),
    ("a full disk", "one line: no space left on the device writing <path>, nothing "
     "half-written", "test_store.py::test_a_full_disk_is_one_line_naming_the_path"),
    ("an empty ImageFolder class", "one line naming the class and its folder",
     "test_data.py::test_an_empty_imagefolder_class_is_named_with_its_folder"),
    ("a refused unsafe checkpoint", "one line naming the blocked global, never the "
     "weights_only=False advice", "test_store.py::test_load_torch_refuses_pickled_code"),
    ("SIGKILL during training", "resumed, byte-identical",
     "test_reliability.py::test_sigkill_during_training_then_rerun_is_byte_identical"),
    ("a YAML syntax error", "one line with line and column",
     "test_config.py::test_a_yaml_syntax_error_is_one_line_with_its_position"),
    ("nested --config overrides", "parsed as YAML where the schema wants no string",
     "test_config.py::test_nested_overrides_given_as_strings_are_read_as_yaml"),
    ("16.0 where an integer is meant", "normalised to 16 before any path is built",
     "test_config.py::test_integral_floats_become_the_integers_the_schema_means_and_vice_versa"),
    ("a custom model with the wrong output shape", "one line before any job, nothing written",
     "test_workflow.py::test_custom_code_breaking_its_contract_stops_before_any_job"),
    ("a loader with labels out of range", "one line before any job, nothing written",
     "test_workflow.py::test_a_loader_with_labels_out_of_range_stops_before_any_job"),
]

# config files `ntkpipe validate` (and so `snakemake`) must refuse in one line
CONFIGS = [
    ("lr NaN", {"train": {"lr": math.nan}}, "'train.lr' is nan; it must be a finite number"),
    ("lr inf in a sweep", {"sweeps": {"w": {"lr": [math.inf]}}}, "'sweeps.w.lr[0]' is inf"),
    ("NaN scorecard threshold", {"scorecard": {"spike_ratio": math.nan}},
     "'scorecard.spike_ratio' is nan"),
    ("width 16.5", {"sweeps": {"w": {"width": [16.5]}}}, "'sweeps.w.width[0]'"),
    ("seed 10^20", {"sweeps": {"w": {"seed": [10 ** 20]}}}, "maximum of 2147483647"),
    ("train_per_task beyond the data", {"dataset": {"train_per_task": 100000}},
     "set dataset.with_replacement: true"),
    ("results is a file", {"results": "afile"}, "which is an existing file"),
    ("unknown arch", {"model": {"arch": "resnet50"}}, "'model.arch' is 'resnet50', which is "
     "neither built-in"),
    ("a replay buffer beyond the earlier data", {"continual": {"replay": {"buffer_size": 5000}},
                                                 "sweeps": {"w": {"strategy": ["replay"]}}},
     "'continual.replay.buffer_size' is 5000, larger than the earlier tasks' data: in sweep "
     "'w' task 1 has 602 training samples"),
    ("EWC on a single-task run", {"sweeps": {"w": {"strategy": ["ewc"], "n_tasks": [1]}}},
     "'sweeps.w.strategy' is ewc, which acts from task 2 on, but the sweep has n_tasks 1"),
    ("a strategy that does not exist", {"sweeps": {"w": {"strategy": ["si"]}}},
     "'sweeps.w.strategy[0]' is 'si'; allowed: finetune, replay, ewc, lwf"),
    ("a ViT patch that does not divide the image", {"model": {"arch": "vit", "vit": {
        "patch_size": 3}}}, "'model.vit.patch_size' is 3, which does not divide the 8×8 images"),
    ("unresolvable factory", {"models": {"net": {"factory": "nopkg.nets:make"}},
                              "model": {"arch": "net"}}, "does not import"),
]


def _test_exists(reference: str) -> bool:
    file, name = reference.split("::")
    tree = ast.parse((TESTS / file).read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


@pytest.mark.parametrize("case, does, reference", COVERED, ids=[c[0] for c in COVERED])
def test_each_case_names_a_test_that_exists(case, does, reference):
    assert _test_exists(reference), f"{case}: {reference} is not a test"


@pytest.mark.parametrize("case, update, message", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_a_bad_config_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, case,
                                                        update, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    cfg = {"results": "out", "sweeps": {"w": {"width": [8]}}, **update}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = sorted(tmp_path.rglob("*"))
    assert cli.main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert cli.main(["validate", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err == f"ntkpipe: invalid config: config file {tmp_path / 'nope.yaml'} does not exist\n"
