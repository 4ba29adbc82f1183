"""Config validation: defaults, and one clear message naming the key for each bad input."""

import copy
import json

import pytest
import yaml

from ntkpipe import config, sweep

BASE = {"sweeps": {"w": {"width": [16, 32], "regime": ["lazy", "feature"]}}}


def with_(update: dict) -> dict:
    """BASE with `update` merged in (nested dicts merged, other values replaced)."""
    out = copy.deepcopy(BASE)

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v
    merge(out, update)
    return out


def test_defaults_are_filled_from_the_schema():
    full = config.validate(BASE)
    assert full["dataset"]["name"] == "digits"
    assert full["train"]["phase1"]["target_accuracy"] == pytest.approx(0.99)
    assert full["probe"]["size"] == 256
    assert full["results"] == "results"
    assert full["experiments"] is None


def test_validate_does_not_mutate_its_input():
    original = copy.deepcopy(BASE)
    config.validate(BASE)
    assert BASE == original


def test_repository_config_is_valid():
    full = config.load("config.yaml")
    assert set(full["sweeps"]) >= {"width", "similarity"}


BAD = [
    ({"bogus": 1}, "unknown key 'bogus' at the top level"),
    ({"train": {"lrr": 0.1}}, "unknown key 'lrr' under 'train'"),
    ({"train": {"lr": "fast"}}, "'train.lr'"),
    ({"train": {"lr": -0.1}}, "'train.lr'"),
    ({"train": {"momentum": 1.0}}, "'train.momentum'"),
    ({"sweeps": {"w": {"width": [0]}}}, "'sweeps.w.width[0]'"),
    ({"sweeps": {"w": {"width": 64}}}, "'sweeps.w.width'"),
    ({"sweeps": {"w": {"lr": [-1.0]}}}, "'sweeps.w.lr[0]'"),
    ({"sweeps": {"w": {"regime": ["lazzy"]}}}, "'sweeps.w.regime[0]' is 'lazzy'; allowed: lazy, feature"),
    ({"sweeps": {"w": {"shared_classes": [6]}}}, "larger than the task"),
    ({"sweeps": {"w": {"alpha": [1.5]}}}, "'sweeps.w.alpha[0]'"),
    ({"sweeps": {"w": {"n_tasks": [0]}}}, "'sweeps.w.n_tasks[0]'"),
    ({"sweeps": {"w": {"n_tasks": [3]}}}, "need 15 classes"),
    ({"sweeps": {"w": {"batch_size": ["all"]}}}, "'sweeps.w.batch_size[0]' is 'all'; allowed: a positive integer"),
    ({"sweeps": {"w": {"arch": ["cnn-relu"]}}}, "cnn-relu"),
    ({"sweeps": {"w": {"widht": [1]}}}, "unknown key 'widht' under 'sweeps.w'"),
    ({"dataset": {"name": "imagenet"}}, "'dataset.name' is 'imagenet', which is neither built-in (digits, mnist"),
    ({"dataset": {"classes_per_task": 0}}, "'dataset.classes_per_task'"),
    ({"probe": {"size": 0}}, "'probe.size'"),
    ({"ntk": {"kernels": ["diagonal"]}}, "'ntk.kernels[0]'"),
    ({"metrics": {"kernel": "full"}}, "'metrics.kernel' is 'full'"),
    ({"experiments": ["nope"]}, "'experiments' names 'nope', which is not a sweep"),
    ({"experiments": "w"}, "'experiments' is 'w'"),
    ({"results": "../elsewhere"}, "'results'"),
    ({"sweeps": {}}, "'sweeps' is empty"),
    ({"train": {"phase1": {"target_loss": {"hinge": 0.1}}}}, "'train.phase1.target_loss'"),
    ({"train": {"phase1": {"max_epochs": {"sgd": 10}}},
      "sweeps": {"w": {"optimizer": ["gd"]}}}, "has no entry for it; add gd: <epochs>"),
    ({"sweeps": {"w": {"analyses": ["hessian"]}}}, "'sweeps.w.analyses[0]' is 'hessian'"),
    ({"analysis": {"sharpness": {"subset": 0}}}, "'analysis.sharpness.subset'"),
    ({"analysis": {"train_kernel": {"fit_range": [5, 5]}}}, "k_min < k_max"),
    # a subset larger than task 1 (digits 0-4: 602 training images)
    ({"analysis": {"sharpness": {"subset": 700}}, "ntk": {"max_memory_gb": 64},
      "sweeps": {"w": {"analyses": ["sharpness"]}}},
     "'analysis.sharpness.subset' is 700, larger than the task it is drawn from: in sweep 'w' "
     "task 1 has 602 training samples (5 classes of digits); lower it to at most 602"),
    ({"analysis": {"train_kernel": {"block_subset": 300}}, "dataset": {"train_per_task": 250},
      "sweeps": {"w": {"analyses": ["train_kernel"]}}}, "task 1 has 250 training samples"),
    ({"dataset": {"class_order": "shuffled"}, "analysis": {"train_kernel": {"block_subset": 600}},
      "sweeps": {"w": {"analyses": ["train_kernel"]}}}, "task 1 can have as few as 593"),
    ({"sweeps": {"w": {"target": ["teacher"], "arch": ["cnn"], "loss": ["mse"]}}},
     "'sweeps.w.target' is teacher, which needs a flat input"),
    ({"sweeps": {"w": {"target": ["teacher"]}}}, "need loss mse, not 'cross_entropy'"),
    ({"sweeps": {"w": {"target": ["soft"]}}}, "'sweeps.w.target[0]' is 'soft'"),
    ({"sweeps": {"w": {"epochs": [0]}}}, "'sweeps.w.epochs[0]'"),
    ({"sweeps": {"w": {"regime": ["mean_field"]}}}, "'sweeps.w.regime[0]' is 'mean_field'"),
    ({"dataset": {"train_per_task": 100000}},
     "'dataset.train_per_task' is 100000 but in sweep 'w' a task of 5 classes of digits can "
     "have as few as 593 training samples; lower it, or set dataset.with_replacement: true"),
    ({"sweeps": {"w": {"lr": [float("nan")]}}}, "'sweeps.w.lr[0]' is nan; it must be a finite"),
    ({"train": {"lr": float("inf")}}, "'train.lr' is inf; it must be a finite number"),
    ({"sweeps": {"w": {"seed": [10 ** 20]}}}, "is greater than the maximum of 2147483647"),
    # the full training-subset kernel (5000 × 5000 float64, 3 copies) over the memory budget
    ({"analysis": {"sharpness": {"subset": 500}}, "ntk": {"max_memory_gb": 0.5},
      "sweeps": {"w": {"analyses": ["sharpness"]}}},
     "needs 0.6 GB, more than 'ntk.max_memory_gb' 0.5; lower the subset to 472 or raise"),
]


@pytest.mark.parametrize("update, message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_config_names_the_key(update, message):
    cfg = with_(update) if update.get("sweeps") != {} else {"sweeps": {}}
    with pytest.raises(config.ConfigError) as info:
        config.validate(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)  # one message, no traceback-like dump


def test_non_mapping_config():
    with pytest.raises(config.ConfigError, match="must be a mapping"):
        config.validate(["width"])


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweeps: {w: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)


def test_load_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweeps": {"a": {}, "b": {}}}))
    full = config.load(path, {"experiments": ["b"]})
    assert sweep.active_sweeps(full) == ["b"]


def test_sweep_points_normalise_shift_specific_keys():
    full = config.validate({"sweeps": {"s": {"shift": ["conceptual", "frequency"],
                                              "shared_classes": [0, 2], "alpha": [0.0, 0.5]}}})
    points = {(p["shift"], p["shared_classes"], p["alpha"]) for p in sweep.sweep_points(full, "s")}
    # conceptual ignores α (0), frequency keeps every class (k = 5)
    assert points == {("conceptual", 0, 0.0), ("conceptual", 2, 0.0),
                      ("frequency", 5, 0.0), ("frequency", 5, 0.5)}


def test_runs_share_phase1_across_shifts():
    full = config.validate({"sweeps": {"s": {"shared_classes": [0, 1, 2], "width": [32]}}})
    runs = list(sweep.iter_runs(full))
    assert len(runs) == 3 and len({r for r, _ in runs}) == 1


def test_ids_round_trip_and_match_their_regex():
    import re

    full = config.validate(BASE)
    for point in sweep.all_points(full):
        rid, sid = sweep.run_id(point), sweep.shift_id(point)
        assert re.fullmatch(sweep.id_regex(sweep.PHASE1_KEYS), rid)
        assert re.fullmatch(sweep.id_regex(sweep.SHIFT_KEYS), sid)
        assert {**sweep.parse_id(rid, sweep.PHASE1_KEYS),
                **sweep.parse_id(sid, sweep.SHIFT_KEYS)} == point


def test_effective_lr_of_the_lazy_regime_is_width_independent_unless_asked():
    assert sweep.effective_lr(0.1, "feature", 1024, 256, 10.0) == pytest.approx(0.1)
    assert sweep.effective_lr(0.1, "feature", 1024, 256, 10.0,
                              width_exponent=1) == pytest.approx(0.1)
    for width in (64, 256, 1024):  # the default: the NTK parametrisation at η · scale
        assert sweep.effective_lr(0.1, "lazy", width, 256, 10.0) == pytest.approx(1.0)
    # the old double scaling, an explicit option: η · scale · (256 / width)
    assert sweep.effective_lr(0.1, "lazy", 1024, 256, 10.0, width_exponent=1) == \
        pytest.approx(0.25)
    assert sweep.effective_lr(0.1, "lazy", 64, 256, 10.0, width_exponent=1) == pytest.approx(4.0)
    # the ntk regime is the NTK parametrisation at the lr as given: never scaled
    assert sweep.effective_lr(0.1, "ntk", 64, 256, 10.0, width_exponent=1) == pytest.approx(0.1)


def _fake_package(tmp_path, monkeypatch, files):
    """A package `fakepkg` with the given modules, importable for the code hash."""
    package = tmp_path / "fakepkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_code_hash_follows_what_a_module_imports(tmp_path, monkeypatch):
    from ntkpipe import smk

    package = _fake_package(tmp_path, monkeypatch, {
        "__init__.py": "import fakepkg.unrelated\n",
        "train.py": "x = 1\n\ndef f():\n    from fakepkg.sub import helper  # lazy\n",
        "sub/__init__.py": "import fakepkg.unrelated\n",
        "sub/helper.py": "from fakepkg import leaf\n",
        "leaf.py": "from fakepkg.leaf2 import name\n",
        "leaf2.py": "name = 1\n",
        "unrelated.py": "y = 1\n"})
    closure = {p.relative_to(package).as_posix() for p in smk.code_closure("fakepkg.train")}
    # lazy imports count; a package's __init__ only when imported by name
    assert closure == {"train.py", "sub/helper.py", "leaf.py", "leaf2.py"}
    before = smk.code_hash.__wrapped__("fakepkg.train")
    (package / "unrelated.py").write_text("y = 2\n")
    assert smk.code_hash.__wrapped__("fakepkg.train") == before  # unrelated: no rerun
    (package / "leaf2.py").write_text("name = 2\n")
    assert smk.code_hash.__wrapped__("fakepkg.train") != before  # imported two steps away


def test_code_hash_imports_nothing(tmp_path, monkeypatch):
    """Hashing reads source files only: `ntkpipe.stages.kernels` would import torch."""
    import subprocess
    import sys

    code = ("import sys; from ntkpipe import smk; smk.code_hash('ntkpipe.stages.kernels'); "
            "print('torch' in sys.modules, 'ntkpipe.ntk' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_study_modules_import_no_other_study():
    from ntkpipe import smk, studies

    for name in studies.BUILTIN:
        closure = {p.stem for p in smk.code_closure(f"ntkpipe.studies.{name}")}
        assert closure & set(studies.BUILTIN) == {name}
        assert not {"train", "ntk", "models"} & closure  # no torch in a study's jobs


def test_stopping_rules_by_loss_and_optimizer():
    from ntkpipe.stages.training import max_epochs, target_loss

    phase1 = config.validate(with_({"train": {"phase1": {
        "target_loss": {"mse": 0.05}, "max_epochs": {"sgd": 30, "gd": 900}}}}))["train"]["phase1"]
    assert target_loss(phase1, "mse") == 0.05 and target_loss(phase1, "cross_entropy") is None
    assert max_epochs(phase1, "gd") == 900 and max_epochs(phase1, "sgd") == 30
    plain = config.validate(BASE)["train"]["phase1"]
    assert target_loss(plain, "mse") is None and max_epochs(plain, "gd") == 100
    assert target_loss({"target_loss": 0.1}, "cross_entropy") == pytest.approx(0.1)


def test_run_analyses_are_the_union_of_the_sweeps_of_a_run():
    cfg = config.validate({"sweeps": {
        "a": {"width": [16, 32], "analyses": ["sharpness"]},
        "b": {"width": [32], "analyses": ["train_kernel"]},
        "c": {"width": [64]}}})
    found = {sweep.parse_id(run, sweep.PHASE1_KEYS)["width"]: names
             for (run, _), names in sweep.run_analyses(cfg).items()}
    assert found == {16: ["sharpness"], 32: ["sharpness", "train_kernel"], 64: []}
    assert len(sweep.all_points(cfg)) == 3  # `analyses` is not a run parameter


def test_integral_floats_become_the_integers_the_schema_means_and_vice_versa():
    """16.0 where an integer is meant is 16 before any path is built; 10 where a number is
    meant is 10.0: the run ids and the rules' params are the same either way."""
    a = config.validate({"probe": {"size": 20.0}, "train": {"lazy_lr_scale": 10},
                         "sweeps": {"w": {"width": [16.0], "lr": [1]}}})
    b = config.validate({"sweeps": {"w": {"lr": [1.0], "width": [16]}},
                         "train": {"lazy_lr_scale": 10.0}, "probe": {"size": 20}})
    assert a == b and json.dumps(a) == json.dumps(b)  # the same keys in the same order
    assert isinstance(a["probe"]["size"], int) and isinstance(a["train"]["lazy_lr_scale"], float)
    assert [sweep.run_id(p) for p in sweep.all_points(a)] == \
        [sweep.run_id(p) for p in sweep.all_points(b)]


def test_results_that_is_a_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(config.ConfigError, match="'results' is 'taken', which is an existing "
                                                 "file, not a directory"):
        config.validate({"results": "taken", "sweeps": {"w": {}}})


def test_nested_overrides_given_as_strings_are_read_as_yaml():
    # `snakemake --config 'probe={size: 20}' 'train={phase1: {max_epochs: 3}}'` hands these over
    cfg = config.validate({"sweeps": {"w": {"width": ["16", "32"]}},
                           "probe": {"size": "20", "tasks": "[1, 2]"},
                           "train": {"lr": "0.05", "phase1": {"max_epochs": "{sgd: 3, gd: 9}"}}})
    assert cfg["probe"] == {"size": 20, "tasks": [1, 2]}
    assert cfg["train"]["lr"] == pytest.approx(0.05)
    assert cfg["train"]["phase1"]["max_epochs"] == {"gd": 9, "sgd": 3}
    assert cfg["sweeps"]["w"]["width"] == [16, 32]


def test_strings_stay_strings_where_the_schema_wants_text():
    cfg = config.validate({"results": "123", "sweeps": {"w": {"batch_size": ["full"]}}})
    assert cfg["results"] == "123" and cfg["sweeps"]["w"]["batch_size"] == ["full"]
    with pytest.raises(config.ConfigError, match="'probe.size'"):
        config.validate({"sweeps": {"w": {}}, "probe": {"size": "twenty"}})
    with pytest.raises(config.ConfigError, match="'train.lr' is nan"):
        config.validate({"sweeps": {"w": {}}, "train": {"lr": ".nan"}})


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sweeps: {a: {width: [4]\n")
    with pytest.raises(config.ConfigError) as err:
        config.load(path)
    message = str(err.value)
    assert message.startswith(f"config file {path} is not valid YAML at line 2, column 1: ")
    assert "\n" not in message
