"""Benchmark of the empirical NTK engine against neural-tangents and torch.func.

    python benchmarks/ntk_bench.py [--cases mlp,cnn-a,cnn-b,vit] [--rounds 3]
                                   [--nt-python ~/ntvenv/bin/python] [--quick] [--device cuda]

Cases (float32, full (N, N, O, O) kernel, O = 10, x2 = x1, models in eval mode):
  mlp    MLP 64→1024→1024→10 (ReLU, standard parametrisation), N = 256
  cnn-a  conv 3→32, conv 32→32 stride 2, ReLU, global average pool, linear; 3×32×32, N = 256
  cnn-b  the same with 64 / 128 channels, N = 256
  vit    ViT 3×32×32, patches 8×8 (16 tokens), width 64, 2 blocks, 4 heads, MLP ratio 2, N = 64
Implementations: ntkpipe (`empirical_ntk`, "auto"); the torch.func tutorial recipe
(`reference_ntk`: vmap+jacrev, contracted per parameter); torch.func "Jacobian + Gram" (one
(N·O, P) Jacobian, then J Jᵀ); neural-tangents' Jacobian contraction (nt-1) and structured
derivatives (nt-3), run by benchmarks/nt_compare.py in its own environment on the same weights
and inputs (exported here), its kernel checked against ntkpipe's.

The machine is shared, so implementations run in alternated rounds within one process each and
every ratio is formed within a round (median and range over rounds reported). Time: wall clock of
one call, after a warm-up (neural-tangents: after jit compilation, reported apart). Peak memory:
the process's peak RSS during the call minus its RSS before (VmHWM reset; Linux). FLOPs: the
matmul and convolution FLOPs ntkpipe performs, counted by torch.utils.flop_counter — its plan is
the cheapest exact contraction its cost model knows (forward, one batched backward, per-layer
features, upper-triangle Grams). '% of matmul' compares FLOPs / time with a 2048² fp32 matmul
timed in the same round. torch.func variants whose Jacobian would not fit run at a smaller N
(shown), against ntkpipe at that N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ntkpipe import models  # noqa: E402
from ntkpipe.models import Conv2d, Dense, build_model, make_mlp  # noqa: E402
from ntkpipe.ntk import empirical_ntk, reference_ntk  # noqa: E402

MiB = 2 ** 20
CASES = ("mlp", "cnn-a", "cnn-b", "vit")


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

def build_case(name: str, quick: bool = False) -> tuple[nn.Module, torch.Tensor, str, int]:
    """(model, inputs, description, N at which the torch.func variants run)."""
    torch.manual_seed(0)
    n = 64 if quick else 256
    if name == "mlp":
        return (make_mlp(64, 1024, 2, 10).eval(), torch.randn(n, 64),
                "MLP 64→1024→1024→10", 32)
    if name in ("cnn-a", "cnn-b"):
        c1, c2 = (32, 32) if name == "cnn-a" else (64, 128)
        model = nn.Sequential(Conv2d(3, c1, 3, padding=1), nn.ReLU(),
                              Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dense(c2, 10)).eval()
        label = f"CNN ({name[-1]}) {c1}/{c2} channels, 3×32×32"
        return model, torch.randn(n, 3, 32, 32), label, n
    if name == "vit":
        model = build_model("vit", (3, 32, 32), 10, width=64, depth=2, activation="gelu",
                            regime="feature", patch_size=8, heads=4, mlp_ratio=2.0).eval()
        n = 16 if quick else 64
        return model, torch.randn(n, 3, 32, 32), "ViT 16 tokens, width 64, 2 blocks", n
    raise ValueError(f"unknown case {name!r}; choose from {CASES}")


def jacobian_gram(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torch.func variant: the whole (N·O, P) Jacobian once, then its Gram matrix."""
    params = {k: p.detach() for k, p in model.named_parameters()}

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), (None, 0))(params, x)
    j = torch.cat([v.flatten(2) for v in jac.values()], dim=2).flatten(0, 1)
    del jac
    n, o = x.shape[0], j.shape[0] // x.shape[0]
    return (j @ j.T).view(n, o, n, o).permute(0, 2, 1, 3)


def minimal_flops(name: str, model: nn.Module, n: int, o: int = 10,
                  folded: bool = False) -> float:
    """FLOPs of the cheapest exact computation of the case's full symmetric kernel that we know,
    written out by hand (independent of the engine's own FLOP model): the forward pass, the
    cotangents of the O outputs (one direction through a readout segment), the per-layer
    features and their Grams with every symmetric pair — samples i ≤ j, and outputs a ≤ b
    where the block is symmetric in them — counted once. `folded` counts conv 1's cotangents
    as one transposed convolution of the O directions, the form ntkpipe runs."""
    pairs = n * (n + 1) / 2
    rows = n * o
    gram = rows * (rows + 1) / 2                  # pairs of (sample, output) rows
    sym_out = o * (o + 1) / 2
    if name == "mlp":
        d, w = 64, 1024
        forward = 2 * n * (d * w + w * w + w * o)
        backward = 2 * rows * w * w               # through the middle layer, O directions
        last = pairs * 2 * (w + 1)                # δ_ab ⟨h̃2_i, h̃2_j⟩
        middle = pairs * 2 * (w + 1) + pairs * sym_out * 2 * w   # rank-one readout form
        first = pairs * 2 * (d + 1) + gram * 2 * w               # ⟨x̃, x̃⟩ ⊙ G1 G1ᵀ
        return forward + backward + last + middle + first
    if name in ("cnn-a", "cnn-b"):
        c1, c2 = (32, 32) if name == "cnn-a" else (64, 128)
        p1, p2, k1, k2 = 32 * 32, 16 * 16, 3 * 9 + 1, c1 * 9 + 1
        forward = 2 * n * (p1 * c1 * (k1 - 1) + p2 * c2 * (k2 - 1) + c2 * o)
        # Conv 1's output cotangents Σ_c R_ac convT_c(D_ic): the transposed conv 2 of the O
        # directions R_a·D_i, or a per-channel transposed conv of D followed by the mixing by R
        # — exact orders of the same contraction; the cheaper one counts.
        folded_t = 2 * rows * p2 * c2 * (k2 - 1)
        per_channel = 2 * n * c2 * p2 * (k2 - 1) + 2 * rows * c2 * c1 * p1
        backward = folded_t if folded else min(folded_t, per_channel)
        first = 2 * rows * c1 * p1 * k1 + gram * 2 * c1 * k1     # per-layer Jacobian, Gram
        second = 2 * n * c2 * p2 * k2 + pairs * 2 * c2 * k2 + pairs * 2 * c2 * sym_out
        last = pairs * 2 * (c2 + 1)
        return forward + backward + first + second + last
    if name == "vit":  # every layer's features meet over its tokens: the Jacobian Gram
        return gram * 2 * sum(p.numel() for p in model.parameters())
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------

_MATMUL: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}
DEVICE = torch.device("cpu")


def _sync() -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def matmul_gflops(n: int = 2048, repeats: int = 2) -> float:
    """Best fp32 throughput of an n×n by n×n matmul on DEVICE (operands allocated once)."""
    key = (n, str(DEVICE))
    if key not in _MATMUL:
        _MATMUL[key] = tuple(torch.randn(n, n, device=DEVICE) for _ in range(3))
    a, b, out = _MATMUL[key]
    torch.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        _sync()
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        _sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


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


def timed(fn: Callable[[], torch.Tensor]) -> dict:
    """Seconds and peak extra MiB of one call (host RSS on the CPU, allocator peak on CUDA)."""
    _sync()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
    else:
        rss = _reset_peak_rss()
    t = time.perf_counter()
    out = fn()
    _sync()
    seconds = time.perf_counter() - t
    if DEVICE.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(DEVICE) - base) / MiB
    else:
        peak = (_status_kib("VmHWM") - rss) / 1024
    del out
    return {"time": seconds, "peak_mib": peak}


def counted_flops(fn: Callable[[], torch.Tensor]) -> int:
    """Matmul and convolution FLOPs of one call (torch.utils.flop_counter's formulas; its
    FlopCounterMode's module hooks clash with torch.func's vjp, so a bare dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            formula = flop_registry.get(packet)
            name = packet.__name__
            if formula is None and name.endswith("_"):  # addmm_, baddbmm_: as out-of-place
                formula = flop_registry.get(getattr(torch.ops.aten, name[:-1], None))
            if formula is not None:
                Count.flops += formula(*args, **kwargs, out_val=out)
            return out

    with Count():
        fn()
    return Count.flops


# ---------------------------------------------------------------------------------------------
# neural-tangents peer
# ---------------------------------------------------------------------------------------------

def export_network(model: nn.Module, x: torch.Tensor, path: str) -> None:
    """Write the layers, weights and inputs for benchmarks/nt_compare.py."""
    spec, arrays = [], {}
    for k, layer in enumerate(model):
        entry, params = _export_layer(layer)
        spec.append(entry)
        arrays.update({f"{k}/{key}": value for key, value in params.items()})
    np.savez(path, spec=np.array(json.dumps(spec)), x=x.numpy(), **arrays)


def _export_layer(m: nn.Module) -> tuple[dict, dict]:
    """(layer entry, flat parameter arrays) of one module."""
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().numpy()

    def dense(d: nn.Linear | nn.Conv2d) -> dict:
        w = d.weight.T if d.weight.dim() == 2 else d.weight  # a conv's stays (O, I, kh, kw)
        out = {"w": arr(w), "gw": np.float64(getattr(d, "weight_gain", 1.0))}
        if d.bias is not None:
            out.update(b=arr(d.bias), gb=np.float64(getattr(d, "bias_gain", 1.0)))
        return out

    def norm(ln: nn.LayerNorm) -> dict:
        return {"w": arr(ln.weight), "b": arr(ln.bias), "eps": np.float64(ln.eps)}

    def prefixed(prefix: str, params: dict) -> dict:
        return {f"{prefix}/{k}": v for k, v in params.items()}

    if isinstance(m, nn.Linear):
        return {"kind": "dense"}, dense(m)
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or \
                isinstance(m.padding, str):
            raise ValueError("the peer reproduces zero-padded, undilated, ungrouped convs only")
        out = dense(m)
        out.update(stride=np.array(m.stride), padding=np.array(m.padding))
        return {"kind": "conv"}, out
    acts = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.GELU: "gelu", nn.Identity: "linear"}
    if type(m) in acts:
        return {"kind": "act", "name": acts[type(m)]}, {}
    simple = {nn.Flatten: "flatten", nn.AdaptiveAvgPool2d: "gap", models.PatchTokens: "tokens",
              models.TokenMean: "tokenmean"}
    if type(m) in simple:
        return {"kind": simple[type(m)]}, {}
    if isinstance(m, models.PositionEmbedding):
        return {"kind": "position"}, {"w": arr(m.weight), "gw": np.float64(m.weight_gain)}
    if isinstance(m, nn.LayerNorm):
        return {"kind": "layernorm"}, norm(m)
    if isinstance(m, models.TransformerBlock):
        act = acts.get(type(m.mlp[1]), "gelu")
        params = {**prefixed("norm1", norm(m.norm1)), **prefixed("norm2", norm(m.norm2)),
                  **prefixed("attn/qkv", dense(m.attention.qkv)),
                  **prefixed("attn/proj", dense(m.attention.proj)),
                  **prefixed("fc1", dense(m.mlp[0])), **prefixed("fc2", dense(m.mlp[2]))}
        return {"kind": "block", "heads": m.attention.heads, "act": act}, params
    raise ValueError(f"no neural-tangents export for {type(m).__name__}")


class Peer:
    """benchmarks/nt_compare.py running in the neural-tangents environment."""

    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, str(ROOT / "benchmarks" / "nt_compare.py"),
                                      "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "JAX_PLATFORMS": "cpu"})

    def ask(self, **request: object) -> dict:
        """Send one request, return its answer (raises on a reported error)."""
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"neural-tangents peer: {answer['error']}")
        return answer

    def close(self) -> None:
        """Stop the peer."""
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# One case, alternated rounds
# ---------------------------------------------------------------------------------------------

def run_case(name: str, rounds: int, peer: Peer | None, quick: bool, nt_impls: list[int]
             ) -> dict:
    """Time every implementation of one case in alternated rounds."""
    model, x, label, n_func = build_case(name, quick)
    model, x = model.to(DEVICE), x.to(DEVICE)
    n = x.shape[0]
    xf = x[:n_func]
    ours = lambda: empirical_ntk(model, x)  # noqa: E731
    ours_small = lambda: empirical_ntk(model, xf)  # noqa: E731
    contenders: dict[str, Callable[[], object]] = {
        "torch.func recipe": lambda: reference_ntk(model, xf),
        "torch.func Jacobian+Gram": lambda: jacobian_gram(model, xf)}
    info = {"label": label, "n": n, "n_func": n_func, "compile_s": {}, "check": None}
    ours_small()  # warm-up
    if peer is not None:
        with tempfile.TemporaryDirectory() as tmp:
            export_network(model.cpu(), x.cpu(), f"{tmp}/net.npz")
            model.to(DEVICE)
            loaded = peer.ask(cmd="load", npz=f"{tmp}/net.npz", impls=nt_impls)
            info["compile_s"], info["nt_failed"] = loaded["compile_s"], loaded["failed"]
            nt_impls = [i for i in nt_impls if str(i) in info["compile_s"]]
            peer.ask(cmd="kernel", impl=nt_impls[-1], out=f"{tmp}/k.npy")
            theirs = torch.from_numpy(np.load(f"{tmp}/k.npy")).double()
            mine = ours().double().cpu()
            info["check"] = ((mine - theirs).norm() / mine.norm()).item()
    runs: dict[str, list[dict]] = {}
    for _ in range(rounds):
        rate = matmul_gflops()
        runs.setdefault("ntkpipe", []).append({**timed(ours), "matmul": rate})
        if n_func != n:
            runs.setdefault(f"ntkpipe (N={n_func})", []).append(timed(ours_small))
        for impl in nt_impls if peer is not None else []:
            runs.setdefault(f"nt-{impl}", []).append(peer.ask(cmd="time", impl=impl))
        for label_, fn in contenders.items():
            runs.setdefault(label_, []).append(timed(fn))
    info["flops"] = counted_flops(ours)
    info["minimal"] = minimal_flops(name, model, n)
    info["minimal_folded"] = minimal_flops(name, model, n, folded=True)
    info["runs"] = runs
    return info


def rows(info: dict) -> list[str]:
    """Markdown rows of one case."""
    runs, n, n_func = info["runs"], info["n"], info["n_func"]
    ours = [r["time"] for r in runs["ntkpipe"]]
    small = [r["time"] for r in runs.get(f"ntkpipe (N={n_func})", runs["ntkpipe"])]
    flops = info["flops"]
    pct = [100 * flops / r["time"] / 1e9 / r["matmul"] for r in runs["ntkpipe"]]
    out = []
    for impl, rs in runs.items():
        times = [r["time"] for r in rs]
        size = n_func if impl.startswith("torch.func") or impl.startswith("ntkpipe (") else n
        ref = small if size == n_func and impl != "ntkpipe" else ours
        if impl == "ntkpipe":
            minimal = info["minimal"]
            of_min = [100 * minimal / r["time"] / 1e9 / r["matmul"] for r in runs["ntkpipe"]]
            folded = info["minimal_folded"]
            also = "" if folded <= minimal * 1.0001 else \
                f", {folded / 1e9:.1f} with conv 1's cotangents as one transposed conv"
            extra = f"performs {flops / 1e9:.1f} GFLOP (minimal {minimal / 1e9:.1f}{also}); " \
                    f"minimal work at {min(of_min):.0f}–{max(of_min):.0f}%, performed at " \
                    f"{min(pct):.0f}–{max(pct):.0f}% of matmul " \
                    f"({min(r['matmul'] for r in rs):.0f}–{max(r['matmul'] for r in rs):.0f} " \
                    "GFLOP/s)"
            ratio = ""
        else:
            ratios = [t / o for t, o in zip(times, ref)]
            ratio = f"{statistics.median(ratios):.2f}× [{min(ratios):.2f}–{max(ratios):.2f}]"
            extra = ""
            if impl.startswith("nt-"):
                key = impl[3:]
                extra = f"compile {info['compile_s'].get(key, float('nan')):.1f} s"
        peak = max(r["peak_mib"] for r in rs)
        out.append(f"| {info['label']} | {size} | {impl} | {min(times):.3f} | "
                   f"{statistics.median(times):.3f} | {peak:.0f} | {ratio} | {extra} |")
    for impl, error in info.get("nt_failed", {}).items():
        out.append(f"| {info['label']} | {n} | nt-{impl} | failed | | | | {error[:90]} |")
    if info["check"] is not None:
        out.append(f"| {info['label']} | {n} | kernel check | | | | | neural-tangents vs "
                   f"ntkpipe: rel. diff {info['check']:.1e} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="N = 64 (ViT 16), one round")
    parser.add_argument("--nt-python", default=os.environ.get("NT_PYTHON"),
                        help="python of an environment with neural-tangents (optional)")
    parser.add_argument("--nt-impls", default="1,3", help="neural-tangents implementations")
    parser.add_argument("--device", default="cpu",
                        help="torch device for ntkpipe and torch.func (cuda: TF32 off; the "
                             "neural-tangents peer stays on the CPU)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    peer = Peer(args.nt_python) if args.nt_python else None
    nt_impls = [int(k) for k in args.nt_impls.split(",")]
    header = ("| case | N | implementation | best (s) | median (s) | peak MiB | slower than "
              "ntkpipe (median [range] of rounds) | notes |")
    lines = [header, "|" + " --- |" * 8]
    print(header, flush=True)
    try:
        for name in args.cases.split(","):
            for row in rows(run_case(name, rounds, peer, args.quick, nt_impls)):
                lines.append(row)
                print(row, flush=True)
    finally:
        if peer is not None:
            peer.close()
    if DEVICE.type == "cuda":
        print(f"\n{torch.cuda.get_device_name(DEVICE)}, TF32 off")
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), float32, "
          f"{rounds} round(s)")


if __name__ == "__main__":
    main()
