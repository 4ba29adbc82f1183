"""Scheduling overhead of the workflow: DAG building for a paper-scale sweep, the no-op run,
and the fixed cost of one job.

    python benchmarks/dag_bench.py [--repeats 3] [--profile] [--workdir DIR]

Measures, each the best of --repeats:
  * dry-run of a generated config with >= 1,000 runs (5 widths x 4 lrs x 5 seeds x 6 shared
    classes x 2 regimes = 1,200 runs, ~3,800 jobs): Snakefile parse + run table + DAG;
  * no-op run of the tiny config (tests/test_workflow.py) after it completed once;
  * one job end to end (`--force` of one metrics job) minus the no-op run: per-job overhead
    (script preamble, imports, set-up, the stage itself on a tiny input);
  * bare imports in a fresh interpreter: python, ntkpipe.smk, ntkpipe.stages (torch);
  * Snakefile parse alone (`--dry-run` of the tiny config): what every SLURM job pays again.
--profile adds a cProfile of the 1,000-run dry-run (top functions by cumulative time).
Targets: 1,000-run dry-run < 15 s and per-job overhead < 4 s on 2 cores.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

from test_workflow import TINY  # noqa: E402

BIG = {
    "results": "out",
    "experiments": ["grid"],
    "sweeps": {"grid": {
        "width": [64, 128, 256, 512, 1024],
        "lr": [0.01, 0.03, 0.1, 0.3],
        "seed": [0, 1, 2, 3, 4],
        "shared_classes": [0, 1, 2, 3, 4, 5],
        "regime": ["lazy", "feature"],
    }},
}


def smk_cmd(workdir: Path, *args: str) -> list[str]:
    return [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]


def timed(cmd: list[str], repeats: int = 1, check: bool = True, **kw) -> tuple[float, str]:
    """Best wall time of `repeats` runs, and the last run's output."""
    best, out = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, **kw)
        best = min(best, time.perf_counter() - start)
        out = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{out[-3000:]}")
    return best, out


def job_count(dry_run_output: str) -> int:
    for line in dry_run_output.split("Job stats:")[-1].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total":
            return int(parts[1])
    return -1


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def profile_dry_run(workdir: Path, top: int = 25) -> str:
    """cProfile of the big dry-run inside this process (snakemake's CLI entry point)."""
    from snakemake.cli import main

    prof = cProfile.Profile()
    argv = smk_cmd(workdir, "--dry-run", "--quiet")[1:]
    prof.enable()
    try:
        main(argv)
    except SystemExit:
        pass
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(top)
    buf.write("\nOf which in the workflow's own code (Snakefile, rules, ntkpipe):\n")
    stats.print_stats(r"ntkpipe|workflow/rules|Snakefile|\.smk", top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="cProfile the 1,000-run dry-run")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the tiny run here (default: a temporary directory)")
    args = ap.parse_args()

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="ntkpipe-dag-bench-") as tmp:
        tmp = Path(tmp)
        big = tmp / "big"
        write_config(big, BIG)
        t_listing, out = timed(smk_cmd(big, "--dry-run"), 1)
        n_jobs = job_count(out)
        import ntkpipe.config as ntkconfig
        import ntkpipe.sweep as ntksweep
        n_runs = len(set(ntksweep.iter_runs(ntkconfig.validate(dict(BIG)))))
        t, _ = timed(smk_cmd(big, "--dry-run", "--quiet"), args.repeats)
        rows.append((f"dry-run --quiet, {n_runs} runs / {n_jobs} jobs", t, "target < 15 s"))
        rows.append((f"dry-run listing every job, {n_jobs} jobs", t_listing, "one run"))

        tiny = args.workdir or tmp / "tiny"
        write_config(tiny, TINY)
        t_full, _ = timed(smk_cmd(tiny), 1)
        rows.append(("tiny workflow, first (full) run", t_full, "reference"))
        t_noop, out = timed(smk_cmd(tiny), args.repeats)
        assert "Nothing to be done" in out, out[-2000:]
        rows.append(("tiny workflow, no-op run", t_noop, ""))
        t_parse, _ = timed(smk_cmd(tiny, "--dry-run", "--quiet"), args.repeats)
        rows.append(("tiny workflow, dry-run (parse + DAG; SLURM jobs pay it)", t_parse, ""))

        target = next(p for p in sorted((tiny / "out/runs").rglob("metrics.nc")))
        t_one, _ = timed(smk_cmd(tiny, str(target.relative_to(tiny)), "--force"), args.repeats)
        rows.append(("one metrics job (no torch) forced, end to end", t_one, ""))
        rows.append(("  per-job cost (forced job - no-op)", t_one - t_noop, "target < 4 s"))
        target = next(p for p in sorted((tiny / "out/runs").rglob("phase1.pt")))
        t_train, _ = timed(smk_cmd(tiny, str(target.relative_to(tiny)), "--force"),
                           args.repeats)
        bench = next(p for p in sorted((tiny / "out/benchmarks").rglob("phase1.tsv")))
        job_s = float(bench.read_text().splitlines()[1].split("\t")[0])
        rows.append(("one train_phase1 job (torch) forced, end to end", t_train, ""))
        rows.append(("  its script, as timed by benchmark:", job_s, "incl. training"))
        rows.append(("  per-job cost (forced job - no-op)", t_train - t_noop,
                     "incl. training; target < 4 s"))

        py = sys.executable
        for label, code in (("python -c pass", "pass"),
                            ("import ntkpipe.smk, ntkpipe.gpu", "import ntkpipe.smk, ntkpipe.gpu"),
                            ("import ntkpipe.stages", "import ntkpipe.stages"),
                            ("import torch", "import torch"),
                            ("import snakemake.api", "import snakemake.api")):
            t, _ = timed([py, "-c", code], args.repeats)
            rows.append((label, t, ""))

        width = max(len(r[0]) for r in rows)
        print(f"{'measurement':<{width}}  {'seconds':>8}  note")
        for label, seconds, note in rows:
            print(f"{label:<{width}}  {seconds:8.2f}  {note}")

        if args.profile:
            print("\ncProfile of the big dry-run (cumulative):")
            print(profile_dry_run(big))


if __name__ == "__main__":
    main()
