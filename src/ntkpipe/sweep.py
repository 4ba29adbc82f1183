"""Sweeps → runs, and the `key~value` path ids that name them.

A run's phase 1 is fixed by PHASE1_KEYS, its phase 2 (the shift) by SHIFT_KEYS. The ids are
paths of `key~value` segments in that order, so every file says what it is and any id can be
parsed back into its parameters. Import-light: used by the Snakefile at parse time.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Iterator

PHASE1_KEYS = ("dataset", "classes_per_task", "arch", "depth", "activation", "optimizer",
               "loss", "target", "batch_size", "epochs", "regime", "width", "lr", "seed")
SHIFT_KEYS = ("shift", "shared_classes", "alpha", "n_tasks", "strategy")
SWEEP_KEYS = PHASE1_KEYS + SHIFT_KEYS
TASK_KEYS = SHIFT_KEYS[:4]  # what the task sequence depends on (not the strategy)
SPLIT_KEYS = ("dataset", "classes_per_task", "seed")

# Sweep fields that are not run parameters.
_SWEEP_FIELDS = ("description", "analyses")

_FLOAT_KEYS = {"lr", "alpha"}
_INT_KEYS = {"classes_per_task", "depth", "width", "seed", "shared_classes", "n_tasks"}


def _defaults(config: dict[str, Any]) -> dict[str, Any]:
    """Values a sweep key takes when a sweep does not list it."""
    return {
        "dataset": config["dataset"]["name"],
        "classes_per_task": config["dataset"]["classes_per_task"],
        "arch": config["model"]["arch"], "depth": config["model"]["depth"],
        "activation": config["model"]["activation"],
        "optimizer": config["train"]["optimizer"], "loss": config["train"]["loss"],
        "target": config["train"]["target"], "epochs": config["train"]["phase1"]["epochs"],
        "batch_size": config["train"]["batch_size"], "regime": "lazy", "width": 256,
        "lr": config["train"]["lr"], "seed": 0, "shift": "conceptual", "shared_classes": 0,
        "alpha": 0.0, "n_tasks": 2, "strategy": "finetune",
    }


def format_value(key: str, value: Any) -> str:
    """The canonical text of a sweep value inside a path (shortest round-trip float)."""
    if key in _FLOAT_KEYS:
        return repr(float(value))
    return str(value)


def parse_value(key: str, text: str) -> Any:
    """Inverse of `format_value`."""
    if key in _FLOAT_KEYS:
        return float(text)
    if key in _INT_KEYS:
        return int(text)
    if key == "batch_size":
        return text if text == "full" else int(text)
    if key == "epochs":
        return text if text == "auto" else int(text)
    return text


def sweep_points(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Every distinct parameter set of one sweep (shift-irrelevant keys normalised)."""
    grid = {**{k: [v] for k, v in _defaults(config).items()},
            **{k: v for k, v in config["sweeps"][name].items() if k not in _SWEEP_FIELDS}}
    points: dict[tuple, dict[str, Any]] = {}
    for values in itertools.product(*(grid[k] for k in SWEEP_KEYS)):
        point = dict(zip(SWEEP_KEYS, values))
        # A conceptual shift keeps class proportions uniform (α = 0); a frequency shift keeps
        # every class (k = classes per task). So (k, α) says what task 2 is, for either kind.
        if point["shift"] == "conceptual":
            point["alpha"] = 0.0
        else:
            point["shared_classes"] = point["classes_per_task"]
        point["lr"], point["alpha"] = float(point["lr"]), float(point["alpha"])
        points[tuple(point.values())] = point
    return list(points.values())


def output_root(config: dict[str, Any]) -> str:
    """Where the summary, scorecard and figures of this invocation go: `results` for the full
    config, `results/selections/<sweep+sweep>` when `experiments` picks some sweeps, so that a
    selection never overwrites the full run's (the per-run files are shared: same run, same
    files)."""
    chosen = config.get("experiments")
    if not chosen:
        return config["results"]
    return f"{config['results']}/selections/{'+'.join(sorted(chosen))}"


def active_sweeps(config: dict[str, Any]) -> list[str]:
    """Names of the sweeps this invocation runs."""
    return list(config["experiments"] or config["sweeps"])


def all_points(config: dict[str, Any], sweeps: list[str] | None = None) -> list[dict[str, Any]]:
    """The union of the points of the given (default: active) sweeps, without duplicates."""
    seen: dict[tuple, dict[str, Any]] = {}
    for name in sweeps if sweeps is not None else active_sweeps(config):
        for point in sweep_points(config, name):
            seen.setdefault(tuple(point.values()), point)
    return list(seen.values())


def make_id(point: dict[str, Any], keys: tuple[str, ...]) -> str:
    """`key~value/key~value/...` for the given keys of a point."""
    return "/".join(f"{k}~{format_value(k, point[k])}" for k in keys)


def run_id(point: dict[str, Any]) -> str:
    """The id of a point's phase-1 run."""
    return make_id(point, PHASE1_KEYS)


def shift_id(point: dict[str, Any]) -> str:
    """The id of a point's phase 2, below its run."""
    return make_id(point, SHIFT_KEYS)


def short_id(point: dict[str, Any]) -> str:
    """Eight hex digits naming a run and its shift: stable (a hash of their ids), short enough
    to type (`ntkpipe show 3f2a9c01`)."""
    import hashlib

    return hashlib.sha1(f"{run_id(point)}/{shift_id(point)}".encode()).hexdigest()[:8]


def select(points: list[dict[str, Any]], selections: list[str]) -> list[dict[str, Any]]:
    """The points matching every `key=value` of `selections` (values as in a path id);
    ValueError naming the key when one is not a sweep key or not `key=value`."""
    wanted = {}
    for text in selections:
        key, sep, value = text.partition("=")
        if not sep or key not in SWEEP_KEYS:
            raise ValueError(f"{text!r} is not a selection: write key=value with key one of "
                             f"{', '.join(SWEEP_KEYS)}")
        wanted[key] = parse_value(key, value)
    return [p for p in points if all(p[k] == v for k, v in wanted.items())]


def tasks_id(shift: str) -> str:
    """The id of the task sequence a shift id trains on (its strategy left out: every
    strategy learns the same tasks)."""
    return make_id(parse_id(shift, SHIFT_KEYS), TASK_KEYS)


def split_id(point: dict[str, Any]) -> str:
    """The id of the task-1 split a point trains on."""
    return make_id(point, SPLIT_KEYS)


def parse_id(text: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The parameters an id names; ValueError when it does not follow `keys`."""
    parts = text.split("/")
    if len(parts) != len(keys):
        raise ValueError(f"{text!r} has {len(parts)} segments, expected {len(keys)}: {keys}")
    out = {}
    for part, key in zip(parts, keys):
        name, sep, value = part.partition("~")
        if name != key or not sep:
            raise ValueError(f"segment {part!r} of {text!r} should be '{key}~<value>'")
        out[key] = parse_value(key, value)
    return out


def id_regex(keys: tuple[str, ...]) -> str:
    """A wildcard constraint matching exactly the ids of `keys`."""
    return "/".join(f"{re.escape(k)}~[^/~]+" for k in keys)


def iter_runs(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(run id, shift id) of every run of the active sweeps."""
    for point in all_points(config):
        yield run_id(point), shift_id(point)


def run_analyses(config: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """{(run id, shift id): sorted analyses} of every run of the active sweeps: the union of
    the `analyses` of each sweep the run belongs to."""
    out: dict[tuple[str, str], set[str]] = {}
    for name in active_sweeps(config):
        wanted = config["sweeps"][name].get("analyses", [])
        for point in sweep_points(config, name):
            out.setdefault((run_id(point), shift_id(point)), set()).update(wanted)
    return {key: sorted(value) for key, value in out.items()}


def run_sweeps(config: dict[str, Any]) -> dict[str, str]:
    """'run id/shift id' → the comma-separated names of the active sweeps holding that run (a
    run may be in several)."""
    out: dict[str, set[str]] = {}
    for name in active_sweeps(config):
        for point in sweep_points(config, name):
            out.setdefault(f"{run_id(point)}/{shift_id(point)}", set()).add(name)
    return {key: ",".join(sorted(names)) for key, names in sorted(out.items())}


def effective_lr(lr: float, regime: str, width: int, reference_width: int = 256,
                 lazy_scale: float = 1.0, width_exponent: float = 0.0) -> float:
    """The learning rate used: lr in the feature regime; in the lazy one (NTK
    parametrisation) lr · lazy_scale · (reference_width / width)^width_exponent. The default
    exponent 0 keeps η independent of width: one step in the NTK parametrisation already moves
    the effective weights like a step of η·σ²/fan_in in the standard one, i.e. the study's
    η ∝ 1/width (docs/science.md §1); exponent 1 would scale twice."""
    if regime != "lazy":
        return lr
    return lr * lazy_scale * (reference_width / width) ** width_exponent
