"""The `ntkpipe` command: list runs and their status, show one run, describe the summary,
validate a config, print the scorecard."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ntkpipe import config as ntkconfig
from ntkpipe import sweep
from ntkpipe.errors import InputError

STATUSES = ("done", "stale", "missing", "diverged", "failed_to_learn")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    text = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) if text else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(t, widths)) for t in text]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """`value` as strict JSON can hold it: NaN and ±inf as null, numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _json(value: Any) -> str:
    return json.dumps(jsonable(value), indent=1, default=str, allow_nan=False)


def _emit(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    print(_json(rows) if as_json else _table(rows, columns))


def snakemake_plan(config_path: str, snakefile: Path) -> dict[str, str] | None:
    """{output path: 'update pending' | 'no update'} from `snakemake --summary`, i.e.
    Snakemake's own view of what is stale (changed params, code, inputs); None if it fails."""
    import subprocess

    command = [str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(snakefile),
               "--configfile", config_path, "--summary", "--quiet", "all"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    rows = [line.split("\t") for line in out.stdout.splitlines()[1:]]
    return {row[0]: row[-1] for row in rows if len(row) >= 6}


def run_status(results: Path, run: str, shift: str, plan: dict[str, str] | None = None,
               cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """Status and final accuracies of one run from its files (and Snakemake's plan); `cache`
    holds what earlier calls read from unchanged metrics files."""
    base = results / "runs" / run
    metrics_path = base / shift / "metrics.nc"
    upstream = [base / "phase1.pt", base / shift / "phase2.pt", base / shift / "ntk.nc"]
    info: dict[str, Any] = {"run_id": run, "shift_id": shift}
    if not metrics_path.is_file():
        info["status"] = "missing"
        return info
    if plan is not None and str(metrics_path) in plan:
        info["status"] = "stale" if plan[str(metrics_path)] == "update pending" else "done"
    else:  # no Snakefile at hand: compare modification times
        newest = max((p.stat().st_mtime for p in upstream if p.is_file()), default=0.0)
        info["status"] = "stale" if newest > metrics_path.stat().st_mtime else "done"
    stat = metrics_path.stat()
    stamp = [stat.st_mtime_ns, stat.st_size]
    entry = (cache or {}).get(str(metrics_path))
    if entry is None or entry["stamp"] != stamp:
        entry = {"stamp": stamp, "info": _metrics_info(metrics_path)}
        if cache is not None:
            cache[str(metrics_path)] = entry
    found = dict(entry["info"])
    if found.pop("status", None) is not None:  # diverged, failed to learn: beats done/stale
        info["status"] = entry["info"]["status"]
    info.update(found)
    return info


def _metrics_info(path: Path) -> dict[str, Any]:
    """What `ntkpipe runs` shows of one metrics.nc (its status only where it is not ok)."""
    from ntkpipe import store

    ds = store.open_netcdf(path)
    info: dict[str, Any] = {}
    if int(ds["diverged_step"]) >= 0:
        info["status"] = "diverged"
        info["diverged_step"] = int(ds["diverged_step"])
    elif "run_status" in ds and int(ds["run_status"]) == 2:  # ntkpipe.status.FAILED
        info["status"] = "failed_to_learn"
    if "run_status" in ds and int(ds["run_status"]) != 0:
        info["status_reason"] = ds["run_status"].attrs.get("reason", "")
    final = ds["accuracy_matrix"].isel(trained_task=-1).values
    info["final_accuracy"] = [round(float(a), 4) for a in final]
    info["boundary_step"] = [int(b) for b in ds["boundary_step"].values]
    for name in ("backward_transfer", "forgetting"):  # null for a single task (and old files)
        value = float(ds[name]) if name in ds else float("nan")
        info[name] = round(value, 4) if np.isfinite(value) else None
    return jsonable(info)


def _inputs_state(cfg: dict[str, Any]) -> str:
    """What the plan depends on outside the repository and results: the source of the
    config's own model factories and dataset loaders, and the dataset files."""
    from ntkpipe import custom

    parts = []
    for entry in [*cfg["models"].values(), *cfg["datasets"].values()]:
        target = entry.get("factory") or entry.get("loader")
        try:
            parts.append(f"{target}={custom.code_hash(target)}")
        except InputError:
            parts.append(f"{target}=?")
    files = [Path(f) for d in cfg["datasets"].values() for f in d.get("files", [])]
    root = cfg["dataset"]["root"]
    if root and Path(root).is_dir():  # class folders and files, as the cache rule's inputs
        folders = cfg["dataset"]["name"] == "imagefolder"  # its class folders, not each image
        files += sorted(p for p in Path(root).rglob("*") if not folders or p.is_dir())
    for path in files:
        try:
            stat = path.stat()
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{path}:missing")
    return "\n".join(parts)


def _workflow_state(config_path: str, snakefile: Path, results: Path,
                    cfg: dict[str, Any]) -> str:
    """A digest of what Snakemake's plan depends on: the config file, the workflow's and the
    package's source, your own models' and datasets' source and files, and every output's
    size and modification time."""
    import hashlib

    import ntkpipe

    digest = hashlib.sha256(Path(config_path).read_bytes())
    digest.update(_inputs_state(cfg).encode())
    roots = [snakefile.parent / "workflow", Path(ntkpipe.__file__).parent]
    files = [snakefile] + [p for root in roots if root.is_dir() for p in sorted(root.rglob("*"))
                           if p.suffix in (".py", ".smk", ".yaml", ".rst")]
    skip = {"logs", "benchmarks", ".cache", ".checks", "selections"}
    if results.is_dir():
        files += [p for p in sorted(results.rglob("*"))
                  if not set(p.relative_to(results).parts[:1]) & skip]
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, value: dict[str, Any]) -> None:
    from ntkpipe import store

    try:
        store.write_json(value, path)
    except OSError:
        pass  # a read-only results tree: answer without remembering


def cached_plan(config_path: str, snakefile: Path, results: Path,
                cfg: dict[str, Any] | None = None) -> dict[str, str] | None:
    """`snakemake_plan`, remembered under results/.cache until the config, the code or any
    output changes (Snakemake's --summary takes seconds; a repeated `ntkpipe runs` need not)."""
    cfg = cfg if cfg is not None else ntkconfig.load(config_path)
    state = _workflow_state(config_path, snakefile, results, cfg)
    path = results / ".cache" / "plan.json"
    cached = _load_cache(path)
    if cached.get("state") == state:
        return cached["plan"]
    plan = snakemake_plan(config_path, snakefile)
    if plan is not None and results.is_dir():
        _save_cache(path, {"state": state, "plan": plan})
    return plan


def cmd_runs(args: argparse.Namespace) -> int:
    cfg = ntkconfig.load(args.config)
    results = Path(cfg["results"])
    points = sweep.all_points(cfg)
    varying = [k for k in sweep.SWEEP_KEYS if len({p[k] for p in points}) > 1]
    snakefile = Path(args.snakefile)
    plan = cached_plan(args.config, snakefile, results, cfg) if snakefile.is_file() else None
    try:
        points = sweep.select(points, args.select)
    except ValueError as err:
        raise SystemExit(f"ntkpipe: {err}") from None
    cache_path = results / ".cache" / "runs.json"
    cache = _load_cache(cache_path)
    before = len(cache), json.dumps(cache, sort_keys=True)
    rows = []
    for point in points:
        info = run_status(results, sweep.run_id(point), sweep.shift_id(point), plan, cache)
        rows.append({"id": sweep.short_id(point), **{k: point[k] for k in varying}, **info})
    if results.is_dir() and (len(cache), json.dumps(cache, sort_keys=True)) != before:
        _save_cache(cache_path, cache)
    if args.status:
        rows = [r for r in rows if r["status"] == args.status]
    columns = ["id"] + varying + ["status", "final_accuracy"]
    _emit(rows, columns, args.json)
    if not args.json:
        counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
        print(f"\n{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0


def _find_run(results: Path, words: list[str], cfg: dict[str, Any]) -> Path:
    """metrics.nc of the run named by a short id, `key=value` selections, a run/shift path or
    a metrics.nc file."""
    points = sweep.all_points(cfg)
    if any("=" in w for w in words):
        try:
            hits = sweep.select(points, words)
        except ValueError as err:
            raise SystemExit(f"ntkpipe: {err}") from None
        if len(hits) != 1:
            ids = ", ".join(sweep.short_id(p) for p in hits[:10])
            raise SystemExit(f"ntkpipe: {' '.join(words)} matches {len(hits)} runs"
                             + (f" ({ids}{', …' if len(hits) > 10 else ''}): add keys or give "
                                "an id" if hits else "; `ntkpipe runs` lists them"))
        return _find_run(results, [f"{sweep.run_id(hits[0])}/{sweep.shift_id(hits[0])}"], cfg)
    text = " ".join(words)
    by_id = [p for p in points if sweep.short_id(p) == text]
    if by_id:
        text = f"{sweep.run_id(by_id[0])}/{sweep.shift_id(by_id[0])}"
    path = Path(text)
    candidates = [path, results / "runs" / text, path / "metrics.nc", results / "runs" / text / "metrics.nc"]
    for candidate in candidates:
        if candidate.is_file() and candidate.name == "metrics.nc":
            return candidate
    raise SystemExit(f"ntkpipe: no metrics.nc for run {text!r} (give its id from `ntkpipe "
                     f"runs`, key=value selections, the run/shift path under {results}/runs or "
                     "the metrics.nc file)")


def cmd_show(args: argparse.Namespace) -> int:
    from ntkpipe import store

    cfg = ntkconfig.load(args.config)
    ds = store.open_netcdf(_find_run(Path(cfg["results"]), args.run, cfg))
    steps = ds["step"].values
    boundaries = [int(b) for b in ds["boundary_step"].values]
    picks = {"start": int(steps[0]), **{f"boundary {i + 1}": b for i, b in enumerate(boundaries)},
             "end": int(steps[-1])}
    rows = []
    for label, step in picks.items():
        row: dict[str, Any] = {"at": label, "step": step}
        for name in ("spectral_norm", "kernel_distance", "kernel_velocity", "kernel_alignment"):
            row[name] = round(float(ds[name].sel(probe=ds["probe"].values[0], step=step)), 6)
        row["test_accuracy"] = [round(float(a), 4) for a in ds["test_accuracy"].sel(step=step).values]
        rows.append(row)
    studies = study_measures(Path(sweep.output_root(cfg)), ds, cfg)
    if args.json:
        _emit([{**row, **studies} if i == len(rows) - 1 else row for i, row in enumerate(rows)],
              list(rows[0]), True)
        return 0
    _emit(rows, list(rows[0]), False)
    for name, value in studies.items():
        text = ", ".join(f"{v:.4g}" for v in value) if isinstance(value, list) else f"{value:.4g}"
        print(f"{name}: {text}")
    return 0


def study_measures(results: Path, metrics: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers every study gives for this run (from the summary and the studies'
    measures; empty before they exist)."""
    from ntkpipe import studies
    from ntkpipe.summary import open_results, run_ids

    try:
        ds = open_results(results)
    except InputError:
        return {}
    run, shift = run_ids(metrics)
    hit = np.flatnonzero((ds["run_id"].values == run) & (ds["shift_id"].values == shift))
    if not len(hit):
        return {}
    one = ds.isel(run=int(hit[0]))
    out: dict[str, Any] = {}
    for study in studies.load_all(cfg["studies"]):
        if study.headline is not None:
            out.update(study.headline(one))
    return out


def cmd_summary(args: argparse.Namespace) -> int:
    from ntkpipe import store

    cfg = ntkconfig.load(args.config)
    path = Path(sweep.output_root(cfg)) / "summary" / "metrics.nc"
    if not path.is_file():
        raise SystemExit(f"ntkpipe: {path} does not exist yet; run the workflow first")
    ds = store.open_netcdf(path)
    taken = {k: sorted({v.item() for v in ds[k].values}) for k in sweep.SWEEP_KEYS}
    info = {"path": str(path), "runs": int(ds.sizes["run"]),
            "dims": {d: int(n) for d, n in ds.sizes.items()},
            "sweep": {k: values for k, values in taken.items() if len(values) > 1},
            "variables": {n: [d for d in ds[n].dims if d != "run"] for n in ds.data_vars}}
    if args.json:
        print(_json(info))
    else:
        print(f"{info['path']}: {info['runs']} runs")
        print("sweep: " + "; ".join(f"{k} = {v}" for k, v in info["sweep"].items()))
        for name, dims in info["variables"].items():
            print(f"  {name} ({', '.join(['run'] + dims)})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from ntkpipe import custom

    cfg = ntkconfig.load(args.config)
    runs = list(sweep.iter_runs(cfg))
    phase1 = len({r for r, _ in runs})
    checked = custom.check(cfg, sweep.all_points(cfg), Path(cfg["results"]) / ".checks")
    if args.json:
        print(_json({"config": args.config, "valid": True, "runs": len(runs),
                     "phase1_runs": phase1, "sweeps": sweep.active_sweeps(cfg),
                     "custom": checked}))
    else:
        print(f"{args.config}: valid; {len(runs)} runs, {phase1} phase-1 runs")
        for line in checked:
            print(f"  checked {line}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ntkpipe import verify

    results = Path(args.results) if args.results else Path(ntkconfig.load(args.config)["results"])
    if not results.is_dir():
        raise SystemExit(f"ntkpipe: {results} does not exist yet; run the workflow first")
    checked = verify.count_files(results)
    findings = verify.verify(results, repair=args.repair)
    if args.json:
        print(_json(verify.as_json(findings, checked)))
    else:
        print("\n".join(verify.report(findings, checked, args.repair)))
    return 1 if findings and not args.repair else 0


def cmd_scorecard(args: argparse.Namespace) -> int:
    import csv

    cfg = ntkconfig.load(args.config)
    path = Path(sweep.output_root(cfg)) / "scorecard.csv"
    if not path.is_file():
        raise SystemExit(f"ntkpipe: {path} does not exist yet; run the workflow first")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if args.json:
        _emit(rows, [], True)
        return 0
    print(scorecard_text(rows, args.notes))
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def scorecard_text(rows: list[dict[str, str]], notes: bool = False, width: int = 100) -> str:
    """The scorecard in `width` columns — verdict, study, claim, value with its interval — a
    note under each row when asked, and a tally per study and verdict."""
    lines = []
    for r in rows:
        value = r["value"] and f"{float(r['value']):.3g}"
        if r.get("low") and r.get("high"):
            value += f" [{float(r['low']):.3g}, {float(r['high']):.3g}]"
        head = f"{r['holds']:<12.12} {r['study'][:12]:<12} "
        tail = f" {value} {r['threshold']}".rstrip()
        lines.append(head + _cut(r["claim"], max(width - len(head) - len(tail), 20)).ljust(
            max(width - len(head) - len(tail), 20)) + tail)
        if notes and r.get("note"):
            lines += [f"{'':13}{_cut(r['note'], width - 13)}"]
    tally: dict[str, dict[str, int]] = {}
    for r in rows:
        tally.setdefault(r["study"], {}).setdefault(r["holds"], 0)
        tally[r["study"]][r["holds"]] += 1
    lines.append("")
    for study, counts in tally.items():
        lines.append(f"{study}: {sum(counts.values())} claims — " + ", ".join(
            f"{n} {v}" for v, n in sorted(counts.items())))
    total = {v: sum(c.get(v, 0) for c in tally.values()) for v in
             sorted({v for c in tally.values() for v in c})}
    lines.append(f"all: {len(rows)} claims — " + ", ".join(f"{n} {v}" for v, n in total.items()))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The argument parser of the `ntkpipe` command."""
    top = argparse.ArgumentParser(prog="ntkpipe", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default="config.yaml", help="config file (default config.yaml)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    runs = add("runs", cmd_runs, "table of every run: parameters, status, final accuracies")
    runs.add_argument("select", nargs="*", metavar="key=value",
                      help="only runs with these sweep values (e.g. regime=lazy width=128)")
    runs.add_argument("--status", choices=STATUSES, help="only runs with this status")
    runs.add_argument("--snakefile", default="Snakefile",
                      help="workflow whose plan decides 'stale' (default ./Snakefile; without "
                           "one, a run is stale when an input is newer than its metrics)")
    show = add("show", cmd_show, "one run's metrics at the start, each boundary and the end")
    show.add_argument("run", nargs="+",
                      help="the run: its id (`ntkpipe runs`), key=value selections naming one "
                           "run, its run/shift path under results/runs, or a metrics.nc file")
    add("summary", cmd_summary, "dimensions and variables of results/summary/metrics.nc")
    add("validate", cmd_validate, "check a config and count its runs")
    check = add("verify", cmd_verify, "check every output under results/ (it loads, holds its "
                "variables, its provenance matches its path); --repair removes the bad ones")
    check.add_argument("--repair", action="store_true",
                       help="remove each bad file, so that the next snakemake run rebuilds it "
                            "and what depends on it")
    check.add_argument("--results", help="the results directory (default: the config's)")
    card = add("scorecard", cmd_scorecard, "the published claims checked on the results")
    card.add_argument("--notes", action="store_true", help="print each row's note under it")
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ntkpipe` console script."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ntkconfig.ConfigError as err:
        if getattr(args, "json", False):
            print(_json({"config": args.config, "valid": False, "error": str(err)}))
        print(f"ntkpipe: invalid config: {err}", file=sys.stderr)
        return 2
    except InputError as err:  # a custom model or dataset failing its contract, a bad file
        if getattr(args, "json", False):
            print(_json({"config": getattr(args, "config", None), "valid": False,
                         "error": str(err)}))
        print(f"ntkpipe: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
