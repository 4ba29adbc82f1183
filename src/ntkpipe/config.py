"""The configuration: its schema (with defaults), validation, and errors that name the key.

Import-light (no torch): the Snakefile validates the config with it at parse time.
"""

from __future__ import annotations

import copy
import json
import math
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from ntkpipe.errors import InputError

# Classes of each dataset with a fixed number (imagefolder's come from its class list).
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}
# Image side of the built-in datasets (imagefolder: dataset.image_size).
IMAGE_SIDE = {"digits": 8, "mnist": 28, "cifar10": 32, "cifar100": 32}
# Training samples per class of the fixed-size datasets (digits: ntkpipe's 2/3 training split).
TRAIN_PER_CLASS = {
    "digits": (119, 122, 118, 122, 121, 122, 121, 120, 116, 120),
    "mnist": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "cifar10": (5000,) * 10,
    "cifar100": (500,) * 100,
}


class ConfigError(InputError, ValueError):
    """The config is invalid; the message names the key and what is allowed."""


def schema() -> dict[str, Any]:
    """The JSON schema of the config, defaults included."""
    text = resources.files("ntkpipe").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _fill_defaults(node: dict[str, Any], node_schema: dict[str, Any], root: dict) -> None:
    """Insert schema defaults for missing keys, recursively through objects."""
    if "$ref" in node_schema:
        node_schema = root["definitions"][node_schema["$ref"].rsplit("/", 1)[-1]]
    for name, sub in node_schema.get("properties", {}).items():
        if name not in node and "default" in sub:
            node[name] = copy.deepcopy(sub["default"])
        if isinstance(node.get(name), dict):
            _fill_defaults(node[name], sub, root)


def _message(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        where = f"under '{key}'" if error.absolute_path else "at the top level"
        return (f"unknown key {', '.join(repr(u) for u in unknown)} {where}; "
                f"allowed: {', '.join(allowed)}")
    if error.validator == "enum":
        return f"'{key}' is {error.instance!r}; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator in ("oneOf", "anyOf"):
        return f"'{key}' is {error.instance!r}; allowed: {error.schema.get('description', 'see config.schema.yaml')}"
    return f"'{key}': {error.message}"


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """A validated copy of `config` with every default filled in; raises ConfigError."""
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}")
    sch = schema()
    full = _coerce(copy.deepcopy(config), sch, sch)
    _check_finite(full)
    _fill_defaults(full, sch, sch)
    validator = jsonschema.Draft202012Validator(sch)
    errors = sorted(validator.iter_errors(full), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        while error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):
            error = error.parent  # report "x is not allowed here" rather than one branch
        raise ConfigError(_message(error))
    _check_semantics(full)
    return canonical(full, sch, sch)


def _object_schema(node_schema: dict[str, Any], root: dict) -> dict[str, Any]:
    """The branch of a (sub)schema that describes a mapping (through oneOf/anyOf)."""
    node_schema = _resolve(node_schema, root)
    if "properties" in node_schema or "additionalProperties" in node_schema:
        return node_schema
    for option in node_schema.get("oneOf", []) + node_schema.get("anyOf", []):
        found = _object_schema(option, root)
        if found:
            return found
    return {}


def _coerce(value: Any, node_schema: dict[str, Any], root: dict) -> Any:
    """`value` with every string that stands where the schema admits no string read as YAML:
    `snakemake --config 'probe={size: 20}'` hands over {'size': '20'}, which is meant as 20."""
    node_schema = _resolve(node_schema, root)
    if isinstance(value, str):
        types = _types(node_schema, root)
        if not types or "string" in types:
            return value
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # the schema names the key and what it expects
        if isinstance(parsed, str) or parsed is None and "null" not in types:
            return value
        value = parsed
    if isinstance(value, dict):
        branch = _object_schema(node_schema, root)
        props = branch.get("properties", {})
        extra = branch.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else {}
        return {k: _coerce(v, props.get(k, extra), root) for k, v in value.items()}
    if isinstance(value, list):
        items = {}
        for option in [node_schema] + node_schema.get("oneOf", []) + node_schema.get("anyOf", []):
            items = items or _resolve(option, root).get("items", {})
        return [_coerce(v, items, root) for v in value]
    return value


def _check_finite(node: Any, path: tuple = ()) -> None:
    """No NaN or infinity anywhere: the schema's bounds do not catch them (NaN compares false
    with every bound), and a run would diverge on them."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, path + (i,))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"'{_key(path)}' is {node}; it must be a finite number")


def _resolve(node_schema: dict[str, Any], root: dict) -> dict[str, Any]:
    if "$ref" in node_schema:
        return root["definitions"][node_schema["$ref"].rsplit("/", 1)[-1]]
    return node_schema


def _types(node_schema: dict[str, Any], root: dict) -> set[str]:
    """The JSON types a (sub)schema admits, through $ref and oneOf/anyOf."""
    node_schema = _resolve(node_schema, root)
    kinds = node_schema.get("type", [])
    found = set([kinds] if isinstance(kinds, str) else kinds)
    for option in node_schema.get("oneOf", []) + node_schema.get("anyOf", []):
        found |= _types(option, root)
    return found


def canonical(value: Any, node_schema: dict[str, Any] | None = None,
              root: dict | None = None) -> Any:
    """`value` with every mapping's keys sorted (recursively) and every integer the schema
    types as a number made a float: the same config however it was written (key order,
    `10` or `10.0`) reaches the rules' `params:` as the same value, so it reruns nothing."""
    node_schema = _resolve(node_schema or {}, root or {}) if root else (node_schema or {})
    if isinstance(value, dict):
        props = node_schema.get("properties", {})
        extra = node_schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else {}
        return {k: canonical(value[k], props.get(k, extra), root) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v, _resolve(node_schema, root).get("items", {}) if root else {},
                          root) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and root:
        types = _types(node_schema, root)
        if "number" in types and "integer" not in types:
            return float(value)
    if isinstance(value, float) and value.is_integer() and root:
        types = _types(node_schema, root)  # 16.0 where an integer is meant: 16, before any
        if "integer" in types and "number" not in types:  # path or shape is built from it
            return int(value)
    return value


def _check_thresholds(config: dict[str, Any]) -> None:
    """Fill each study's threshold defaults into `scorecard`; refuse unknown or non-finite
    ones."""
    import math

    from ntkpipe.studies import StudyError, load_all, thresholds

    try:
        declared = thresholds(load_all(config["studies"]))
    except StudyError as err:
        raise ConfigError(f"'studies': {err}") from None
    given = config["scorecard"]
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ConfigError(f"unknown key {', '.join(map(repr, unknown))} under 'scorecard'; the "
                          f"studies' thresholds are: {', '.join(sorted(declared))}")
    for name, value in given.items():
        if not math.isfinite(value):
            raise ConfigError(f"'scorecard.{name}' is {value}; a threshold must be finite")
    for name, threshold in declared.items():
        given.setdefault(name, threshold.default)


def _check_semantics(config: dict[str, Any]) -> None:
    _check_thresholds(config)
    results = PurePosixPath(config["results"])
    if ".." in results.parts or not results.parts:
        raise ConfigError(f"'results' is {config['results']!r}: it must name a directory "
                          "without '..' components")
    if Path(config["results"]).exists() and not Path(config["results"]).is_dir():
        raise ConfigError(f"'results' is {config['results']!r}, which is an existing file, not "
                          "a directory; name another path or move the file")
    kernel, stored = config["metrics"]["kernel"], config["ntk"]["kernels"]
    if kernel != "trace" and kernel not in stored:  # the traced kernel is always stored
        raise ConfigError(f"'metrics.kernel' is {kernel!r} but 'ntk.kernels' ({', '.join(stored)}) "
                          f"does not store it; add {kernel!r} to ntk.kernels")
    fit_range = config["analysis"]["train_kernel"]["fit_range"]
    if fit_range and fit_range[0] >= fit_range[1]:
        raise ConfigError(f"'analysis.train_kernel.fit_range' is {fit_range}: it must be "
                          "[k_min, k_max] with k_min < k_max")
    _check_custom_names(config)
    sweeps = config["sweeps"]
    if not sweeps:
        raise ConfigError("'sweeps' is empty: define at least one sweep")
    for name in config["experiments"] or []:
        if name not in sweeps:
            raise ConfigError(f"'experiments' names {name!r}, which is not a sweep; "
                              f"defined sweeps: {', '.join(sorted(sweeps))}")
    for name in sweeps:
        _check_sweep(name, config)


def _check_custom_names(config: dict[str, Any]) -> None:
    """Entries under `models` / `datasets` may not shadow a built-in name."""
    from ntkpipe.custom import BUILTIN_ARCHS, BUILTIN_DATASETS

    for section, builtin in (("models", BUILTIN_ARCHS), ("datasets", BUILTIN_DATASETS)):
        for name in config[section]:
            if name in builtin:
                raise ConfigError(f"'{section}.{name}' shadows the built-in {name!r}; give "
                                  "your entry another name")


def _check_sweep(name: str, config: dict[str, Any]) -> None:
    from ntkpipe.custom import UnknownName, dataset_spec, model_spec
    from ntkpipe.sweep import sweep_points  # local: sweep imports this module

    for point in sweep_points(config, name):
        key = f"sweeps.{name}"
        for sweep_key, lookup, default in (("arch", model_spec, "model.arch"),
                                           ("dataset", dataset_spec, "dataset.name")):
            try:
                lookup(config, point[sweep_key])
            except UnknownName as err:
                where = f"{key}.{sweep_key}" if sweep_key in config["sweeps"][name] else default
                raise ConfigError(f"'{where}' is {point[sweep_key]!r}, which is neither "
                                  f"built-in ({', '.join(err.builtin)}), a name under "
                                  f"'{'models' if sweep_key == 'arch' else 'datasets'}' nor "
                                  "package.module:function") from None
        c, k, n = point["classes_per_task"], point["shared_classes"], point["n_tasks"]
        if k > c:
            raise ConfigError(f"'{key}.shared_classes' is {k}, larger than the task "
                              f"({c} classes per task); allowed: 0..{c}")
        total = NUM_CLASSES.get(point["dataset"])
        needed = c + (c - k) * (n - 1)
        if total is not None and needed > total:
            raise ConfigError(
                f"'{key}': {n} tasks of {c} classes sharing {k} need {needed} classes, but "
                f"{point['dataset']} has {total}; lower n_tasks or classes_per_task, or raise "
                "shared_classes")
        limit = config["train"]["phase1"]["max_epochs"]
        if isinstance(limit, dict) and point["optimizer"] not in limit:
            raise ConfigError(f"'{key}.optimizer' is {point['optimizer']!r} but "
                              f"'train.phase1.max_epochs' has no entry for it; add "
                              f"{point['optimizer']}: <epochs>")
        if "sharpness" in config["sweeps"][name].get("analyses", []) and total is not None:
            _check_full_kernel(config, total)
        _check_subsets(config, name, point)
        _check_task_size(config, name, point)
        _check_strategy(config, name, point)
        if point["target"] == "teacher" and point["arch"] != "mlp":
            raise ConfigError(f"'{key}.target' is teacher, which needs a flat input: a linear "
                              f"teacher y^c = s^cᵀx is defined on the vector an mlp reads, but "
                              f"the sweep runs arch {point['arch']!r} on {point['dataset']} "
                              "images; use arch mlp or target labels")
        if point["target"] == "teacher" and point["loss"] != "mse":
            raise ConfigError(f"'{key}.target' is teacher, whose real-valued targets need "
                              f"loss mse, not {point['loss']!r}")
        side = IMAGE_SIDE.get(point["dataset"]) or (
            config["dataset"]["image_size"] if point["dataset"] == "imagefolder" else None)
        patch = config["model"]["vit"]["patch_size"]
        if point["arch"] == "vit" and side is not None and side % patch:
            raise ConfigError(f"'model.vit.patch_size' is {patch}, which does not divide the "
                              f"{side}×{side} images of {point['dataset']} (sweep {name!r}); "
                              f"use a divisor of {side}")
        if point["arch"] == "cnn-relu" and point["dataset"] == "digits":
            raise ConfigError(f"'{key}.arch': cnn-relu pools twice and needs images of at "
                              "least 16×16; digits are 8×8 (use mlp or cnn)")


def _check_strategy(config: dict[str, Any], name: str, point: dict[str, Any]) -> None:
    """A strategy acts from task 2 on, and a replay buffer must fit in the earlier tasks."""
    strategy = point["strategy"]
    if strategy == "finetune":
        return
    if point["n_tasks"] < 2:
        raise ConfigError(f"'sweeps.{name}.strategy' is {strategy}, which acts from task 2 on, "
                          "but the sweep has n_tasks 1; add n_tasks: [2] or more, or drop it")
    if strategy == "replay":
        buffer = config["continual"]["replay"]["buffer_size"]
        known = task1_train_size(config, point)
        drawn = config["dataset"]["train_per_task"]
        if config["dataset"]["with_replacement"] and drawn:
            known = (drawn, True)  # a task of repeats still has train_per_task samples
        if known is not None and buffer > known[0]:
            few = "has" if known[1] else "can have as few as"
            raise ConfigError(
                f"'continual.replay.buffer_size' is {buffer}, larger than the earlier tasks' "
                f"data: in sweep {name!r} task 1 {few} {known[0]} training samples, all a "
                f"buffer for task 2 can draw from; lower it to at most {known[0]}")


def task1_train_size(config: dict[str, Any], point: dict[str, Any]) -> tuple[int, bool] | None:
    """(training samples of a point's task 1, exact?) when the dataset's size is known: exact
    for the natural class order, the smallest possible task for a shuffled one."""
    counts = TRAIN_PER_CLASS.get(point["dataset"])
    if counts is None:
        return None
    c = point["classes_per_task"]
    natural = config["dataset"]["class_order"] == "natural"
    size = sum(counts[:c]) if natural else sum(sorted(counts)[:c])
    cap = config["dataset"]["train_per_task"]
    return (min(size, cap) if cap else size), natural


def _check_task_size(config: dict[str, Any], name: str, point: dict[str, Any]) -> None:
    """`train_per_task` must fit in every task of a known dataset (or allow repeats)."""
    counts = TRAIN_PER_CLASS.get(point["dataset"])
    wanted = config["dataset"]["train_per_task"]
    if counts is None or wanted is None or config["dataset"]["with_replacement"]:
        return
    c = point["classes_per_task"]
    smallest = sum(sorted(counts)[:c])  # the smallest task c classes can make
    if config["dataset"]["class_order"] == "natural" and point["n_tasks"] == 1:
        smallest = sum(counts[:c])
    if wanted > smallest:
        raise ConfigError(
            f"'dataset.train_per_task' is {wanted} but in sweep {name!r} a task of {c} classes "
            f"of {point['dataset']} can have as few as {smallest} training samples; lower it, "
            "or set dataset.with_replacement: true to draw repeats")


def _check_subsets(config: dict[str, Any], name: str, point: dict[str, Any]) -> None:
    """A training subset an analysis measures on must fit in task 1's training set."""
    known = task1_train_size(config, point)
    if known is None:
        return
    size, exact = known
    wanted = {"sharpness": ("subset",), "train_kernel": ("block_subset",)}
    for analysis in config["sweeps"][name].get("analyses", []):
        for setting in wanted.get(analysis, ()):
            subset = config["analysis"][analysis][setting]
            if subset > size:
                task = "task 1 has" if exact else "task 1 can have as few as"
                raise ConfigError(
                    f"'analysis.{analysis}.{setting}' is {subset}, larger than the task it is "
                    f"drawn from: in sweep {name!r} {task} {size} training samples "
                    f"({point['classes_per_task']} classes of {point['dataset']}); lower it to "
                    f"at most {size}")


def full_kernel_bytes(samples: int, outputs: int, itemsize: int = 8) -> int:
    """Bytes of a full (P·O × P·O) kernel on `samples` points with the work of its
    eigendecomposition (about three copies)."""
    return 3 * (samples * outputs) ** 2 * itemsize


def _check_full_kernel(config: dict[str, Any], outputs: int) -> None:
    """The sharpness analysis' full (P·O × P·O) training-subset kernel and its
    eigendecomposition must fit the NTK memory budget."""
    subset, budget = config["analysis"]["sharpness"]["subset"], config["ntk"]["max_memory_gb"]
    needed = full_kernel_bytes(subset, outputs) / 2**30
    if needed > budget:
        fits = int((budget * 2**30 / full_kernel_bytes(1, outputs)) ** 0.5)
        raise ConfigError(f"'analysis.sharpness.subset' {subset}: its full training-subset NTK "
                          f"({subset}·{outputs} outputs square, float64, with its "
                          f"eigendecomposition) needs {needed:.1f} GB, more than "
                          f"'ntk.max_memory_gb' {budget:g}; lower the subset to {fits} or "
                          "raise ntk.max_memory_gb")


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML config, apply `overrides` (top-level keys), validate and fill defaults."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}") from None
    config.update(overrides or {})
    return validate(config)


def to_json(value: Any) -> str:
    """Canonical JSON (sorted keys), the form configs take in provenance attributes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
