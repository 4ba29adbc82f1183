"""Glue between a Snakemake `script:` job and the stage functions: logging, threads,
provenance, and the source hash that makes edited package code rerun the rules using it."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from functools import lru_cache
from importlib import util
from pathlib import Path
from typing import Any, Callable


def _module_file(name: str) -> Path | None:
    """The source file of a dotted module name (a package's __init__.py); None when it is no
    module (an attribute imported from one) or cannot be found. Only the top-level package is
    looked up, nothing is imported (`ntkpipe.ntk` must not import torch at parse time)."""
    top, *rest = name.split(".")
    try:
        spec = util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        return None
    if not spec.submodule_search_locations:
        return Path(spec.origin) if not rest else None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, tops: set[str]) -> set[str]:
    """The modules of the packages `tops` a source file imports (anywhere in it: lazy imports
    count), as dotted names: `from a.b import c` is a.b.c when c is a module, else a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in tops:
                continue
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if _module_file(name) is not None else node.module)
    return {name for name in found if name.split(".")[0] in tops}


def code_closure(*modules: str) -> list[Path]:
    """The source files of the given modules (dotted names or paths to .py files) and of
    every module they import from ntkpipe or from their own top-level package, transitively.
    A package's __init__ counts only where it is imported by name, not as the parent of a
    submodule (so `ntkpipe.stages.data` does not pull in every stage)."""
    files: dict[Path, None] = {}
    todo: list[tuple[Path, set[str]]] = []
    for module in modules:
        path = Path(module) if module.endswith(".py") else _module_file(module)
        if path is None or not path.is_file():
            raise ImportError(f"module {module!r} not found: run `make install` "
                              "(pip install -e .)")
        tops = {"ntkpipe"} | ({module.split(".")[0]} if not module.endswith(".py") else set())
        todo.append((path.resolve(), tops))
    while todo:
        path, tops = todo.pop()
        if path in files:
            continue
        files[path] = None
        for name in _imports(path, tops):
            if (found := _module_file(name)) is not None:
                todo.append((found.resolve(), tops))
    return sorted(files)


@lru_cache(maxsize=None)
def code_hash(*modules: str) -> str:
    """SHA-256 (16 hex digits) of the source of `modules` and all they import (see
    `code_closure`). Passed through `params:`, it makes Snakemake rerun a rule when code it
    runs changes, and only then."""
    digest = hashlib.sha256()
    for path in code_closure(*modules):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def export_source_path(basedir: str) -> None:
    """Put the workflow's src/ first on the PYTHONPATH its jobs inherit, so a job in a conda
    env (which holds the dependencies, not ntkpipe) imports ntkpipe from this checkout."""
    paths = [os.path.join(basedir, "src"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)


def _report_input_errors(log: Any, terminal: Any, log_path: Path) -> Callable[..., None]:
    """An excepthook: bad input (a missing, truncated or malformed file, an impossible split)
    becomes one line naming the problem, in the log and on the terminal, and exit status 1;
    anything else keeps its traceback (a bug to report)."""
    from ntkpipe.errors import InputError

    default = sys.excepthook

    def hook(kind: type, error: BaseException, trace: Any) -> None:
        if not issubclass(kind, InputError):
            default(kind, error, trace)
            return
        line = f"ntkpipe: {error}"
        print(line, file=log, flush=True)
        print(f"{line} (log: {log_path})", file=terminal, flush=True)
        sys.exit(1)

    return hook


# The GPU slot of this job's process. Its flock is held until the process ends (normally, by
# an exception, or killed): the kernel releases it, so nothing needs to run at exit.
GPU_SLOT = None


def setup(snakemake: Any) -> tuple[Callable[[str], None], dict[str, str]]:
    """Route stderr to the job's log, take a GPU slot for rules with `resources: gpu`, set
    torch's threads, and build the provenance of the job's outputs (its params and wildcards).
    Returns (log function, provenance). Where the job server can take the job, the job runs
    in one of its workers instead and this process exits with the worker's status."""
    from ntkpipe import jobserver

    jobserver.offload(sys.argv)
    global GPU_SLOT
    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "w", buffering=1)
    terminal = sys.stderr
    sys.stderr = handle
    sys.excepthook = _report_input_errors(handle, terminal, log_path)
    from ntkpipe import gpu, store

    # Before anything touches CUDA: the slot sets CUDA_VISIBLE_DEVICES to the chosen device
    # (the job sees it as cuda:0). Under SLURM, SLURM's choice stands and no lock is taken. A
    # job that asked for no GPU (or ran with --resources gpu=0) sees none.
    n_gpus = int(snakemake.resources.get("gpu", 0) or 0)
    if n_gpus > 0 and GPU_SLOT is None:
        GPU_SLOT = gpu.claim(n_gpus)  # waits while every device is taken
        if GPU_SLOT.source != "cpu":
            print(f"GPU slot: {GPU_SLOT.describe()}", file=handle, flush=True)
    elif n_gpus == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    # Read by torch (OpenMP / MKL) when a stage imports it; set here so jobs that never import
    # torch do not pay for it.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(max(1, int(snakemake.threads)))
    if "torch" in sys.modules:  # a job-server worker: torch was loaded before the job began
        sys.modules["torch"].set_num_threads(max(1, int(snakemake.threads)))
    params = {k: v for k, v in snakemake.params.items() if k != "code"}
    wildcards = dict(snakemake.wildcards.items())
    device = "cpu"
    seed = params.get("run", {}).get("seed") if isinstance(params.get("run"), dict) else None
    prov = store.provenance(config=params, wildcards=wildcards, seed=seed, device=device,
                            workflow_dir=Path(snakemake.scriptdir))
    if GPU_SLOT is not None and GPU_SLOT.source != "cpu":  # e.g. "cuda:0 (physical GPU 1, lock)"
        prov["gpu_slot"] = GPU_SLOT.describe()

    def log(line: str) -> None:
        print(line, file=handle, flush=True)

    return log, prov


def snapshot_files(snakemake: Any) -> list[str]:
    """A job's snapshot inputs in phase order (phase 2 is absent for a single task)."""
    return [snakemake.input[k] for k in ("phase1", "phase2") if k in snakemake.input.keys()]
