"""Your own models and datasets: resolving, the contracts, the checks before any job, and the
worked ResNet example's kernel against the reference."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ntkpipe import custom
from ntkpipe.config import ConfigError, validate
from ntkpipe.ntk import empirical_ntk, kernel_plan, reference_ntk
from ntkpipe.stages import make_model
from ntkpipe.sweep import all_points

REPO = Path(__file__).resolve().parents[1]
RESNET = f"{REPO}/examples/resnet/resnet.py:make_resnet"
NPZ = f"{REPO}/examples/custom_data/npz_data.py:load"


def write_npz(path: Path, n_train: int = 60, n_test: int = 30, classes: int = 4,
              shape: tuple = (1, 8, 8), seed: int = 0, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.normal(size=(n_train, *shape)),
              "y_train": np.arange(n_train) % classes,
              "x_test": rng.normal(size=(n_test, *shape)), "y_test": np.arange(n_test) % classes}
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def config(tmp_path: Path, **extra) -> dict:
    base = {"results": str(tmp_path / "out"),
            "models": {"resnet": {"factory": RESNET, "kwargs": {"blocks": 1}}},
            "model": {"arch": "resnet"}, "probe": {"size": 10, "tasks": [1]},
            "sweeps": {"one": {"width": [4], "regime": ["feature"]}}}
    base.update(extra)
    return validate(base)


# ---------------------------------------------------------------------------- resolving

def test_module_and_file_targets_resolve_to_the_function():
    assert custom.resolve("ntkpipe.models:make_mlp").__name__ == "make_mlp"
    assert custom.resolve(RESNET).__name__ == "make_resnet"
    assert custom.is_import_path("pkg.mod:fn") and not custom.is_import_path("resnet")


@pytest.mark.parametrize("target, says", [
    ("nosuchpackage.nets:resnet", "does not import"),
    ("ntkpipe.models:no_such_function", "has no function 'no_such_function'"),
    ("missing/file.py:make", "does not exist"),
    ("resnet18", "is not an import path"),
])
def test_a_target_that_does_not_resolve_says_why(target, says):
    with pytest.raises(custom.CustomCodeError, match=says):
        custom.resolve(target)


def test_a_file_that_fails_to_import_names_the_error(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(custom.CustomCodeError, match="fails to import: RuntimeError: boom"):
        custom.resolve(f"{bad}:make")


def test_the_code_hash_follows_the_file(tmp_path):
    src = tmp_path / "net.py"
    src.write_text("def make(in_shape, num_outputs):\n    pass\n")
    before = custom.code_hash(f"{src}:make")
    src.write_text("def make(in_shape, num_outputs):\n    return None\n")
    from ntkpipe.smk import code_hash

    code_hash.cache_clear()
    assert custom.code_hash(f"{src}:make") != before


# ---------------------------------------------------------------------------- models

def test_a_factory_gets_the_sweep_values_its_signature_names_and_the_kwargs_win():
    def factory(in_shape, num_outputs, *, width, parametrization="standard", blocks=1):
        pass

    offered = {"width": 8, "depth": 3, "activation": "relu", "parametrization": "ntk"}
    assert custom.factory_arguments(factory, {"blocks": 2}, offered) == {
        "width": 8, "parametrization": "ntk", "blocks": 2}
    assert custom.factory_arguments(factory, {"width": 5}, offered)["width"] == 5


def test_a_custom_model_is_built_from_its_seed_without_touching_the_global_generator():
    spec = {"factory": RESNET, "kwargs": {"blocks": 1}}
    state = torch.random.get_rng_state()
    a = custom.build_model(spec, (1, 8, 8), 3, seed=5, width=4)
    b = custom.build_model(spec, (1, 8, 8), 3, seed=5, width=4)
    c = custom.build_model(spec, (1, 8, 8), 3, seed=6, width=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_make_model_dispatches_to_the_factory_with_the_regimes_parametrisation():
    seen = {}

    def factory(in_shape, num_outputs, *, width, parametrization):
        seen.update(in_shape=in_shape, width=width, parametrization=parametrization)
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(in_shape)), num_outputs))

    import sys
    import types

    module = types.ModuleType("ntkpipe_test_factories")
    module.factory = factory
    sys.modules["ntkpipe_test_factories"] = module
    data = {"x_train": np.zeros((4, 2, 3), np.float32), "num_classes": 5}
    run = {"width": 7, "depth": 1, "activation": "relu", "regime": "lazy", "seed": 0,
           "arch": "mine"}
    model_cfg = {"bias": True, "bias_std": 0.1,
                 "custom": {"factory": "ntkpipe_test_factories:factory", "kwargs": {}}}
    model = make_model(data, run, model_cfg)
    assert model(torch.zeros(2, 2, 3)).shape == (2, 5)
    assert seen == {"in_shape": (2, 3), "width": 7, "parametrization": "ntk"}


class _WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 7)

    def forward(self, x):
        return self.linear(x.flatten(1))


def wrong_shape(in_shape, num_outputs):
    """A factory whose network ignores num_outputs (the workflow test's bad model)."""
    return _WrongShape()


class _RawParameter(nn.Module):
    """A module with a parameter the engine has no factorised rule for."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return torch.tanh(x * self.scale)


@pytest.mark.parametrize("model, says", [
    (_WrongShape(), r"maps a batch of shape \(2, 1, 8, 8\) to \(2, 7\); it must give \(N, O\) = \(2, 10\)"),
    (nn.Sequential(nn.Flatten(), nn.Linear(63, 10)), "fails on a batch of shape"),
    (nn.Sequential(nn.Flatten()), "has no trainable parameters"),
])
def test_a_model_breaking_the_contract_is_one_clear_line(model, says):
    with pytest.raises(custom.CustomCodeError, match=says):
        custom.check_model(model, (1, 8, 8), 10, "mine")


def test_the_resnet_example_kernel_matches_the_reference_with_batchnorm_in_eval_mode():
    model = custom.build_model({"factory": RESNET, "kwargs": {"blocks": 1}}, (1, 8, 8), 4,
                               seed=0, width=3)
    model.train()
    with torch.no_grad():  # running statistics away from their initial (0, 1)
        for _ in range(3):
            model(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    model.eval().double()
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for mode in ("full", "trace"):
        ours, ref = empirical_ntk(model, x, mode=mode), reference_ntk(model, x, mode=mode)
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10 * ref.abs().max())
    plan = {layer["layer"]: layer for layer in kernel_plan(model, x)}
    assert plan["1"]["rule"] == "affine" and plan["0"]["rule"] == "conv"
    assert plan["3.conv1"]["cotangent"] == "autograd"  # inside the residual block
    assert plan["7"] == {"layer": "7", "module": "Linear", "rule": "linear",
                         "form": plan["7"]["form"], "cotangent": "chain"}


def test_batchnorm_in_training_mode_is_refused_for_the_kernel():
    model = custom.build_model({"factory": RESNET, "kwargs": {}}, (1, 8, 8), 4, seed=0, width=2)
    with pytest.raises(ValueError, match="batch statistics"):
        empirical_ntk(model.train(), torch.randn(3, 1, 8, 8))


def test_a_module_without_a_factorised_rule_takes_the_exact_fallback():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), _RawParameter(6), nn.Linear(6, 3)).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    plan = {layer["layer"]: layer["rule"] for layer in kernel_plan(model, x)}
    assert plan == {"0": "linear", "1": "fallback", "2": "linear"}
    ours, ref = empirical_ntk(model, x, mode="full"), reference_ntk(model, x, mode="full")
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- datasets

def test_a_custom_dataset_keeps_its_contract(tmp_path):
    path = write_npz(tmp_path / "d.npz", classes=4)
    spec = {"loader": NPZ, "options": {"path": str(path)}, "num_classes": None}
    arrays = custom.dataset_arrays(spec, "mine")
    assert arrays["num_classes"] == 4 and arrays["x_train"].dtype == torch.float32
    assert arrays["y_test"].dtype == torch.int64 and arrays["x_test"].shape == (30, 1, 8, 8)


@pytest.mark.parametrize("override, says", [
    ({"y_train": np.arange(59) % 4}, r"y must be \(N,\) = \(60,\)"),
    ({"y_train": -(np.arange(60) % 4)}, "is negative"),
    ({"y_train": np.arange(60) % 4 + 0.5}, "integer class labels"),
    ({"x_test": np.zeros((30, 1, 8, 7))}, "train samples are"),
    ({"x_train": np.full((60, 1, 8, 8), np.nan)}, "NaN or infinity"),
    ({"x_train": np.zeros(60)}, "per-sample shape"),
])
def test_a_loader_returning_bad_arrays_is_one_clear_line(tmp_path, override, says):
    path = write_npz(tmp_path / "d.npz", **override)
    spec = {"loader": NPZ, "options": {"path": str(path)}, "num_classes": None}
    with pytest.raises(custom.CustomCodeError, match=says):
        custom.dataset_arrays(spec, "mine")


def test_labels_beyond_the_declared_classes_are_refused(tmp_path):
    path = write_npz(tmp_path / "d.npz", classes=6)
    spec = {"loader": NPZ, "options": {"path": str(path)}, "num_classes": 5}
    with pytest.raises(custom.CustomCodeError, match="label 5 is out of range for num_classes 5"):
        custom.dataset_arrays(spec, "mine")


def test_prepare_data_normalises_a_flat_custom_dataset_per_feature(tmp_path):
    from ntkpipe.stages import load_data
    from ntkpipe.stages.data import prepare_data

    path = write_npz(tmp_path / "d.npz", shape=(5,))
    spec = {"loader": NPZ, "options": {"path": str(path)}, "num_classes": None, "normalise": True}
    prepare_data("mine", None, tmp_path / "mine.npz", provenance={}, custom=spec)
    data = load_data(tmp_path / "mine.npz")
    assert data["x_train"].shape == (60, 5) and data["num_classes"] == 4
    assert np.allclose(data["x_train"].mean(0), 0, atol=1e-6)
    assert np.allclose(data["x_train"].std(0, ddof=1), 1, atol=1e-5)


# ---------------------------------------------------------------------------- config and check

def test_the_config_takes_custom_names_and_import_paths(tmp_path):
    cfg = config(tmp_path, sweeps={"one": {"arch": ["resnet", "ntkpipe.models:make_cnn_relu"],
                                           "width": [4]}})
    assert [p["arch"] for p in all_points(cfg)] == ["resnet", "ntkpipe.models:make_cnn_relu"]


@pytest.mark.parametrize("extra, says", [
    ({"model": {"arch": "resnett"}}, "'model.arch' is 'resnett', which is neither built-in"),
    ({"dataset": {"name": "mydata"}}, "'dataset.name' is 'mydata', which is neither built-in"),
    ({"sweeps": {"s": {"arch": ["mlp", "resnet2"]}}}, "'sweeps.s.arch' is 'resnet2'"),
    ({"models": {"mlp": {"factory": RESNET}}}, "'models.mlp' shadows the built-in"),
    ({"models": {"resnet": {"kwargs": {}}}}, "factory"),
])
def test_a_config_naming_unknown_custom_code_is_refused(tmp_path, extra, says):
    with pytest.raises(ConfigError, match=says):
        config(tmp_path, **extra)


def test_check_builds_each_model_once_and_remembers_a_pass(tmp_path, monkeypatch):
    cfg = config(tmp_path, sweeps={"one": {"width": [2, 3], "regime": ["feature"]}})
    cache = tmp_path / "checks"
    lines = custom.check(cfg, all_points(cfg), cache)
    assert len(lines) == 2 and all("resnet on digits (1, 8, 8) -> 10 outputs" in ln
                                   for ln in lines)
    assert len(list(cache.glob("*.json"))) == 2
    monkeypatch.setattr(custom, "build_model", lambda *a, **k: pytest.fail("rebuilt"))
    assert custom.check(cfg, all_points(cfg), cache) == lines


def test_check_refuses_a_swept_key_the_factory_ignores(tmp_path):
    cfg = config(tmp_path, sweeps={"one": {"depth": [1, 2], "regime": ["feature"]}})
    with pytest.raises(custom.CustomCodeError, match="takes no 'depth' argument"):
        custom.check(cfg, all_points(cfg))


def test_check_writes_nothing_for_a_failing_model(tmp_path):
    cfg = config(tmp_path, models={"resnet": {"factory": RESNET, "kwargs": {"stages": 0}}},
                 dataset={"name": "digits", "classes_per_task": 5})
    cfg["models"]["resnet"]["factory"] = "ntkpipe.models:make_mlp"  # wrong signature
    with pytest.raises(custom.CustomCodeError, match="factory 'ntkpipe.models:make_mlp' failed"):
        custom.check(cfg, all_points(cfg), tmp_path / "checks")
    assert not (tmp_path / "checks").exists()


def test_check_of_a_custom_dataset_counts_its_classes(tmp_path):
    path = write_npz(tmp_path / "d.npz", classes=6)
    datasets = {"mine": {"loader": NPZ, "options": {"path": str(path)}, "files": [str(path)]}}
    cfg = config(tmp_path, datasets=datasets,
                 dataset={"name": "mine", "classes_per_task": 3})
    lines = custom.check(cfg, all_points(cfg), tmp_path / "checks")
    assert lines[0] == ("dataset mine: 60 training and 30 test samples of shape (1, 8, 8), "
                        "6 classes")
    too_many = config(tmp_path, datasets=datasets,
                      dataset={"name": "mine", "classes_per_task": 4})
    with pytest.raises(custom.CustomCodeError, match="need 8 classes, but dataset mine has 6"):
        custom.check(too_many, all_points(too_many), tmp_path / "checks")


def test_check_of_builtins_imports_nothing(tmp_path):
    cfg = validate({"results": str(tmp_path / "out"), "sweeps": {"one": {"width": [4]}}})
    assert custom.check(cfg, all_points(cfg), tmp_path / "checks") == []
    assert not (tmp_path / "checks").exists()


def test_arch_vit_takes_its_shape_from_the_config(tmp_path):
    cfg = validate({"results": str(tmp_path / "out"), "model": {"arch": "vit", "vit": {
        "patch_size": 2, "heads": 2, "mlp_ratio": 2.0}}, "sweeps": {"v": {"width": [8]}}})
    data = {"x_train": np.zeros((4, 1, 8, 8), np.float32), "num_classes": 10}
    point = all_points(cfg)[0]
    model = make_model(data, point, {"bias": True, "bias_std": 0.1, "vit": cfg["model"]["vit"]})
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert model.block0.attention.heads == 2  # 16 tokens of 2×2 patches
    with pytest.raises(ValueError, match="patch_size 3 must divide the image size 8×8"):
        make_model(data, point, {"bias": True, "bias_std": 0.1,
                                 "vit": {**cfg["model"]["vit"], "patch_size": 3}})
