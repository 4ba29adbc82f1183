"""Benchmark of the empirical NTK engine against the torch.func recipe.

    python benchmarks/ntk_bench.py [--quick] [--readme benchmarks/README.md]

Each case runs in its own subprocess; its peak memory is the process's peak RSS (VmHWM, reset
just before the runs) minus its RSS then. Time is the best of the case's repeats. GFLOP/s
counts the matmul/conv FLOPs the engine performs (torch.utils.flop_counter); '% of matmul'
compares them with a 2048² fp32 torch.matmul timed right before that best run, because other
jobs on a shared machine change the throughput from minute to minute.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ntkpipe.models import build_model, make_mlp  # noqa: E402
from ntkpipe.ntk import empirical_ntk, reference_ntk  # noqa: E402

MiB = 2 ** 20


@functools.lru_cache(maxsize=None)
def _operands(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two n×n fp32 matrices and a result buffer, allocated once (kept out of peak memory)."""
    return torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best fp32 throughput of an n×n by n×n matmul."""
    a, b, out = _operands(n)
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def build(case: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """Model (eval mode, float32) and probe inputs of one case."""
    torch.manual_seed(0)
    if case["arch"] == "mlp":
        model = make_mlp(case["in"], case["width"], case["depth"], case["out"])
        x = torch.randn(case["n"], case["in"])
    else:
        model = build_model(case["arch"], (3, 32, 32), case["out"], width=case["width"],
                            depth=case["depth"], activation="relu", regime="feature")
        x = torch.randn(case["n"], 3, 32, 32)
    return model.eval(), x


def run_case(case: dict) -> dict:
    """Time one case (best of `repeats`), in this process; return the measurements."""
    model, x = build(case)
    impl = case["impl"]

    def compute() -> torch.Tensor:
        if impl == "torch.func":
            return reference_ntk(model, x, mode=case["mode"])
        return empirical_ntk(model, x, mode=case["mode"], implementation=impl)

    matmul_gflops(2048, 1)
    rss_before = _reset_peak_rss()
    times, throughputs = [], []
    for _ in range(case.get("repeats", 1)):
        throughputs.append(matmul_gflops(2048, 2))  # the machine's state next to this run
        t = time.perf_counter()
        compute()
        times.append(time.perf_counter() - t)
    peak = _status_kib("VmHWM") - rss_before
    flops = None
    if impl != "torch.func":
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            compute()
        flops = counter.get_total_flops()
    best = min(range(len(times)), key=times.__getitem__)
    return {"time": times[best], "peak_mib": peak / 1024, "matmul_gflops": throughputs[best],
            "gflops": flops / times[best] / 1e9 if flops else None}


def _status_kib(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the process's peak RSS (VmHWM; Linux ≥ 4.0) and return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def reference_estimate(case: dict, gflops: float) -> tuple[float, float]:
    """Seconds and bytes the torch.func recipe would need: the Jacobian (N·O·P floats, times
    two for the flattening copy) and its contraction, 2 (N·O)² P FLOPs."""
    model, _ = build(case)
    params = sum(p.numel() for p in model.parameters())
    rows = case["n"] * case["out"]
    return 2 * rows * rows * params / (gflops * 1e9), 2 * rows * params * 4


def cases(quick: bool) -> list[dict]:
    """The benchmark matrix."""
    def mlp(width, depth, n, mode, impl="auto", inp=64, repeats=5):
        return dict(arch="mlp", **{"in": inp}, width=width, depth=depth, out=10, n=n,
                    mode=mode, impl=impl, repeats=repeats)

    def cnn(arch, width, n, mode, impl="auto"):
        return dict(arch=arch, width=width, depth=2, out=10, n=n, mode=mode, impl=impl,
                    repeats=3)

    headline = [mlp(1024, 2, 256, "full"), mlp(1024, 2, 256, "full", "torch.func", repeats=1),
                mlp(1024, 2, 64, "full"), mlp(1024, 2, 64, "full", "torch.func", repeats=1)]
    if quick:
        return headline[:1] + [mlp(1024, 2, 256, "trace"), mlp(256, 2, 256, "full"),
                               mlp(256, 2, 256, "full", "torch.func", repeats=1),
                               mlp(1024, 2, 64, "full"),
                               mlp(1024, 2, 64, "full", "torch.func", repeats=1),
                               cnn("cnn", 16, 32, "trace")]
    out = headline + [mlp(1024, 2, 128, "full"), mlp(1024, 2, 128, "full", "torch.func",
                                                       repeats=1)]
    for width, depth in ((256, 2), (512, 2), (1024, 3), (2048, 3)):
        for mode in ("full", "trace"):
            out.append(mlp(width, depth, 1000, mode, inp=784, repeats=1 if width >= 1024 else 3))
    out.append(mlp(256, 2, 256, "full", "torch.func", inp=784, repeats=1))
    out.append(mlp(2048, 3, 1000, "full", "torch.func", inp=784, repeats=1))
    out += [mlp(1024, 2, 256, "full", "jacobian", repeats=1)]
    for arch in ("cnn", "cnn-relu"):
        for mode in ("full", "trace"):
            out.append(cnn(arch, 32, 128, mode))
        out.append(cnn(arch, 32, 128, "full", "jacobian"))
        out.append(cnn(arch, 32, 32, "full", "torch.func"))
    return out


def describe(case: dict) -> str:
    """Human-readable name of a case."""
    if case["arch"] == "mlp":
        widths = "→".join([str(case["in"])] + [str(case["width"])] * case["depth"] + ["10"])
        return f"MLP {widths}, N={case['n']}, {case['mode']}"
    return f"{case['arch']} w={case['width']} 3×32×32, N={case['n']}, {case['mode']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute subset")
    parser.add_argument("--readme", type=Path, help="write the table into this Markdown file")
    parser.add_argument("--ref-limit", type=float, default=None,
                        help="skip torch.func cases estimated to take longer (s)")
    parser.add_argument("--only", help="run only the cases whose name contains this text "
                                       "(e.g. 'cnn')")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    ref_limit = args.ref_limit or (10.0 if args.quick else 240.0)
    machine_gflops = matmul_gflops()
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    header = ("| case | implementation | time (s) | peak mem (MiB) | GFLOP/s | % of matmul peak "
              "| speed-up vs torch.func |")
    lines = [header, "|" + " --- |" * 7]
    print(header, flush=True)
    engine_times: dict[str, float] = {}
    for case in cases(args.quick):
        name = describe(case)
        if args.only and args.only not in name:
            continue
        if case["impl"] == "torch.func":
            est_s, est_b = reference_estimate(case, machine_gflops)
            if est_s > ref_limit or est_b > 0.6 * avail:
                row = (f"| {name} | torch.func | skipped (est. {est_s:.0f} s, "
                       f"{est_b / 2 ** 30:.1f} GiB) | | | | |")
                lines.append(row)
                print(row, flush=True)
                continue
        proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            row = f"| {name} | {case['impl']} | failed: {proc.stderr.strip().splitlines()[-1]} |"
        else:
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            speed = ""
            if case["impl"] == "auto":
                engine_times[name] = r["time"]
            elif case["impl"] == "torch.func" and name in engine_times:
                speed = f"{r['time'] / engine_times[name]:.0f}×"
            gf = f"{r['gflops']:.0f}" if r["gflops"] else ""
            pct = f"{100 * r['gflops'] / r['matmul_gflops']:.0f}% of {r['matmul_gflops']:.0f}" \
                if r["gflops"] else ""
            row = (f"| {name} | {case['impl']} | {r['time']:.3f} | {r['peak_mib']:.0f} | {gf} | "
                   f"{pct} | {speed} |")
        lines.append(row)
        print(row, flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads), fp32 matmul "
               f"4096² measured at {machine_gflops:.0f} GFLOP/s")
    print(f"\n{machine}")
    if args.readme:
        write_readme(args.readme, lines, machine, args.quick)


def write_readme(path: Path, lines: list[str], machine: str, quick: bool) -> None:
    """The table, the machine and the command, as Markdown."""
    command = "python benchmarks/ntk_bench.py" + (" --quick" if quick else "") + \
        f" --readme {path}"
    path.write_text("\n".join([
        "# NTK engine benchmark", "",
        f"Machine: {machine}.", "",
        f"Command: `{command}`", "",
        *lines, "",
    ]))


if __name__ == "__main__":
    main()
