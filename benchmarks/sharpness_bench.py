"""Benchmark of the edge-of-stability analysis: Lanczos sharpness, the Gauss–Newton bound and
kernel gradient descent.

    python benchmarks/sharpness_bench.py [--quick] [--threads 1] [--repeats 3]

Three tables, on cuda when there is a GPU, else on the CPU, float64 throughout:
  1. `hessian.top_hessian_eigen` (ARPACK Lanczos on Hessian-vector products) on an MLP
     64→W→W→10 (tanh, feature regime, seed 0) with the MSE loss on n random samples (random
     labels 0..9): wall time, the number of Hessian-vector products (HVPs, counted by wrapping
     `hessian.hessian_vector_product`) and the share of the time spent in them, for k = 1, 2,
     tol = 1e-4, 1e-8, started cold (random vector) or warm: from the top eigenvector, at the
     same k and tol, of the same model before its weights moved by --perturb × randn × each
     tensor's RMS, as between consecutive snapshots of `stages.analyses.measure_sharpness`.
     Every call is timed on the perturbed model.
  2. per size: one HVP; the full NTK (`empirical_ntk(mode="full", dtype=float64)`); the top
     eigenvalue of the Gauss–Newton part from it (`hessian.gauss_newton_sharpness`) and its
     relative gap (H − GN)/H to the Hessian's (tol 1e-8; for MSE they differ by the residual
     term).
  3. `kgd.kgd_residuals` + `kgd.kgd_loss` for a random PSD traced kernel (A Aᵀ/n) of n samples,
     10 outputs, at 200 steps, and `np.linalg.eigh` of the same kernel alone.

Each size runs in its own subprocess. Times are the median of --repeats runs after a warm-up
(a call stops repeating once its runs have taken 15 s). Peak memory is the extra peak RSS
(VmHWM, reset just before the call) on the CPU, or torch.cuda.max_memory_allocated above the
allocation before the call on a GPU (the CPU-side Lanczos vectors then not included); for
Lanczos it is that of the subprocess's first call (k=2, tol 1e-4), before anything is cached.
--threads sets torch's and the BLAS threads (default 1: the pipeline's sharpness and
train_kernel jobs run with `threads: 1`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ntkpipe import hessian, kgd  # noqa: E402
from ntkpipe.models import build_model  # noqa: E402
from ntkpipe.ntk import empirical_ntk  # noqa: E402
from ntk_bench import _status_kib  # noqa: E402  (this directory is on sys.path when run)

MiB = 2 ** 20
REPEAT_BUDGET_S = 15.0
KGD_STEPS = np.arange(200) * 10  # 200 steps: 0, 10, ..., 1990


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(threads: int) -> None:
    """torch's intra-op threads and the BLAS behind numpy/scipy (eigh, ARPACK's products)."""
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads)
    except ImportError:  # the subprocess's environment (OMP/OPENBLAS_NUM_THREADS) still applies
        pass


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- memory ----------------------------------------------------------------------------------

@contextlib.contextmanager
def peak_memory() -> Iterator[dict[str, float | None]]:
    """Extra peak memory (MiB) of the block: CUDA allocations on a GPU, else RSS (VmHWM)."""
    out: dict[str, float | None] = {"mib": None}
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        yield out
        sync()
        out["mib"] = (torch.cuda.max_memory_allocated() - before) / MiB
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (Linux ≥ 4.0)
            f.write("5")
        before = _status_kib("VmRSS")
    except OSError:
        yield out
        return
    yield out
    out["mib"] = (_status_kib("VmHWM") - before) / 1024


# --- timing ----------------------------------------------------------------------------------

def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any, float | None, list[float]]:
    """(median seconds, last result, peak extra MiB over the runs, every run's seconds) of `fn`,
    already warm; stops repeating once the runs have taken REPEAT_BUDGET_S."""
    times, result = [], None
    with peak_memory() as mem:
        for _ in range(max(repeats, 1)):
            t = time.perf_counter()
            result = fn()
            sync()
            times.append(time.perf_counter() - t)
            if sum(times) > REPEAT_BUDGET_S:
                break
    return statistics.median(times), result, mem["mib"], times


class HVPCounter:
    """Wraps `hessian.hessian_vector_product` (looked up by `top_hessian_eigen` at call time):
    counts the products and the seconds spent in them."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator["HVPCounter"]:
        original = hessian.hessian_vector_product

        def counting(*args: Any, **kwargs: Any) -> Callable[[np.ndarray], np.ndarray]:
            matvec = original(*args, **kwargs)

            def wrapped(v: np.ndarray) -> np.ndarray:
                t = time.perf_counter()
                out = matvec(v)
                self.seconds += time.perf_counter() - t
                self.calls += 1
                return out
            return wrapped

        hessian.hessian_vector_product = counting
        try:
            yield self
        finally:
            hessian.hessian_vector_product = original

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


# --- the cases -------------------------------------------------------------------------------

def build(width: int, n: int, perturb: float
          ) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model, the model after a small random step, x, y) on the device, float64."""
    dev = device()

    def mlp() -> torch.nn.Module:
        return build_model("mlp", (64,), 10, width=width, depth=2, activation="tanh",
                           regime="feature", bias=True, bias_std=0.1,
                           seed=0).to(dev, torch.float64).eval()

    base, moved = mlp(), mlp()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in moved.parameters():
            step = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dev)
            p.add_(perturb * p.pow(2).mean().sqrt() * step)
    x = torch.randn(n, 64, generator=gen, dtype=torch.float64).to(dev)
    y = torch.randint(0, 10, (n,), generator=gen).to(dev)
    return base, moved, x, y


def run_sharpness_case(case: dict) -> dict:
    """Tables 1 and 2 for one (width, n)."""
    width, n, repeats = case["width"], case["n"], case["repeats"]
    base, model, x, y = build(width, n, case["perturb"])
    params = hessian.parameter_dimension(model)

    # the previous snapshot's top eigenvectors, per (k, tol); the first call, in this fresh
    # process, gives the peak memory of one Lanczos run (HVP graph and ARPACK's vectors)
    starts, memory = {}, []
    for k, tol in [(2, 1e-4), (1, 1e-4), (1, 1e-8), (2, 1e-8)]:
        with peak_memory() as mem:
            starts[k, tol] = hessian.top_hessian_eigen(base, x, y, "mse", k=k, tol=tol)[1][:, 0]
        memory.append(mem["mib"])
    lanczos_mib = memory[0]

    matvec = hessian.hessian_vector_product(model, x, y, "mse")
    v = np.random.default_rng(0).standard_normal(params)
    matvec(v)  # warm-up
    hvp_s, _, _, _ = timed(lambda: matvec(v), max(repeats, 5))

    counter = HVPCounter()
    lanczos = []
    with counter.installed():
        for k in (1, 2):
            for tol in (1e-4, 1e-8):
                for start in ("cold", "warm"):
                    v0 = starts[k, tol] if start == "warm" else None
                    counter.reset()
                    sec, (vals, _), _, runs = timed(
                        lambda: hessian.top_hessian_eigen(model, x, y, "mse", k=k, tol=tol,
                                                          start=v0), repeats)
                    lanczos.append(dict(k=k, tol=tol, start=start, time=sec, runs=len(runs),
                                        hvps=counter.calls // len(runs),
                                        hvp_share=counter.seconds / sum(runs),
                                        eigs=[float(e) for e in vals]))
    reference = next(r["eigs"][0] for r in lanczos
                     if r["k"] == 1 and r["tol"] == 1e-8 and r["start"] == "cold")

    full = empirical_ntk(model, x, mode="full", dtype=torch.float64)  # warm-up
    ntk_s, full, ntk_mib, _ = timed(
        lambda: empirical_ntk(model, x, mode="full", dtype=torch.float64), repeats)
    with torch.no_grad():
        outputs = model(x)
    hessian.gauss_newton_sharpness(full, outputs, "mse")  # warm-up
    gn_s, gn, gn_mib, _ = timed(lambda: hessian.gauss_newton_sharpness(full, outputs, "mse"),
                                repeats)
    return dict(params=params, hvp_s=hvp_s, lanczos_mib=lanczos_mib, lanczos=lanczos,
                hessian_top=reference, ntk_s=ntk_s, ntk_mib=ntk_mib, gn_s=gn_s, gn_mib=gn_mib,
                gauss_newton=gn)


def run_kgd_case(case: dict) -> dict:
    """Table 3 for one kernel size."""
    n, repeats = case["n"], case["repeats"]
    rng = np.random.default_rng(0)

    def problem(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        a = rng.standard_normal((m, m))
        k0 = a @ a.T / m
        y = np.eye(10)[rng.integers(0, 10, m)]
        f0 = 0.01 * rng.standard_normal((m, 10))
        eta = m / np.trace(k0)  # η λ_max / n ≤ 1: stable
        return k0, y, f0, eta

    def curve(k0: np.ndarray, y: np.ndarray, f0: np.ndarray, eta: float) -> np.ndarray:
        return kgd.kgd_loss(kgd.kgd_residuals(k0, y, eta, KGD_STEPS, f0))

    curve(*problem(100))  # warm-up on a small kernel
    k0, y, f0, eta = problem(n)
    total_s, losses, mib, runs = timed(lambda: curve(k0, y, f0, eta), repeats)
    eigh_s, _, eigh_mib, _ = timed(lambda: np.linalg.eigh(k0), repeats)
    # what the metrics stage runs: the loss from K0's eigenmodes, no residual tensor
    modes_s, mode_losses, _, _ = timed(lambda: kgd.kgd_loss_curve(k0, y, eta, KGD_STEPS, f0),
                                       repeats)
    return dict(time=total_s, runs=len(runs), peak_mib=mib, eigh_s=eigh_s, eigh_mib=eigh_mib,
                final_loss=float(losses[-1]), modes_s=modes_s,
                modes_error=float(np.max(np.abs(mode_losses - losses) / losses)))


def cases(quick: bool, repeats: int, perturb: float) -> tuple[list[dict], list[dict]]:
    """(sharpness cases, KGD cases)."""
    sizes = [(200, 256)] if quick else [(200, 256), (200, 1024), (1000, 256), (1000, 1024)]
    sharp = [dict(kind="sharpness", width=w, n=n, repeats=repeats, perturb=perturb)
             for w, n in sizes]
    descent = [dict(kind="kgd", n=n, repeats=repeats) for n in ([1000] if quick
                                                                 else [1000, 2000, 4000])]
    return sharp, descent


# --- output ----------------------------------------------------------------------------------

def mib(value: float | None) -> str:
    return "" if value is None else f"{max(value, 0):.0f}"


def describe(case: dict, params: int | None = None) -> str:
    text = f"MLP 64→{case['width']}→{case['width']}→10"
    return text + (f" ({params:,} params)" if params else "")


def run_in_subprocess(case: dict, threads: int) -> tuple[dict | None, str]:
    """(result, error line) of one case, run in a fresh interpreter."""
    env = {**os.environ, **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                       "OPENBLAS_NUM_THREADS")}}
    proc = subprocess.run([sys.executable, __file__, "--threads", str(threads),
                           "--case", json.dumps(case)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        return None, f"failed: {lines[-1]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="width 200, n 256 and a 1000-sample kernel only (< 1 minute)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1, as the pipeline's jobs)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per call, median reported (default 3; 1 with --quick)")
    parser.add_argument("--perturb", type=float, default=1e-3,
                        help="relative size of the weight step between the warm start's "
                             "snapshot and the measured one (default 1e-3)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.case:
        case = json.loads(args.case)
        run = run_sharpness_case if case["kind"] == "sharpness" else run_kgd_case
        print(json.dumps(run(case)))
        return

    started = time.perf_counter()
    repeats = args.repeats or (1 if args.quick else 3)
    sharp, descent = cases(args.quick, repeats, args.perturb)

    print("Lanczos sharpness (top_hessian_eigen, MSE, float64)\n")
    header = ("| model | n | k | tol | start | time (s) | HVPs | HVP share | λ₁ | rel. err λ₁ "
              "| warm speed-up |")
    print(header + "\n|" + " --- |" * 11, flush=True)
    per_size = []
    for case in sharp:
        r, error = run_in_subprocess(case, args.threads)
        per_size.append((case, r, error))
        if r is None:
            print(f"| {describe(case)} | {case['n']} | {error} |", flush=True)
            continue
        cold: dict[tuple[int, float], dict] = {}
        for row in r["lanczos"]:
            key = (row["k"], row["tol"])
            speed = ""
            if row["start"] == "cold":
                cold[key] = row
            else:
                c = cold[key]
                speed = f"{c['time'] / row['time']:.1f}× ({c['hvps']}→{row['hvps']} HVPs)"
            err = abs(row["eigs"][0] - r["hessian_top"]) / abs(r["hessian_top"])
            print(f"| {describe(case, r['params'])} | {case['n']} | {row['k']} | {row['tol']:.0e} "
                  f"| {row['start']} | {row['time']:.3f} | {row['hvps']} "
                  f"| {100 * row['hvp_share']:.0f}% | {row['eigs'][0]:.6f} | {err:.1e} "
                  f"| {speed} |", flush=True)

    print("\nOne HVP, the full NTK and the Gauss–Newton bound (λ_max(Θ_full)/n)\n")
    print("| model | n | HVP (s) | Lanczos mem (MiB) | full NTK (s) | NTK mem (MiB) | GN eig (s) "
          "| GN mem (MiB) | GN λ | Hessian λ₁ | (H − GN)/H |\n|" + " --- |" * 11)
    for case, r, error in per_size:
        if r is None:
            print(f"| {describe(case)} | {case['n']} | {error} |")
            continue
        rel = (r["hessian_top"] - r["gauss_newton"]) / abs(r["hessian_top"])
        print(f"| {describe(case, r['params'])} | {case['n']} | {r['hvp_s']:.4f} "
              f"| {mib(r['lanczos_mib'])} | {r['ntk_s']:.3f} | {mib(r['ntk_mib'])} "
              f"| {r['gn_s']:.3f} | {mib(r['gn_mib'])} "
              f"| {r['gauss_newton']:.6f} | {r['hessian_top']:.6f} | {rel:+.3f} |", flush=True)

    print(f"\nKernel gradient descent (kgd_residuals + kgd_loss, traced kernel, 10 outputs, "
          f"{len(KGD_STEPS)} steps)\n")
    print("| kernel n | time (s) | peak mem (MiB) | eigh alone (s) | eigh share "
          "| `kgd_loss_curve` (s) | its max rel. difference |\n|" + " --- |" * 7, flush=True)
    for case in descent:
        r, error = run_in_subprocess(case, args.threads)
        if r is None:
            print(f"| {case['n']} | {error} |", flush=True)
            continue
        print(f"| {case['n']} | {r['time']:.3f} | {mib(r['peak_mib'])} | {r['eigh_s']:.3f} "
              f"| {100 * r['eigh_s'] / r['time']:.0f}% | {r['modes_s']:.3f} "
              f"| {r['modes_error']:.1e} |", flush=True)

    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else \
        (platform.processor() or platform.machine())
    threads = f"{args.threads} thread" + ("s" if args.threads > 1 else "")
    print(f"\n{name}, {os.cpu_count()} CPU cores, device {dev}, torch {torch.__version__} "
          f"({threads}), median of {repeats} run(s) per call, weight step {args.perturb:g}; "
          f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
