"""neural-tangents side of the NTK benchmark: the same networks, weights and inputs in JAX.

Runs in a separate environment with JAX and neural-tangents (never a dependency of ntkpipe):

    python -m venv ~/ntvenv
    ~/ntvenv/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" \\
        "ml_dtypes<0.5" frozendict absl-py
    ~/ntvenv/bin/pip install --no-deps neural-tangents==0.6.5

`benchmarks/ntk_bench.py --nt-python ~/ntvenv/bin/python` starts this script as a server
(`--serve`): each stdin line is a JSON request, each answer one JSON line on stdout.
  {"cmd": "load", "npz": path}     read a network exported by ntk_bench.export_network and its
                                   inputs; answer the jit compilation time of each
                                   implementation (1 Jacobian contraction, 3 structured
                                   derivatives; 2, NTK-vector products, where asked) and
                                   the error of each that failed (e.g. out of memory)
  {"cmd": "time", "impl": k}       one timed run of the compiled kernel: seconds, peak MiB
  {"cmd": "kernel", "impl": k, "out": path}   save the (N, N, O, O) kernel for the check
The networks are written with `jax.lax` ops in torch's layouts (NCHW images, OIHW kernels,
explicit symmetric padding) so that the forward pass equals torch's to float rounding; dense
weights are stored (in, out), the layout neural-tangents is fast with.
"""

from __future__ import annotations

import json
import math
import sys
import time
import types

import numpy as np

sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import neural_tangents as nt  # noqa: E402
from jax import lax  # noqa: E402


def _status_kib(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset VmHWM and return the current RSS (KiB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


# ---------------------------------------------------------------------------------------------
# Layers, mirroring ntkpipe.models (gains g_w, g_b as in y = g_w W x + g_b b)
# ---------------------------------------------------------------------------------------------

def dense(p: dict, x: jnp.ndarray) -> jnp.ndarray:
    """y = g_w x W + g_b b with W stored (in, out)."""
    y = p["gw"] * (x @ p["w"])
    return y + p["gb"] * p["b"] if "b" in p else y


def conv(p: dict, x: jnp.ndarray) -> jnp.ndarray:
    """torch.nn.Conv2d (zero padding, groups 1) on NCHW with an OIHW kernel."""
    pad = [(int(q), int(q)) for q in p["padding"]]
    y = p["gw"] * lax.conv_general_dilated(x, p["w"], tuple(int(s) for s in p["stride"]), pad,
                                           dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["gb"] * p["b"][None, :, None, None] if "b" in p else y


def layer_norm(p: dict, x: jnp.ndarray) -> jnp.ndarray:
    """torch.nn.LayerNorm over the last axis (biased variance)."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + p["eps"]) * p["w"] + p["b"]


def attention(p: dict, x: jnp.ndarray, heads: int) -> jnp.ndarray:
    """ntkpipe.models.SelfAttention for one sample (T, width)."""
    t, w = x.shape
    qkv = dense(p["qkv"], x).reshape(t, 3, heads, w // heads).transpose(1, 2, 0, 3)
    q, k, v = qkv[0], qkv[1], qkv[2]
    weights = jax.nn.softmax(q @ k.transpose(0, 2, 1) / math.sqrt(w // heads), axis=-1)
    return dense(p["proj"], (weights @ v).transpose(1, 0, 2).reshape(t, w))


ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh,
               "gelu": lambda z: jax.nn.gelu(z, approximate=False), "linear": lambda z: z}


def apply_fn(spec: list[dict]):
    """apply(params, x) for a layer list exported by ntk_bench.export_network."""
    def apply(params: list[dict], x: jnp.ndarray) -> jnp.ndarray:
        for layer, p in zip(spec, params):
            kind = layer["kind"]
            if kind == "dense":
                x = dense(p, x)
            elif kind == "conv":
                x = conv(p, x)
            elif kind == "act":
                x = ACTIVATIONS[layer["name"]](x)
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif kind == "gap":
                x = x.mean((2, 3))
            elif kind == "tokens":
                x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
            elif kind == "position":
                x = x + p["gw"] * p["w"]
            elif kind == "layernorm":
                x = layer_norm(p, x)
            elif kind == "block":
                heads, act = layer["heads"], ACTIVATIONS[layer["act"]]
                x = x + jax.vmap(lambda s: attention(p["attn"], layer_norm(p["norm1"], s),
                                                      heads))(x)
                h = layer_norm(p["norm2"], x)
                x = x + dense(p["fc2"], act(dense(p["fc1"], h)))
            elif kind == "tokenmean":
                x = x.mean(1)
            else:
                raise ValueError(f"unknown layer kind {kind!r}")
        return x
    return apply


# ---------------------------------------------------------------------------------------------
# Loading an exported network
# ---------------------------------------------------------------------------------------------

def load(path: str) -> tuple[list[dict], list[dict], jnp.ndarray]:
    """(layer spec, params, inputs) from an .npz written by ntk_bench.export_network."""
    data = np.load(path, allow_pickle=False)
    spec = json.loads(str(data["spec"]))
    params = []
    for k, layer in enumerate(spec):
        params.append(_unflatten({key.split("/", 1)[1]: data[key] for key in data.files
                                  if key.startswith(f"{k}/")}, layer))
    return spec, params, jnp.asarray(data["x"])


def _unflatten(flat: dict, layer: dict) -> dict:
    """Nested parameter dict from 'a/b' keys; scalars and non-trainable entries as floats."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        leaf = parts[-1]
        node[leaf] = float(value) if leaf in ("gw", "gb", "eps") else (
            tuple(int(v) for v in value) if leaf in ("stride", "padding") else jnp.asarray(value))
    return out


def _split_static(params: list[dict]) -> tuple[list[dict], list[dict]]:
    """Trainable arrays apart from the static floats and tuples (gains, strides, eps)."""
    def split(node: dict) -> tuple[dict, dict]:
        arrays, static = {}, {}
        for k, v in node.items():
            if isinstance(v, dict):
                arrays[k], static[k] = split(v)
            elif isinstance(v, (float, tuple)):
                static[k] = v
            else:
                arrays[k] = v
        return arrays, static
    pairs = [split(p) for p in params]
    return [a for a, _ in pairs], [s for _, s in pairs]


def _merge(arrays: dict, static: dict) -> dict:
    """Inverse of one _split_static node."""
    out = dict(static)
    for k, v in arrays.items():
        out[k] = _merge(v, static.get(k, {})) if isinstance(v, dict) else v
    return out


class Peer:
    """Compiled neural-tangents kernels of one network."""

    def __init__(self, path: str, impls: list[int]) -> None:
        spec, params, self.x = load(path)
        self.params, static = _split_static(params)
        apply = apply_fn(spec)

        def f(trainable, x):
            return apply([_merge(a, s) for a, s in zip(trainable, static)], x)

        self.fns, self.compile_s, self.failed = {}, {}, {}
        for impl in impls:
            fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
                                             implementation=impl))
            t = time.perf_counter()
            try:
                fn(self.x, None, self.params).block_until_ready()
            except Exception as error:  # e.g. XLA out of memory: report, keep the others
                self.failed[impl] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
                continue
            self.compile_s[impl] = time.perf_counter() - t
            self.fns[impl] = fn

    def time(self, impl: int) -> dict:
        """One timed run."""
        rss = _reset_peak()
        t = time.perf_counter()
        out = self.fns[impl](self.x, None, self.params).block_until_ready()
        seconds = time.perf_counter() - t
        peak = (_status_kib("VmHWM") - rss) / 1024
        del out
        return {"time": seconds, "peak_mib": peak}

    def kernel(self, impl: int, out: str) -> None:
        """Save the kernel (N, N, O, O)."""
        np.save(out, np.asarray(self.fns[impl](self.x, None, self.params)))


def serve() -> None:
    """Answer JSON requests from stdin, one per line."""
    peer = None
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "load":
                peer = None
                peer = Peer(req["npz"], req.get("impls", [1, 3]))
                answer = {"compile_s": peer.compile_s, "failed": peer.failed}
            elif req["cmd"] == "time":
                answer = peer.time(req["impl"])
            elif req["cmd"] == "kernel":
                peer.kernel(req["impl"], req["out"])
                answer = {"ok": True}
            else:
                answer = {"error": f"unknown command {req['cmd']!r}"}
        except Exception as error:  # report to the driver, keep serving
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        print(__doc__)
