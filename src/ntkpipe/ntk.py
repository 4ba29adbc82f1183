"""The empirical Neural Tangent Kernel, exact, without forming the network's Jacobian.

    Θ[(i,a),(j,b)] = ∂f_a(x1_i)/∂θ · ∂f_b(x2_j)/∂θ        (Jacot et al. 2018, eq. 4)

The kernel is a sum over parametrised modules. One forward pass per chunk of samples and one
backward pass carrying every output direction at once (`ntk_backward`) give each module's input
and output cotangents; `ntk_layers` turns them into features and contracts them in the form
its FLOP model finds cheapest: over position pairs (the unfolded-patch form), through the
layer's own Jacobian, or — when the layer reaches a linear readout through per-channel maps
only — through the readout (Novak et al. 2022, arXiv:2206.08720, structured derivatives); a
last Linear layer, whose output cotangents are the directions themselves, contributes their
Gram times its inputs' (the output form).

Implementations (`implementation=`): "auto" (per-layer choice by FLOP count), "factorised"
(the position-pair form for every Linear/Conv2d), "jacobian" (explicit per-layer Jacobians),
"structured" (the readout form wherever it applies, else as "auto"), "reference"
(`torch.func` vmap+jacrev over all parameters, then contraction, chunked over samples).

When x2 is x1 only the upper block triangle of the kernel is computed (diagonal blocks as row
panels from the diagonal on) and mirrored; the layers accumulate in place into each tile (the
first writes its product there), a view of the result: the "full" kernel is computed as the
(N1·O, N2·O) block matrix of the Gram products and returned as its (N1, N2, O, O) view.
`max_memory` bounds the peak extra memory (the result excluded): samples are chunked to fit,
or the call is refused with the size one block needs.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from ntkpipe.ntk_backward import Chain, backward, forward_tape, plan_chain
from ntkpipe.ntk_layers import (SLAB_ELEMS, LayerSpec, add_block, build_elems, choose_form,
                                feature_elems, layer_features, mix_columns, output_features,
                                pair_elems, rank_one, readout_features)

MODES = ("full", "trace", "per_output", "sum_logits")
IMPLEMENTATIONS = ("auto", "factorised", "jacobian", "structured", "reference")
DEFAULT_MEMORY_FRACTION = 0.5
# Rows of a diagonal panel (see _tile_pairs): fewer waste less of the triangle, more keep the
# products wide. Gram rows are samples × outputs in the "full" and "sum_logits" modes, samples
# in the others (measured on the MLP and CNN (a) of benchmarks/ntk_bench.py).
PANEL_ROWS = 320
PANEL_SAMPLES = 96
# A diagonal block in k panels computes (k+1)/k of its triangle: small blocks (the ViT's 640
# rows) get at least this many panels, as long as a panel keeps half its default rows.
MIN_PANELS = 4
# Safety factor on the modelled transients (the allocator rounds, kernels keep workspaces).
TRANSIENT_MARGIN = 1.25
# On the CPU a chunk's transients are kept near this size: the cotangents of a chunk then stay
# in cache between the backward steps and the feature products (measured on CNN (a) of
# benchmarks/ntk_bench.py: 0.47 s at 16 samples per chunk against 0.65 s at 256 on a 2-core
# EPYC; 0.23 s at 10 against 0.25 s at 15 on a 2-core Xeon).
CACHE_BYTES = 32 * 2 ** 20
MIN_CHUNK = 8
# Per-chunk overhead of a feature build, in sample-equivalents (Python dispatch, small kernels).
CHUNK_OVERHEAD = 4


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def empirical_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *, mode: str = "full",
                  per_layer: bool = False, dtype: torch.dtype | None = None,
                  max_memory: int | None = None, implementation: str = "auto",
                  strict: bool = False, allow_tf32: bool = False) -> Tensor:
    """Empirical NTK of `model` between `x1` (N1, ...) and `x2` (N2, ...; None means x1).

    The model maps (N, ...) to outputs (N, O). Output shapes, with L = len(layer_names(model))
    prepended when `per_layer=True` (slices sum to the total kernel):
      - "full":       (N1, N2, O, O), Θ[i, j, a, b] = ∂f_a(x1_i)/∂θ · ∂f_b(x2_j)/∂θ, a view
                      of the (N1·O, N2·O) block matrix it is computed in:
                      `.transpose(-3, -2).reshape(N1 * O, N2 * O)` costs no copy;
      - "trace":      (N1, N2), (1/O) Σ_a Θ[i, j, a, a] (neural-tangents' `trace_axes=(-1,)`);
      - "per_output": (O, N1, N2), Θ[i, j, c, c] for each output c;
      - "sum_logits": (N1, N2), the kernel of Σ_a f_a, i.e. Σ_{a,b} Θ[i, j, a, b].
    Computed on the model's device in `dtype` (default: the parameters' dtype), with TF32 off
    unless `allow_tf32`. `max_memory` caps the extra memory in bytes (the result excluded) for
    every implementation; by default half of the available memory. `strict=True` refuses
    parametrised modules without a factorised rule. The caller's model is left as it was.
    """
    _check_options(mode, implementation, max_memory)
    with _computation_context(model, x1, x2, dtype, allow_tf32) as (net, x1, x2, symmetric,
                                                                     fixed):
        output_dim = _check_inputs(net, x1, x2)
        budget = max_memory if max_memory is not None else _default_budget(x1.device)
        if implementation == "reference":
            return _reference(net, x1, None if symmetric else x2, mode, per_layer,
                              budget - fixed)
        plan = _plan(net, x1, x2, symmetric, output_dim, mode, implementation, strict)
        return _engine(plan, x1, x2, symmetric, mode, per_layer, budget - fixed)


def reference_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                  mode: str = "full", per_layer: bool = False,
                  dtype: torch.dtype | None = None) -> Tensor:
    """The torch.func recipe (vmap + jacrev over all parameters, then contract): slow, obviously
    correct; same output contract as `empirical_ntk`."""
    _check_options(mode, "reference", None)
    with _computation_context(model, x1, x2, dtype, False) as (net, x1, x2, symmetric, _):
        _check_inputs(net, x1, x2)
        return _reference(net, x1, None if symmetric else x2, mode, per_layer, None)


def kernel_plan(model: nn.Module, x: Tensor, *, mode: str = "trace",
                implementation: str = "auto") -> list[dict[str, str]]:
    """How `empirical_ntk(model, x, ...)` computes each parametrised module's part: one
    {layer, module, rule, form, cotangent} per layer in `layer_names` order. rule is the exact
    factorised rule (linear, conv, affine, additive) or "fallback" (the module's own Jacobian by
    autograd, exact for any module); cotangent is "chain" (propagated step by step) or
    "autograd" (through a module the chain treats as one generic step, e.g. a residual block)."""
    _check_options(mode, implementation, None)
    if implementation == "reference":
        return [{"layer": name, "module": type(m).__name__, "rule": "reference",
                 "form": "vmap+jacrev", "cotangent": "autograd"}
                for name, m in _parametrised_modules(model)]
    with _computation_context(model, x, None, None, False) as (net, x1, x2, symmetric, _):
        output_dim = _check_inputs(net, x1, x2)
        plan = _plan(net, x1, x2, symmetric, output_dim, mode, implementation, False)
    generic = {s.name for st in plan.chain.steps if st.role == "generic" for s in st.specs}
    return [{"layer": s.name, "module": type(s.module).__name__,
             "rule": "fallback" if s.kind == "other" else s.kind, "form": s.form,
             "cotangent": "autograd" if s.name in generic else "chain"}
            for s in plan.chain.specs]


def layer_names(model: nn.Module) -> list[str]:
    """Names of the parametrised modules that index the `layer` dimension of per-layer kernels."""
    return [name for name, _ in _parametrised_modules(model)]


# ---------------------------------------------------------------------------------------------
# Checks and the computation context
# ---------------------------------------------------------------------------------------------

def _check_options(mode: str, implementation: str, max_memory: int | None) -> None:
    """Reject unknown modes, implementations and nonsensical budgets."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if max_memory is not None and (not isinstance(max_memory, int) or max_memory <= 0):
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory!r}")


def _parametrised_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules owning (directly) at least one parameter with requires_grad, in named_modules order."""
    return [(name, m) for name, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))]


@contextlib.contextmanager
def _computation_context(model: nn.Module, x1: Tensor, x2: Tensor | None,
                         dtype: torch.dtype | None, allow_tf32: bool
                         ) -> Iterator[tuple[nn.Module, Tensor, Tensor, bool, int]]:
    """Model (a cast copy if needed) and inputs on the model's device, and the bytes those
    copies take; TF32 flags and the model's buffers restored on exit."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, x in (("x1", x1), ("x2", x2)):
        if x is not None and not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    symmetric = x2 is None or x2 is x1
    first = next(iter(model.parameters()), None)
    if first is None or not any(p.requires_grad for p in model.parameters()):
        raise ValueError("model has no parameters with requires_grad=True: its NTK is zero")
    device, model_dtype = first.device, first.dtype
    dtype = dtype or model_dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    net = model if dtype == model_dtype else copy.deepcopy(model).to(dtype)
    fixed = 0 if net is model else sum(t.numel() * t.element_size()
                                       for t in (*net.parameters(), *net.buffers()))
    inputs = [x1] if symmetric else [x1, x2]
    x1 = _cast_input(x1, device, dtype)
    x2 = x1 if symmetric else _cast_input(x2, device, dtype)
    fixed += sum(c.numel() * c.element_size() for c, x in zip((x1, x2), inputs) if c is not x)
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield net, x1, x2, symmetric, fixed
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        with torch.no_grad():  # eval-mode forwards never touch buffers; train-mode BN would
            for k, b in net.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])


def _cast_input(x: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Input on the model's device; floating inputs in the computation dtype."""
    x = x.detach().to(device)
    return x.to(dtype) if x.is_floating_point() else x


def _check_inputs(net: nn.Module, x1: Tensor, x2: Tensor) -> int:
    """Check the inputs against each other and the model; return the output dimension O."""
    if x1.dim() < 1 or x1.shape[0] == 0 or x2.dim() < 1 or x2.shape[0] == 0:
        raise ValueError(f"x1 and x2 must be non-empty batches, got shapes {tuple(x1.shape)} "
                         f"and {tuple(x2.shape)}")
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(f"x1 and x2 have different per-sample shapes: {tuple(x1.shape[1:])} vs "
                         f"{tuple(x2.shape[1:])}")
    try:
        with torch.no_grad():
            out = net(x1[:1])
    except Exception as error:  # any failure here means the input does not fit the model
        raise ValueError(f"inputs of per-sample shape {tuple(x1.shape[1:])} do not match the "
                         f"model's input: {error}") from error
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model's output must be 2-D (N, O), got {shape}")
    return out.shape[1]


# ---------------------------------------------------------------------------------------------
# Reference: the torch.func recipe, chunked over samples to keep the budget
# ---------------------------------------------------------------------------------------------

def _reference(net: nn.Module, x1: Tensor, x2: Tensor | None, mode: str, per_layer: bool,
               budget: int | None) -> Tensor:
    """vmap(jacrev) Jacobians of every parameter, contracted per module."""
    params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}
    names = layer_names(net)
    owner = {k: names.index(k.rsplit(".", 1)[0] if "." in k else "") for k in params}

    def f_single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    def jacobians(x: Tensor) -> dict[str, Tensor]:
        return vmap(jacrev(f_single), (None, 0))(params, x)

    xb = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    o = net(x1[:1]).shape[1]
    chunk = _reference_chunk(net, x1, params, o, max(n1, n2), budget)
    shape = _result_shape(mode, n1, n2, o)
    result = torch.zeros(((len(names),) if per_layer else ()) + shape, dtype=x1.dtype,
                         device=x1.device)
    for r1 in _ranges(n1, chunk):
        j1 = jacobians(x1[r1.start:r1.stop])
        for r2 in _ranges(n2, chunk):
            j2 = j1 if x2 is None and r1 == r2 else jacobians(xb[r2.start:r2.stop])
            for key in params:
                part = torch.einsum("iaf,jbf->ijab", j1[key].flatten(2), j2[key].flatten(2))
                target = result[owner[key]] if per_layer else result
                _index(target, mode, r1, r2).add_(_reduce_full(part, mode))
            del j2
    return result


def _reference_chunk(net: nn.Module, x: Tensor, params: dict[str, Tensor], o: int, n: int,
                     budget: int | None) -> int:
    """Samples per chunk of the reference: two chunks' Jacobians (with vmap's copies and the
    batched activations) and a block must fit the budget."""
    if budget is None:
        return n
    n_params = sum(p.numel() for p in params.values())
    act = [x[0].numel()]
    handles = [m.register_forward_hook(lambda m, a, out: act.append(out[0].numel()))
               for m in net.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in handles:
            h.remove()
    per_sample = 3 * o * n_params + 4 * o * sum(act)
    largest = max(c for c in range(1, n + 1) if c == 1 or
                  x.element_size() * (2 * c * per_sample + 3 * c * c * o * o) <= budget)
    need = x.element_size() * (2 * per_sample + 3 * o * o)
    if need > budget:
        raise ValueError(f"max_memory={budget} bytes is too small for one block of the reference "
                         f"implementation: it needs about {need} bytes (a {o}×{n_params} "
                         "Jacobian per sample)")
    return largest


def _reduce_full(full: Tensor, mode: str) -> Tensor:
    """From (..., N1, N2, O, O) to the shape of `mode`."""
    if mode == "full":
        return full
    if mode == "sum_logits":
        return full.sum(dim=(-2, -1))
    diag = full.diagonal(dim1=-2, dim2=-1)  # (..., N1, N2, O)
    if mode == "trace":
        return diag.mean(-1)
    return diag.movedim(-1, -3)


def _index(result: Tensor, mode: str, r1: range, r2: range) -> Tensor:
    """The block of rows r1 and columns r2 of a result of `mode`."""
    i, j = slice(r1.start, r1.stop), slice(r2.start, r2.stop)
    return result[:, i, j] if mode == "per_output" else result[i, j]


def _result_shape(mode: str, n1: int, n2: int, o: int) -> tuple[int, ...]:
    """The public shape of a kernel of `mode`."""
    return {"full": (n1, n2, o, o), "per_output": (o, n1, n2)}.get(mode, (n1, n2))


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    """The chain, its layers with their forms, the backpropagated directions, the layer names."""

    chain: Chain
    cot: Tensor           # (O', O): one-hot rows, or one all-ones row for "sum_logits"
    names: list[str]      # layer_names order; per-layer results index by it
    output_dim: int


def _plan(net: nn.Module, x1: Tensor, x2: Tensor, symmetric: bool, output_dim: int, mode: str,
          implementation: str, strict: bool) -> _Plan:
    """Steps, layer specs and each layer's form."""
    modules = _parametrised_modules(net)
    owners: dict[int, str] = {}
    for name, module in modules:
        for p in module.parameters(recurse=False):
            if owners.setdefault(id(p), name) != name:
                raise ValueError(f"a parameter is shared by modules {owners[id(p)]!r} and "
                                 f"{name!r}: use implementation='reference'")
    chain = plan_chain(net, x1, modules)
    cot = (torch.ones(1, output_dim) if mode == "sum_logits" else
           torch.eye(output_dim)).to(dtype=x1.dtype, device=x1.device)
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = n1 if symmetric else n1 + n2
    pairs = n1 * (n1 + 1) / 2 if symmetric else n1 * n2
    for spec in chain.specs:
        if spec.kind == "other" and strict:
            raise TypeError(f"module {spec.name!r} of type {type(spec.module).__name__} has "
                            "parameters but no factorised NTK rule (strict=True); supported: "
                            "nn.Linear, nn.Conv2d, nn.LayerNorm, eval-mode BatchNorm, "
                            "ntkpipe.models.Dense/Conv2d/PositionEmbedding")
        spec.form = choose_form(spec, implementation, cot.shape[0], mode, rows, pairs)
    return _Plan(chain, cot, [name for name, _ in modules], output_dim)


# ---------------------------------------------------------------------------------------------
# Features of a chunk of samples
# ---------------------------------------------------------------------------------------------

def _chunk_features(plan: _Plan, x: Tensor, mode: str) -> dict[str, dict[str, Tensor]]:
    """Every reached layer's features for the samples `x`."""
    tape = forward_tape(plan.chain, x)
    out: dict[str, dict[str, Tensor]] = {}
    for spec, inp, cot in backward(plan.chain, tape, x.shape[0], plan.cot):
        with torch.no_grad():
            if cot[0] == "D":
                out[spec.name] = readout_features(spec, inp, cot[1], cot[2], mode)
            elif cot[0] == "C" and spec.form == "output":
                out[spec.name] = output_features(spec, inp, cot[2])
            else:
                out[spec.name] = layer_features(spec, inp, cot[1], mode)
        del inp, cot  # the next step's cotangent must not meet this one
    return out


def _all_features(plan: _Plan, x: Tensor, chunk: int, mode: str
                  ) -> dict[str, dict[str, Tensor]]:
    """Features of all samples of `x`, built chunk by chunk into preallocated buffers."""
    n = x.shape[0]
    if chunk >= n:
        return _chunk_features(plan, x, mode)
    store: dict[str, dict[str, Tensor]] = {}
    for r in _ranges(n, chunk):
        feats = _chunk_features(plan, x[r.start:r.stop], mode)
        for name, f in feats.items():
            buffers = store.setdefault(name, {})
            for key, t in f.items():
                if key == "M":
                    buffers[key] = t
                    continue
                dim = 1 if key == "H" else 0
                if key not in buffers:
                    shape = list(t.shape)
                    shape[dim] = n
                    buffers[key] = t.new_empty(shape)
                buffers[key].narrow(dim, r.start, len(r)).copy_(t)
        del feats
    return store


# ---------------------------------------------------------------------------------------------
# Chunked, tiled driver
# ---------------------------------------------------------------------------------------------

def _engine(plan: _Plan, x1: Tensor, x2: Tensor, symmetric: bool, mode: str, per_layer: bool,
            budget: int) -> Tensor:
    """Loop over chunk pairs (only i ≤ j when symmetric) and their tiles, summing layers."""
    n1, n2, o = x1.shape[0], x2.shape[0], plan.cot.shape[0]
    sizes = _chunk_plan(plan, n1, 0 if symmetric else n2, mode, x1.element_size(), budget,
                        x1.device.type)
    n_layers = len(plan.names) if per_layer else 1
    # Tiles are views of the result in its block layout; a per-layer result keeps zeros for
    # layers never reached.
    blocks = (torch.zeros if per_layer else torch.empty)(
        (n_layers,) + _block_shape(mode, n1, n2, o), dtype=x1.dtype, device=x1.device)
    rows = _ranges(n1, sizes.chunk)
    cols = rows if symmetric else _ranges(n2, sizes.chunk)
    if sizes.cache_all:
        f1 = _all_features(plan, x1, sizes.chunk, mode)
        f2 = f1 if symmetric else _all_features(plan, x2, sizes.chunk, mode)
        _chunk_pair(plan, f1, f2, range(n1), range(n2), symmetric, mode, per_layer, sizes,
                    blocks)
    else:
        for bi, r1 in enumerate(rows):
            f1 = _chunk_features(plan, x1[r1.start:r1.stop], mode)
            for bj, r2 in enumerate(cols):
                if symmetric and bj < bi:
                    continue
                f2 = f1 if symmetric and bi == bj else \
                    _chunk_features(plan, (x1 if symmetric else x2)[r2.start:r2.stop], mode)
                _chunk_pair(plan, f1, f2, r1, r2, symmetric, mode, per_layer, sizes, blocks)
                del f2
            del f1
    if mode == "trace":
        blocks.div_(plan.output_dim)
    result = _public(blocks, mode)
    return result if per_layer else result[0]


def _chunk_pair(plan: _Plan, f1: dict, f2: dict, r1: range, r2: range, symmetric: bool,
                mode: str, per_layer: bool, sizes: "_Sizes", blocks: Tensor) -> None:
    """Every tile between the samples r1 and r2 (upper triangle only when they coincide)."""
    o = plan.cot.shape[0]
    specs = [s for s in plan.chain.specs if s.name in f1 and s.name in f2]
    panel = math.ceil(PANEL_ROWS / o) if mode in ("full", "sum_logits") else PANEL_SAMPLES
    block = min(len(r1), sizes.tile)
    panel = min(panel, max(math.ceil(panel / 2), math.ceil(block / MIN_PANELS)))
    for s1, s2 in _tile_pairs(len(r1), len(r2), symmetric and r1 == r2, panel, sizes.tile):
        i = range(r1.start + s1.start, r1.start + s1.stop)
        j = range(r2.start + s2.start, r2.start + s2.stop)
        for layer, group in _layer_groups(plan, specs, per_layer):
            tile = _tile(blocks[layer], mode, i, j)
            if not group:
                tile.zero_()
            with torch.no_grad():
                # a layer whose products can land in the tile first; output layers add least
                for k, spec in enumerate(sorted(group, key=lambda s: "Y" in f1[s.name])):
                    add_block(spec, f1[spec.name], f2[spec.name], s1, s2, mode, tile,
                              overwrite=k == 0)
            if symmetric:
                _mirror(blocks[layer], mode, i, j)


def _layer_groups(plan: _Plan, specs: list[LayerSpec], per_layer: bool
                  ) -> list[tuple[int, list[LayerSpec]]]:
    """(result slot, layers summed into it): each layer alone, or all together."""
    if per_layer:
        return [(plan.names.index(s.name), [s]) for s in specs]
    return [(0, specs)]


def _block_shape(mode: str, n1: int, n2: int, o: int) -> tuple[int, ...]:
    """Layout the tiles are written in: (N1, O', N2, O') — the (N1·O', N2·O') block matrix of
    the Gram products —, (O', N1, N2) or (N1, N2)."""
    return (n1, o, n2, o) if mode in ("full", "sum_logits") else _result_shape(mode, n1, n2, o)


def _public(blocks: Tensor, mode: str) -> Tensor:
    """The result (L, ...) of `mode` as a view of its block layout (L, ...)."""
    if mode == "full":
        return blocks.permute(0, 1, 3, 2, 4)
    return blocks[:, :, 0, :, 0] if mode == "sum_logits" else blocks


def _tile(blocks: Tensor, mode: str, i: range, j: range) -> Tensor:
    """The view of the block layout holding samples i against samples j."""
    if mode in ("full", "sum_logits"):
        return blocks[i.start:i.stop, :, j.start:j.stop]
    return _index(blocks, mode, i, j)


def _mirror(blocks: Tensor, mode: str, i: range, j: range) -> None:
    """Complete the lower triangle from the tile i × j of a symmetric kernel: its transpose
    goes below the diagonal; a tile starting on the diagonal (a panel) is first made exactly
    symmetric on its square part, averaged with its transpose."""
    if j.start == i.start:
        square = _tile(blocks, mode, i, i)
        square.copy_(square + _transposed(square, mode)).mul_(0.5)
        j = range(j.start + len(i), j.stop)
        if not len(j):
            return
    _tile(blocks, mode, j, i).copy_(_transposed(_tile(blocks, mode, i, j), mode))


def _transposed(tile: Tensor, mode: str) -> Tensor:
    """The tile j × i that mirrors the tile i × j (the outputs' runs stay contiguous)."""
    if mode in ("full", "sum_logits"):
        return tile.permute(2, 3, 0, 1)
    return tile.transpose(-1, -2)


def _tile_pairs(n1: int, n2: int, same: bool, rows: int, limit: int
                ) -> list[tuple[slice, slice]]:
    """Local sample tiles of at most `limit` samples covering a chunk pair; when `same`, the
    upper block triangle only, each diagonal block as panels of at most `rows` rows that run
    from the diagonal to the block's end (wide products, each row block scaled once)."""
    blocks1 = _slices(n1, limit)
    if not same:
        return [(a, b) for a in blocks1 for b in _slices(n2, limit)]
    tiles: list[tuple[slice, slice]] = []
    for k, a in enumerate(blocks1):
        for start in range(a.start, a.stop, rows):
            tiles.append((slice(start, min(start + rows, a.stop)), slice(start, a.stop)))
        tiles += [(a, b) for b in blocks1[k + 1:]]
    return tiles


def _slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def _ranges(n: int, chunk: int, start: int = 0) -> list[range]:
    """Consecutive ranges of at most `chunk` items covering range(start, start + n)."""
    return [range(s, min(s + chunk, start + n)) for s in range(start, start + n, chunk)]


# ---------------------------------------------------------------------------------------------
# Memory budget
# ---------------------------------------------------------------------------------------------

def _default_budget(device: torch.device) -> int:
    """Half of the memory available now on `device`."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(DEFAULT_MEMORY_FRACTION * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(DEFAULT_MEMORY_FRACTION * int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 4 * 2 ** 30


@dataclass
class _Sizes:
    """Samples per chunk and per tile, and whether every chunk's features stay in memory."""

    chunk: int
    tile: int
    cache_all: bool


def _per_sample_elems(plan: _Plan, mode: str) -> tuple[int, int, int]:
    """(stored features, transients while a chunk's features are built — the forward tape plus
    the largest step of the backward —, tile temporaries per sample pair), in elements."""
    chain, o = plan.chain, plan.cot.shape[0]
    specs = chain.specs
    feat = sum(feature_elems(s, s.form, o) for s in specs)
    peak = max((_backward_elems(chain, k, o) for k in range(chain.first_param,
                                                            len(chain.steps))), default=0)
    transient = int(TRANSIENT_MARGIN * (chain.act_elems + peak)) + feat
    dirs = o * o if mode in ("full", "sum_logits") else o if mode == "per_output" else 1
    pair = 3 * dirs + max((pair_elems(s, s.form, o, mode) for s in specs), default=0)
    return feat, transient, pair


def _backward_elems(chain: Chain, k: int, o: int) -> int:
    """Per-sample elements alive while the backward crosses step k: its output and input
    cotangents (one direction inside the readout segment, O' elsewhere), the copies its
    vector-Jacobian product makes, and the features of its layers being built."""
    step, seg = chain.steps[k], chain.segment
    inside = seg is not None and seg[0] <= k < seg[1]
    out_dirs = 1 if inside else o
    in_dirs = 1 if seg is not None and seg[0] < k <= seg[1] else o
    out_c = out_dirs * math.prod(step.out_shape)
    in_c = in_dirs * math.prod(step.in_shape) if k > chain.first_param else 0
    # activations and pass-through steps work in place
    work = max(out_c, in_c) if step.role in ("act", "pass") else out_c + in_c
    if step.role == "generic":
        work += 3 * step.kept + 2 * o * (step.kept + sum(s.out_numel for s in step.specs))
    for spec in step.specs:
        build = build_elems(spec, spec.form, o)
        if inside and spec.form != "readout":  # R ⊗ D materialised for its features
            build += o * spec.out_numel
        if spec.kind == "conv" and in_c:  # the channels-last copy of the output cotangent
            build += out_c
        work += build
    return work


def _chunk_plan(plan: _Plan, n1: int, n2: int, mode: str, itemsize: int, budget: int,
                device_type: str = "cpu") -> _Sizes:
    """Samples per chunk and tile, and whether all features are kept, within `budget` bytes
    (n2 = 0 when symmetric): tiles get at most a quarter of the budget; features of every
    sample are kept unless recomputing them per chunk pair is cheaper; on the CPU a chunk's
    transients are kept near CACHE_BYTES (smaller chunks stay in cache); refuse if one sample
    does not fit."""
    feat, transient, pair = _per_sample_elems(plan, mode)
    largest = max(n1, n2)
    fixed = 0
    for spec in plan.chain.specs:  # rank-one readout blocks scale slabs of D: an eighth at most
        if spec.form == "readout" and rank_one(spec):
            rows = mix_columns(plan.cot.shape[0], mode) * spec.fan_out * largest
            spec.slab_elems = min(SLAB_ELEMS, rows, budget // 8 // itemsize)
            fixed = max(fixed, spec.slab_elems)

    def tile_for(chunk: int) -> int:
        room = int(math.isqrt(max(budget // 4 // (itemsize * pair), 1)))
        return max(1, min(chunk, room))

    def need(chunk: int, cached: bool) -> int:
        stored = (n1 + n2) * feat if cached else 2 * chunk * feat
        tile = tile_for(largest if cached else chunk)
        return itemsize * (stored + chunk * transient + tile ** 2 * pair + fixed)

    def largest_chunk(cached: bool) -> int:
        lo, hi = 0, largest
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid, cached) <= budget else (lo, mid - 1)
        return lo

    if need(1, False) > budget:
        raise ValueError(f"max_memory={budget} bytes is too small for one block of samples: it "
                         f"needs about {need(1, False)} bytes ({feat} feature and {transient} "
                         "transient elements per sample)")
    uncached, cached = largest_chunk(False), largest_chunk(True)
    kept = _Sizes(cached, tile_for(largest), True)  # tiles span the kept features
    if cached >= min(MIN_CHUNK, largest):
        steps = plan.chain.steps
        if device_type == "cpu" and any(len(st.out_shape) > 1 for st in steps
                                        if st.role == "layer") \
                and not any(st.role == "generic" and st.specs for st in steps):
            # Only layers over positions gain (their cotangents are passes over channels ×
            # positions); a dense layer's backward is one matmul, which gains from a larger
            # chunk (the MLP: 0.098 s in one chunk against 0.104 s in chunks of 190); a
            # parametrised generic step's autograd pass costs per call.
            fits = CACHE_BYTES // (itemsize * (transient - feat))
            kept.chunk = min(cached, max(MIN_CHUNK, fits))
        return kept

    def builds(chunk: int, every_pair: bool) -> float:
        """Samples whose features are built, with each chunk's overhead."""
        rows = math.ceil(n1 / chunk)
        if not every_pair:
            work = n1 + n2
        else:  # each row chunk with itself and the later ones, or with every column chunk
            work = n1 * (rows + 1) / 2 if not n2 else n1 + n2 * rows
        return work * (1 + CHUNK_OVERHEAD / chunk)

    if cached and builds(cached, False) <= builds(uncached, True):
        return kept
    return _Sizes(uncached, tile_for(uncached), False)
