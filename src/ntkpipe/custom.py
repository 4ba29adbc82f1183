"""Your own networks and datasets, by import path: resolving them, building them, checking them.

A config names them under `models:` and `datasets:` (or gives a module path directly as the
`arch` / `dataset.name` value):

    models:
      resnet8: {factory: examples/resnet/resnet.py:make_resnet, kwargs: {blocks: 1}}
    datasets:
      mydata: {loader: mypkg.data:load, options: {path: data/my.npz}, files: [data/my.npz]}

The contracts (the README's "Your own model and data" section says the same):

- factory(in_shape, num_outputs, **kwargs) -> torch.nn.Module mapping (N, *in_shape) to
  (N, num_outputs). It also receives each of `width`, `depth`, `activation`,
  `parametrization` ("ntk" for the regimes lazy and ntk, "standard" for feature), `bias` and
  `bias_std` that its signature names, so those sweep keys reach it; torch's generator is
  seeded with the run's seed around the call.
- loader(train: bool, **options) -> (x, y): x (N, ...) real-valued, y (N,) integer class
  labels in [0, num_classes); arrays or tensors; train and test samples of the same shape.

`check` runs both on the config's values before any job (the import resolves, the arrays keep
the contract, the model maps (2, *in_shape) to (2, O) with finite outputs) and remembers a
passing check under `<results>/.checks/` until the code, the settings or the files change.
Import-light at module level: the Snakefile calls it at parse time.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from ntkpipe.errors import InputError

BUILTIN_ARCHS = ("mlp", "cnn", "cnn-relu", "vit")
BUILTIN_DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagefolder")
# Sweep keys a factory receives when its signature names them.
FACTORY_KEYS = ("width", "depth", "activation", "parametrization", "bias", "bias_std")
_MODULE_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_FILE_TARGET = re.compile(r"[^:]+\.py:[A-Za-z_]\w*")


class CustomCodeError(InputError, ValueError):
    """A model factory or dataset loader named in the config fails its contract."""


class UnknownName(CustomCodeError):
    """An arch or dataset that is neither built-in, nor defined, nor an import path."""

    def __init__(self, message: str, builtin: tuple[str, ...]) -> None:
        super().__init__(message)
        self.builtin = builtin


# ------------------------------------------------------------------------------ resolving

def is_import_path(text: str) -> bool:
    """Whether `text` is `package.module:function` (usable directly as an arch or dataset)."""
    return bool(_MODULE_TARGET.fullmatch(text))


def import_file(path: Path, name: str) -> Any:
    """The module a .py file defines, imported once under `name` (registered in sys.modules,
    where pickling and dataclasses look it up; left out again when it fails to import)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve(target: str, what: str = "factory") -> Callable[..., Any]:
    """The function `package.module:function` or `path/to/file.py:function` names."""
    if _FILE_TARGET.fullmatch(target):
        file, name = target.rsplit(":", 1)
        path = Path(file).resolve()
        if not path.is_file():
            raise CustomCodeError(f"{what} {target!r}: file {file} does not exist (paths are "
                                  "relative to the working directory)")
        module_name = f"ntkpipe_user_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
        try:
            module = import_file(path, module_name)
        except Exception as err:
            raise CustomCodeError(f"{what} {target!r}: {file} fails to import: "
                                  f"{type(err).__name__}: {err}") from None
    elif _MODULE_TARGET.fullmatch(target):
        module_path, name = target.split(":")
        try:
            module = importlib.import_module(module_path)
        except ImportError as err:
            raise CustomCodeError(f"{what} {target!r} does not import ({err}); is its package "
                                  "on PYTHONPATH (or give path/to/file.py:function)?") from None
        except Exception as err:
            raise CustomCodeError(f"{what} {target!r}: module {module_path} fails to import: "
                                  f"{type(err).__name__}: {err}") from None
    else:
        raise CustomCodeError(f"{what} {target!r} is not an import path: write "
                              "package.module:function or path/to/file.py:function")
    function = getattr(module, name, None)
    if not callable(function):
        raise CustomCodeError(f"{what} {target!r}: {module.__name__} has no function {name!r}")
    return function


def source(target: str) -> str:
    """What `ntkpipe.smk.code_hash` hashes for `target`: its .py file or its module."""
    head = target.rsplit(":", 1)[0]
    return str(Path(head).resolve()) if head.endswith(".py") else head


def code_hash(target: str, what: str = "factory") -> str:
    """SHA-256 (16 hex digits) of the target's source and what it imports from its package;
    CustomCodeError, worded as `resolve` words it, when the source is not there."""
    from ntkpipe.smk import code_hash as hash_modules

    head = target.rsplit(":", 1)[0]
    if head.endswith(".py") and not Path(head).is_file():
        raise CustomCodeError(f"{what} {target!r}: file {head} does not exist (paths are "
                              "relative to the working directory)")
    try:
        return hash_modules(source(target))
    except ImportError:
        raise CustomCodeError(f"{what} {target!r} does not import (no module {head}); is its "
                              "package on PYTHONPATH (or give path/to/file.py:function)?") from None
    except OSError as err:
        raise CustomCodeError(f"{what} {target!r}: its source cannot be read ({err})") from None


# ------------------------------------------------------------------------------ config lookup

def model_spec(config: dict[str, Any], arch: str) -> dict[str, Any] | None:
    """{factory, kwargs} of a custom arch (None: a built-in one)."""
    if arch in BUILTIN_ARCHS:
        return None
    entry = config.get("models", {}).get(arch)
    if entry is not None:
        return {"factory": entry["factory"], "kwargs": dict(entry.get("kwargs", {}))}
    if is_import_path(arch):
        return {"factory": arch, "kwargs": {}}
    raise UnknownName(f"arch {arch!r} is neither built-in ({', '.join(BUILTIN_ARCHS)}), a "
                          "name under 'models' nor package.module:function", BUILTIN_ARCHS)


def dataset_spec(config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """{loader, options, files, num_classes, normalise} of a custom dataset (None: built-in)."""
    if name in BUILTIN_DATASETS:
        return None
    entry = config.get("datasets", {}).get(name)
    if entry is None and is_import_path(name):
        entry = {"loader": name}
    if entry is None:
        raise UnknownName(f"dataset {name!r} is neither built-in "
                              f"({', '.join(BUILTIN_DATASETS)}), a name under 'datasets' nor "
                              "package.module:function", BUILTIN_DATASETS)
    return {"loader": entry["loader"], "options": dict(entry.get("options", {})),
            "files": list(entry.get("files", [])), "num_classes": entry.get("num_classes"),
            "normalise": entry.get("normalise", True)}


# ------------------------------------------------------------------------------ building

def parametrization(regime: str) -> str:
    """The parametrisation a regime asks of a network (ntkpipe.models' convention)."""
    return "standard" if regime == "feature" else "ntk"


def factory_arguments(factory: Callable[..., Any], kwargs: dict[str, Any],
                      offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments a factory gets: the config's kwargs, plus each offered sweep value
    its signature names (kwargs win: the config said so)."""
    try:
        names = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        names = {}
    return {**{k: v for k, v in offered.items() if k in names}, **kwargs}


def build_model(spec: dict[str, Any], in_shape: tuple[int, ...], num_outputs: int, *,
                seed: int, **offered: Any) -> "Any":
    """A custom network, built with torch's generator seeded from `seed` (restored after)."""
    import torch

    factory = resolve(spec["factory"])
    args = factory_arguments(factory, spec["kwargs"], offered)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            model = factory(tuple(in_shape), num_outputs, **args)
        except Exception as err:
            raise CustomCodeError(f"factory {spec['factory']!r} failed with {sorted(args)}: "
                                  f"{type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise CustomCodeError(f"factory {spec['factory']!r} returned a "
                              f"{type(model).__name__}, not a torch.nn.Module")
    return model


def check_model(model: Any, in_shape: tuple[int, ...], num_outputs: int, target: str) -> None:
    """The model maps (2, *in_shape) to finite (2, O) outputs, in eval and train mode, and has
    trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CustomCodeError(f"model {target!r} has no trainable parameters")
    dtype = params[0].dtype
    x = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    for mode in ("eval", "train"):
        model.train(mode == "train")
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as err:
            raise CustomCodeError(f"model {target!r} fails on a batch of shape "
                                  f"{tuple(x.shape)} ({mode} mode): {type(err).__name__}: "
                                  f"{err}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_outputs):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CustomCodeError(f"model {target!r} maps a batch of shape {tuple(x.shape)} to "
                                  f"{got}; it must give (N, O) = (2, {num_outputs})")
        if not torch.isfinite(out).all():
            raise CustomCodeError(f"model {target!r} gives non-finite outputs at "
                                  "initialisation")
    model.eval()


def load_arrays(spec: dict[str, Any], train: bool, target: str) -> tuple[Any, Any]:
    """One split of a custom dataset as (x float32 tensor, y int64 tensor), its contract
    checked."""
    import numpy as np
    import torch

    loader = resolve(spec["loader"], "loader")
    split = "train" if train else "test"
    try:
        result = loader(train, **spec["options"])
    except InputError:
        raise
    except Exception as err:
        raise CustomCodeError(f"loader {target!r} ({split}) failed: {type(err).__name__}: "
                              f"{err}") from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CustomCodeError(f"loader {target!r} ({split}) must return (x, y), got "
                              f"{type(result).__name__}")
    x, y = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
            for t in result)
    if x.ndim < 2 or len(x) == 0:
        raise CustomCodeError(f"loader {target!r} ({split}): x must be (N, ...) with N ≥ 1 and "
                              f"a per-sample shape, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise CustomCodeError(f"loader {target!r} ({split}): x must be real-valued, got "
                              f"{x.dtype}")
    if y.shape != (len(x),):
        raise CustomCodeError(f"loader {target!r} ({split}): y must be (N,) = ({len(x)},) "
                              f"labels for x of shape {x.shape}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise CustomCodeError(f"loader {target!r} ({split}): y must hold integer class "
                                  f"labels, got {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise CustomCodeError(f"loader {target!r} ({split}): label {int(y.min())} is negative; "
                              "labels are 0..num_classes-1")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise CustomCodeError(f"loader {target!r} ({split}): x holds NaN or infinity")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)


def dataset_arrays(spec: dict[str, Any], target: str) -> dict[str, Any]:
    """Both splits of a custom dataset, checked against each other: (x_train, y_train,
    x_test, y_test, num_classes)."""
    x_train, y_train = load_arrays(spec, True, target)
    x_test, y_test = load_arrays(spec, False, target)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise CustomCodeError(f"loader {target!r}: train samples are {tuple(x_train.shape[1:])} "
                              f"but test samples {tuple(x_test.shape[1:])}")
    top = int(max(y_train.max(), y_test.max())) + 1
    declared = spec.get("num_classes")
    if declared is not None and top > declared:
        raise CustomCodeError(f"loader {target!r}: label {top - 1} is out of range for "
                              f"num_classes {declared} (labels are 0..{declared - 1})")
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
            "num_classes": declared if declared is not None else top}


# ------------------------------------------------------------------------------ checking

def _files_state(files: list[str]) -> list[list[Any]]:
    """(path, size, mtime) of each file a dataset declares (a changed file: a new check)."""
    out = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise CustomCodeError(f"dataset file {name} does not exist (listed under "
                                  "datasets.<name>.files; paths are relative to the working "
                                  "directory)")
        stat = path.stat()
        out.append([name, stat.st_size, stat.st_mtime_ns])
    return out


def _cached(cache: str | Path | None, key: dict[str, Any], compute: Callable[[], dict[str, Any]],
            passed: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """`compute()`, remembered under `cache` by a digest of `key`; a fresh result is queued in
    `passed`, written by `check` only once everything passed (a failing check writes
    nothing)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(cache) / f"{digest[:20]}.json" if cache is not None else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: check again
    result = compute()
    if path is not None:
        passed.append((path, result))
    return result


def _remember(passed: list[tuple[Path, dict[str, Any]]]) -> None:
    from ntkpipe.store import write_json

    for path, result in passed:
        write_json(result, path)


def builtin_shape(name: str, config: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """(input shape, classes) of a built-in dataset without reading it."""
    from ntkpipe.data import dataset_info

    options = {"image_size": config["dataset"]["image_size"]} if name == "imagefolder" else {}
    info = dataset_info(name, **options)
    return tuple(info["input_shape"]), info["num_classes"]


def dataset_summary(config: dict[str, Any], name: str, cache: str | Path | None = None,
                    passed: list | None = None) -> dict[str, Any]:
    """{input_shape, num_classes, train, test} of a custom dataset, its loader run once per
    change of its code, options or files."""
    spec = dataset_spec(config, name)
    key = {"kind": "dataset", "spec": spec, "code": code_hash(spec["loader"], "loader"),
           "files": _files_state(spec["files"])}

    def compute() -> dict[str, Any]:
        arrays = dataset_arrays(spec, name)
        return {"input_shape": list(arrays["x_train"].shape[1:]),
                "num_classes": arrays["num_classes"], "train": len(arrays["y_train"]),
                "test": len(arrays["y_test"]),
                "train_per_class": [int((arrays["y_train"] == c).sum())
                                    for c in range(arrays["num_classes"])]}

    fresh = [] if passed is None else passed
    result = _cached(cache, key, compute, fresh)
    if passed is None:
        _remember(fresh)
    return result


def check(config: dict[str, Any], points: list[dict[str, Any]],
          cache: str | Path | None = None
          ) -> list[str]:
    """Check every custom model and dataset the points use (CustomCodeError on the first that
    fails); one line per checked combination, for the log. Nothing is imported when the points
    use built-ins only."""
    lines: list[str] = []
    if not any(model_spec(config, p["arch"]) or dataset_spec(config, p["dataset"])
               for p in points):
        return lines
    passed: list[tuple[Path, dict[str, Any]]] = []
    datasets: dict[str, tuple[tuple[int, ...], int]] = {}
    for point in points:
        name = point["dataset"]
        if name not in datasets and dataset_spec(config, name) is not None:
            info = dataset_summary(config, name, cache, passed)
            datasets[name] = (tuple(info["input_shape"]), info["num_classes"])
            _check_classes(point, info, name)
            lines.append(f"dataset {name}: {info['train']} training and {info['test']} test "
                         f"samples of shape {tuple(info['input_shape'])}, "
                         f"{info['num_classes']} classes")
        elif name in datasets:
            _check_classes(point, {"num_classes": datasets[name][1]}, name)
    seen = set()
    for point in points:
        spec = model_spec(config, point["arch"])
        if spec is None:
            continue
        name = point["dataset"]
        offered = offered_values(config, point)
        # the key holds only what the config says (nothing imported): a remembered pass costs
        # no import of the factory, torch or the dataset on the next parse (every SLURM job)
        key = {"kind": "model", "spec": spec, "code": code_hash(spec["factory"]),
               "dataset": datasets.get(name) or [name, config["dataset"]["image_size"]],
               "offered": offered, "seed": point["seed"],
               "sweeps": _swept(config, point["arch"])}
        combo = json.dumps(key, sort_keys=True, default=str)
        if combo in seen:
            continue
        seen.add(combo)

        def compute(spec=spec, name=name, offered=offered, seed=point["seed"],
                    arch=point["arch"]) -> dict[str, Any]:
            check_sweep_keys(config)
            in_shape, classes = datasets.get(name) or builtin_shape(name, config)
            args = factory_arguments(resolve(spec["factory"]), spec["kwargs"], offered)
            model = build_model(spec, in_shape, classes, seed=seed, **offered)
            check_model(model, in_shape, classes, arch)
            return {"parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                    "in_shape": list(in_shape), "classes": classes, "arguments": sorted(args)}

        info = _cached(cache, key, compute, passed)
        lines.append(f"model {point['arch']} on {name} {tuple(info['in_shape'])} -> "
                     f"{info['classes']} outputs: {info['parameters']} parameters "
                     f"(arguments {info['arguments']})")
    _remember(passed)
    return lines


def _swept(config: dict[str, Any], arch: str) -> list[Any]:
    """The width, depth and activation lists of the sweeps that run `arch` (what
    `check_sweep_keys` judges for it)."""
    keys = ("width", "depth", "activation")
    return [[sweep.get(k) for k in keys] for sweep in config["sweeps"].values()
            if arch in sweep.get("arch", [config["model"]["arch"]])]


def check_sweep_keys(config: dict[str, Any]) -> None:
    """A sweep that varies width, depth or activation of a custom arch whose factory does not
    take that argument would train the same network several times: refuse it."""
    for name, sweep in config["sweeps"].items():
        archs = sweep.get("arch", [config["model"]["arch"]])
        for arch in archs:
            spec = model_spec(config, arch)
            if spec is None:
                continue
            factory = resolve(spec["factory"])
            for key in ("width", "depth", "activation"):
                values = sweep.get(key, [])
                taken = factory_arguments(factory, {}, {key: None})
                if len(values) > 1 and (key not in taken or key in spec["kwargs"]):
                    why = (f"models.{arch}.kwargs fixes {key}" if key in spec["kwargs"] else
                           f"its factory {spec['factory']} takes no {key!r} argument")
                    raise CustomCodeError(f"'sweeps.{name}.{key}' lists {values} for arch "
                                          f"{arch!r}, but {why}: every value would train the "
                                          "same network")


def offered_values(config: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """The sweep values a factory may take, for one point."""
    return {"width": point["width"], "depth": point["depth"],
            "activation": point["activation"], "parametrization": parametrization(point["regime"]),
            "bias": config["model"]["bias"], "bias_std": config["model"]["bias_std"]}


def _check_classes(point: dict[str, Any], info: dict[str, Any], name: str) -> None:
    c, k, n = point["classes_per_task"], point["shared_classes"], point["n_tasks"]
    needed = c + (c - k) * (n - 1)
    if needed > info["num_classes"]:
        raise CustomCodeError(f"{n} tasks of {c} classes sharing {k} need {needed} classes, but "
                              f"dataset {name} has {info['num_classes']}; lower n_tasks or "
                              "classes_per_task")
