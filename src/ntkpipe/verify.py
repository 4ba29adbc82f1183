"""`ntkpipe verify`: every file under `results/` checked — it loads, holds what its kind must
hold, and its provenance names the run its path names — and, with `--repair`, the bad ones
removed, so that the next `snakemake` rebuilds exactly them and what depends on them.

What counts as bad: a file that does not load (truncated, corrupted, empty), a NetCDF without
the variables its stage writes, a per-run file whose `wildcards_json` names another run than
its path, and a leftover temporary file of an interrupted atomic write (`.<name>.*.tmp`).
Resume files (`*.pt.resume`) are checked like checkpoints. A file that is merely missing is
not bad: Snakemake builds it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

# Variables each NetCDF kind must hold (the first one its stage writes, and the key ones read
# downstream).
REQUIRED = {
    "ntk.nc": ("ntk_trace", "test_accuracy", "train_accuracy"),
    "metrics.nc": ("spectral_norm", "kernel_distance", "accuracy_matrix", "diverged_step"),
    "sharpness.nc": ("sharpness",),
    "train_kernel.nc": ("train_ntk", "train_target"),
}
_TEMPORARY = re.compile(r"^\..+\.tmp$")
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Finding:
    """One bad file: its path, what is wrong, and whether --repair removed it."""

    path: str
    problem: str
    removed: bool = False


def _wildcards(path: Path, results: Path) -> dict[str, str] | None:
    """{run, shift?} that a per-run file's path names (None: not a per-run file)."""
    try:
        rel = path.relative_to(results / "runs")
    except ValueError:
        return None
    parts = rel.parts[:-1]
    split = next((i for i, p in enumerate(parts) if p.startswith("shift~")), None)
    if split is None:
        return {"run": "/".join(parts)}
    return {"run": "/".join(parts[:split]), "shift": "/".join(parts[split:])}


def _check_provenance(attrs: dict[str, Any], path: Path, results: Path) -> str | None:
    expected = _wildcards(path, results)
    text = attrs.get("wildcards_json")
    if expected is None or text is None:
        return None
    try:
        recorded = json.loads(text)
    except ValueError:
        return "its wildcards_json attribute is not JSON"
    for key, value in expected.items():
        if key in recorded and recorded[key] != value:
            return f"its provenance names {key} {recorded[key]!r}, its path {value!r}"
    return None


def check_file(path: Path, results: Path) -> str | None:
    """What is wrong with one file under `results` (None: nothing we can see)."""
    from ntkpipe import store

    name = path.name
    if _TEMPORARY.match(name):
        return "a leftover temporary file of an interrupted write"
    try:
        if name.endswith(".nc"):
            ds = store.open_netcdf(path)
            missing = [v for v in REQUIRED.get(name, ()) if v not in ds.variables]
            if missing:
                return f"lacks {', '.join(missing)}"
            return _check_provenance(dict(ds.attrs), path, results)
        if name.endswith(".pt") or name.endswith(".pt.resume"):
            obj = store.load_torch(path)
            if not isinstance(obj, dict):
                return f"holds a {type(obj).__name__}, not an ntkpipe checkpoint"
            return None
        if name.endswith(".npz"):
            store.load_arrays(path)
            return None
        if name.endswith(".png"):
            with open(path, "rb") as handle:
                return None if handle.read(8) == _PNG else "not a PNG image"
        if name.endswith(".csv"):
            import csv

            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            if not rows or not rows[0]:
                return "an empty CSV file"
            width = len(rows[0])
            bad = next((i for i, row in enumerate(rows[1:], 2) if len(row) != width), None)
            return None if bad is None else f"row {bad} has another number of columns"
        if name.endswith(".json"):
            json.loads(path.read_text())
            return None
    except store.CorruptFileError as err:
        return str(err).split(": ", 1)[-1].replace(store.REPAIR, "")
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"not readable: {err}"
    return None


def _files(results: Path) -> Iterator[Path]:
    skip = {"logs", "benchmarks"}  # Snakemake's own records, not inputs of any rule
    for path in sorted(results.rglob("*")):
        if path.is_file() and not (set(path.relative_to(results).parts[:1]) & skip):
            yield path


# What each per-run output is built from, within its run's folder (a file rebuilt makes these
# stale): the phase-1 outputs feed everything of the run, phase 2 its shift's kernels.
_RUN_LEVEL = {"phase1.pt", "phase1_snapshots.pt"}
_SHIFT_LEVEL = {"phase2.pt", "phase2_snapshots.pt"}
_AGGREGATES = ("summary", "scorecard", "scorecard.csv", "scorecard.provenance.json", "figures",
               "selections")


def _split_of(run: str) -> dict[str, str]:
    """The dataset, classes_per_task and seed segments of a run id."""
    parts = dict(p.split("~", 1) for p in run.split("/") if "~" in p)
    return {k: parts.get(k, "") for k in ("dataset", "classes_per_task", "seed")}


def _task_shift(shift: str) -> str | None:
    """The task sequence of a run's shift id (`sweep.tasks_id`; None: not a shift id)."""
    from ntkpipe.sweep import tasks_id

    try:
        return tasks_id(shift)
    except ValueError:
        return None


def dependents(path: Path, results: Path) -> list[Path]:
    """The outputs under `results` built from `path` (directly or not), `path` excluded:
    removing them with it makes Snakemake rebuild the whole chain (it leaves a missing
    intermediate alone while what was built from it still exists)."""
    name, out = path.name, []
    rel = path.relative_to(results).parts
    if _TEMPORARY.match(name) or name.endswith(".resume") or rel[0] in (".cache", ".checks"):
        return []  # not an input of anything
    runs = results / "runs"
    report = [results / "report.html"] if (results / "report.html").is_file() else []
    if rel[0] not in ("data", "splits", "runs"):  # the aggregates: what is built from each
        if rel[0] == "summary":
            out += [p for top in ("scorecard", "figures") for p in (results / top).rglob("*")
                    if p.is_file()]
            out += [p for p in (results / "scorecard.csv", results / "scorecard.provenance.json")
                    if p.is_file()]
        elif rel[0] == "scorecard":
            out += [p for p in (results / "scorecard.csv", results / "scorecard.provenance.json")
                    if p.is_file()]
        return sorted(set(out + report) - {path})
    if rel[0] == "data":
        dataset = name[:-len(".npz")]
        out += [p for p in (results / "splits").glob(f"dataset~{dataset}/**/*") if p.is_file()]
        out += [p for p in runs.glob(f"dataset~{dataset}/**/*") if p.is_file()]
    elif rel[0] == "splits":
        segments = [s for s in rel[1:-1]]
        split = dict(s.split("~", 1) for s in segments if "~" in s)
        shift = "/".join(s for s in segments if s.split("~")[0] in
                         ("shift", "shared_classes", "alpha", "n_tasks"))
        for run_file in (p for p in runs.rglob("*") if p.is_file()):
            wild = _wildcards(run_file, results)
            if _split_of(wild["run"]) != {k: split.get(k, "") for k in _split_of("")}:
                continue
            same_tasks = wild.get("shift") and _task_shift(wild["shift"]) == shift
            if name == "task1.npz" or same_tasks:
                out.append(run_file)
    elif rel[0] == "runs":
        folder = path.parent
        if name in _RUN_LEVEL:
            out += [p for p in folder.rglob("*") if p.is_file() and p.name not in _RUN_LEVEL]
        elif name in _SHIFT_LEVEL:
            out += [p for p in folder.rglob("*") if p.is_file() and p.name not in _SHIFT_LEVEL]
        elif name == "ntk.nc":
            out += [p for p in (folder / "metrics.nc",) if p.is_file()]
    for top in _AGGREGATES:  # summary, scorecard, figures: built from every run
        target = results / top
        out += [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
    return sorted(set(out + report) - {path})


def verify(results: str | Path, repair: bool = False) -> list[Finding]:
    """Every bad file under `results`; with `repair`, each removed together with the outputs
    built from it (listed as findings of their own), so the next run rebuilds exactly those."""
    results = Path(results)
    findings = [Finding(str(path), problem) for path in _files(results)
                if (problem := check_file(path, results)) is not None]
    if not repair:
        return findings
    bad = {f.path for f in findings}
    stale: dict[str, str] = {}
    for finding in findings:
        for dependent in dependents(Path(finding.path), results):
            if str(dependent) not in bad:
                stale.setdefault(str(dependent), f"built from {finding.path}")
    findings += [Finding(path, problem) for path, problem in sorted(stale.items())]
    for finding in findings:
        Path(finding.path).unlink(missing_ok=True)
        finding.removed = True
    return findings


def report(findings: list[Finding], checked: int, repair: bool) -> list[str]:
    """The lines `ntkpipe verify` prints."""
    lines = [f"{f.path}: {f.problem}" + (" (removed)" if f.removed else "") for f in findings]
    if not findings:
        lines.append(f"{checked} files checked: all good")
    elif repair:
        built = sum(f.problem.startswith("built from ") for f in findings)
        lines.append(f"{checked} files checked: {len(findings) - built} bad, removed with the "
                     f"{built} outputs built from them; the next snakemake run rebuilds exactly "
                     "those")
    else:
        lines.append(f"{checked} files checked: {len(findings)} bad; `ntkpipe verify --repair` "
                     "removes them so that the next snakemake run rebuilds them")
    return lines


def as_json(findings: list[Finding], checked: int) -> dict[str, Any]:
    """The JSON form of a verification."""
    return {"checked": checked, "bad": [asdict(f) for f in findings]}


def count_files(results: str | Path) -> int:
    """How many files `verify` looks at."""
    results = Path(results)
    return sum(1 for _ in _files(results)) if results.is_dir() else 0
