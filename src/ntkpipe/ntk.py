"""The empirical Neural Tangent Kernel, exact, without forming the network's Jacobian.

    Θ[(i,a),(j,b)] = ∂f_a(x1_i)/∂θ · ∂f_b(x2_j)/∂θ        (Jacot et al. 2018, eq. 4)

The kernel is a sum over parametrised modules. For a linear layer y = g_w·W x + g_b·b with
inputs A and output cotangents G_a = ∂f_a/∂y, the gradient is ∂f_a/∂W = g_w G_a ⊗ A, hence

    Θ_layer[(i,a),(j,b)] = (g_w² ⟨A1_i, A2_j⟩ + g_b²) · ⟨G1_ai, G2_bj⟩

and a convolution is the same sum over its output positions p, q with A the unfolded input
patches (Novak et al. 2022, "Fast finite width NTK", structured derivatives). Where that sum
over positions costs more than the explicit per-layer Jacobian Σ_p G_p ⊗ patch_p, the engine
forms the Jacobian of that layer alone, in chunks of samples. Any other module with parameters
gets its exact per-sample Jacobian by `torch.func`.

Implementations (`implementation=`): "auto" (per-layer choice by FLOP count), "factorised"
(factorised form for every Linear/Conv2d), "jacobian" (explicit per-layer Jacobians),
"reference" (`torch.func` vmap+jacrev over all parameters, then contraction).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap
from torch.nn import functional as F

from ntkpipe.models import Conv2d as GainedConv2d, Dense

MODES = ("full", "trace", "per_output", "sum_logits")
IMPLEMENTATIONS = ("auto", "factorised", "jacobian", "reference")
DEFAULT_MEMORY_FRACTION = 0.5


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
      - "full":       (N1, N2, O, O), Θ[i, j, a, b] = ∂f_a(x1_i)/∂θ · ∂f_b(x2_j)/∂θ;
      - "trace":      (N1, N2), (1/O) Σ_a Θ[i, j, a, a] (neural-tangents' `trace_axes=(-1,)`);
      - "per_output": (O, N1, N2), Θ[i, j, c, c] for each output c;
      - "sum_logits": (N1, N2), the kernel of Σ_a f_a, i.e. Σ_{a,b} Θ[i, j, a, b].
    Computed on the model's device in `dtype` (default: the parameters' dtype), with TF32 off
    unless `allow_tf32`. `max_memory` caps the extra memory in bytes (the result excluded);
    by default half of the available memory. The caller's model is left as it was.
    """
    _check_options(mode, implementation, max_memory)
    with _computation_context(model, x1, x2, dtype, allow_tf32) as (net, x1, x2, symmetric):
        output_dim = _check_inputs(net, x1, x2)
        if implementation == "reference":
            return _reference(net, x1, None if symmetric else x2, mode, per_layer)
        specs = _plan_layers(net, x1, output_dim, mode, implementation, strict)
        return _factorised_ntk(net, specs, x1, x2, symmetric, output_dim, mode, per_layer,
                               max_memory)


def reference_ntk(model: nn.Module, x1: Tensor, x2: Tensor | None = None, *,
                  mode: str = "full", per_layer: bool = False,
                  dtype: torch.dtype | None = None) -> Tensor:
    """The torch.func recipe (vmap + jacrev over all parameters, then contract): slow, obviously
    correct; same output contract as `empirical_ntk`."""
    _check_options(mode, "reference", None)
    with _computation_context(model, x1, x2, dtype, False) as (net, x1, x2, symmetric):
        _check_inputs(net, x1, x2)
        return _reference(net, x1, None if symmetric else x2, mode, per_layer)


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
                         ) -> Iterator[tuple[nn.Module, Tensor, Tensor, bool]]:
    """Model (a cast copy if needed) and inputs on the model's device; TF32 flags and the
    model's buffers restored on exit."""
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
    x1 = _cast_input(x1, device, dtype)
    x2 = x1 if symmetric else _cast_input(x2, device, dtype)
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    try:
        yield net, x1, x2, symmetric
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
# Reference: torch.func recipe
# ---------------------------------------------------------------------------------------------

def _reference(net: nn.Module, x1: Tensor, x2: Tensor | None, mode: str,
               per_layer: bool) -> Tensor:
    """vmap(jacrev) Jacobians of every parameter, contracted per module."""
    params = {k: p.detach() for k, p in net.named_parameters() if p.requires_grad}

    def f_single(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(net, p, (x.unsqueeze(0),)).squeeze(0)

    def jacobians(x: Tensor) -> dict[str, Tensor]:
        return vmap(jacrev(f_single), (None, 0))(params, x)

    j1 = jacobians(x1)
    j2 = j1 if x2 is None else jacobians(x2)
    names = layer_names(net)
    parts = {name: None for name in names}
    for key in params:
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        part = torch.einsum("iaf,jbf->ijab", j1[key].flatten(2), j2[key].flatten(2))
        parts[owner] = part if parts[owner] is None else parts[owner] + part
    full = torch.stack([parts[name] for name in names]) if per_layer else sum(parts.values())
    return _reduce_full(full, mode)


def _reduce_full(full: Tensor, mode: str) -> Tensor:
    """From (..., N1, N2, O, O) to the shape of `mode`."""
    if mode == "full":
        return full
    if mode == "sum_logits":
        return full.sum(dim=(-2, -1))
    diag = full.diagonal(dim1=-2, dim2=-1)  # (..., N1, N2, O)
    if mode == "trace":
        return diag.mean(-1)
    return diag.movedim(-1, -3).contiguous()


# ---------------------------------------------------------------------------------------------
# Planning: one LayerSpec per parametrised module
# ---------------------------------------------------------------------------------------------

@dataclass
class LayerSpec:
    """How one parametrised module contributes to the kernel."""

    name: str
    module: nn.Module
    kind: str              # "linear", "conv" or "other"
    form: str              # "factorised" or "jacobian"
    weight_gain: float = 1.0
    bias_gain: float = 1.0
    train_weight: bool = False
    train_bias: bool = False
    positions: int = 1     # P: output positions sharing the weight
    fan_in: int = 0        # d: patch / input size
    fan_out: int = 0       # c: output channels / features
    n_params: int = 0      # D: trainable scalars of the module
    out_numel: int = 0     # per-sample output size
    in_numel: int = 0      # per-sample input size
    activations: int = 0   # per-sample size of all leaf-module outputs of the model


def _module_kind(module: nn.Module) -> str:
    """'linear' / 'conv' where the factorised form applies exactly, else 'other'."""
    if type(module) in (nn.Linear, Dense):
        return "linear"
    if (type(module) in (nn.Conv2d, GainedConv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)):
        return "conv"
    return "other"


def _probe(net: nn.Module, x: Tensor, modules: list[tuple[str, nn.Module]]
           ) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """One-sample forward recording each parametrised module's input and output, plus the
    total per-sample size of all leaf-module outputs (activations kept for backward)."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    act = [0]

    def record(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            if name in seen:
                raise ValueError(f"module {name!r} is called more than once per forward pass "
                                 "(weight sharing): use implementation='reference'")
            seen[name] = (args, output)
        return hook

    def count(module: nn.Module, args: tuple, output: Tensor) -> None:
        if isinstance(output, Tensor):
            act[0] += output.numel()

    handles = [m.register_forward_hook(record(name)) for name, m in modules]
    handles += [m.register_forward_hook(count) for m in net.modules()
                if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in handles:
            h.remove()
    return seen, act[0]


def _plan_layers(net: nn.Module, x: Tensor, output_dim: int, mode: str, implementation: str,
                 strict: bool) -> list[LayerSpec]:
    """Classify each parametrised module and pick its form (factorised or Jacobian)."""
    modules = _parametrised_modules(net)
    owners: dict[int, str] = {}
    for name, module in modules:
        for p in module.parameters(recurse=False):
            if owners.setdefault(id(p), name) != name:
                raise ValueError(f"a parameter is shared by modules {owners[id(p)]!r} and "
                                 f"{name!r}: use implementation='reference'")
    seen, act = _probe(net, x, modules)
    n_out = 1 if mode == "sum_logits" else output_dim
    pairs = n_out * n_out if mode in ("full", "sum_logits") else n_out
    specs = []
    for name, module in modules:
        kind = _module_kind(module)
        if kind == "other" and strict:
            raise TypeError(f"module {name!r} of type {type(module).__name__} has parameters but "
                            "no factorised NTK rule (strict=True); supported: nn.Linear, "
                            "nn.Conv2d (groups=1, zero padding), ntkpipe.models.Dense/Conv2d")
        spec = LayerSpec(name, module, kind, "jacobian",
                         n_params=sum(p.numel() for p in module.parameters(recurse=False)
                                      if p.requires_grad))
        spec.activations = act
        if name in seen:
            args, out = seen[name]
            spec.out_numel = out.numel() if isinstance(out, Tensor) else 0
            spec.in_numel = sum(a.numel() for a in args if isinstance(a, Tensor))
        if kind != "other":
            _fill_linear_conv(spec, seen.get(name))
            if implementation == "factorised":
                spec.form = "factorised"
            elif implementation == "auto":
                spec.form = _cheaper_form(spec, pairs)
        specs.append(spec)
    return specs


def _fill_linear_conv(spec: LayerSpec, record: tuple | None) -> None:
    """Gains, trainable flags and sizes (P, d, c) of a Linear or Conv2d."""
    m = spec.module
    spec.weight_gain = float(getattr(m, "weight_gain", 1.0))
    spec.bias_gain = float(getattr(m, "bias_gain", 1.0))
    spec.train_weight = m.weight.requires_grad
    spec.train_bias = m.bias is not None and m.bias.requires_grad
    spec.fan_out = m.weight.shape[0]
    spec.fan_in = m.weight[0].numel()
    if record is not None:
        out = record[1]
        spec.positions = out[0, 0].numel() if spec.kind == "conv" else out[0, ..., 0].numel()


def _cheaper_form(spec: LayerSpec, pairs: int) -> str:
    """Factorised or Jacobian form of a layer, by FLOPs per pair of samples (N1·N2 terms;
    the Jacobian's per-sample construction is amortised over the other side's samples)."""
    p, d, c = spec.positions, spec.fan_in, spec.fan_out
    factorised = p * p * (d + pairs * (c + (1 if p > 1 else 0)))
    jacobian = pairs * (c * d + c)
    return "factorised" if factorised <= jacobian else "jacobian"


# ---------------------------------------------------------------------------------------------
# Per-chunk features: inputs, output cotangents, per-layer Jacobians
# ---------------------------------------------------------------------------------------------

def _cotangents(mode: str, output_dim: int, like: Tensor) -> Tensor:
    """Rows are the output directions backpropagated: one-hot per output, or all-ones for the
    kernel of Σ_a f_a."""
    if mode == "sum_logits":
        return torch.ones(1, output_dim, dtype=like.dtype, device=like.device)
    return torch.eye(output_dim, dtype=like.dtype, device=like.device)


def _chunk_features(net: nn.Module, specs: list[LayerSpec], x: Tensor, cot: Tensor,
                    sample_major: bool) -> list[dict[str, Tensor] | None]:
    """Forward one chunk with hooks, backpropagate every cotangent row, and turn each layer's
    (input, output cotangent) into its kernel features; G and J are sample-major
    ((n, O', ...), so that full-kernel Grams reshape without copies) or output-major."""
    records: dict[str, tuple[tuple, Tensor]] = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            records[name] = (tuple(a.detach().clone() if isinstance(a, Tensor) else a
                                   for a in args), output)
            # A clone downstream keeps `output` intact if a later op works in place.
            return output.clone() if isinstance(output, Tensor) else output
        return hook

    handles = [spec.module.register_forward_hook(capture(spec.name)) for spec in specs]
    try:
        with torch.enable_grad():
            f = net(x)
    finally:
        for h in handles:
            h.remove()
    present = [s for s in specs if s.name in records and records[s.name][1].requires_grad]
    outs = [records[s.name][1] for s in present]
    grads: list[list[Tensor]] = [[] for _ in present]
    for k in range(cot.shape[0]):
        gs = torch.autograd.grad(f, outs, grad_outputs=cot[k].expand_as(f).contiguous(),
                                 retain_graph=k < cot.shape[0] - 1, allow_unused=True)
        for store, g, out in zip(grads, gs, outs):
            store.append(torch.zeros_like(out) if g is None else g)
    del f, outs
    inputs = {name: args for name, (args, _) in records.items()}  # frees the graph
    del records
    by_name = {s.name: torch.stack(g) for s, g in zip(present, grads)}  # (O', n, *out)
    del grads
    features: list[dict[str, Tensor] | None] = []
    with torch.no_grad():
        for spec in specs:
            if spec.name not in by_name:
                features.append(None)
                continue
            feats = _layer_features(spec, inputs[spec.name], by_name.pop(spec.name))
            if sample_major:
                feats = {k: v if k == "X" else v.transpose(0, 1).contiguous()
                         for k, v in feats.items()}
            features.append(feats)
    return features


def _layer_features(spec: LayerSpec, args: tuple, g: Tensor) -> dict[str, Tensor]:
    """Features of one layer: patches X (n, P, d) and cotangents G (O', n, P, c) for the
    factorised form, or the Jacobian J (O', n, D) for the explicit one."""
    if spec.kind == "other":
        return {"J": _module_jacobian(spec, args, g)}
    x = args[0]
    if spec.kind == "conv":
        m = spec.module
        x = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
        g = g.flatten(3).transpose(2, 3)  # (O', n, P, c)
    else:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        g = g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])
    if spec.form == "factorised":
        return {"X": x, "G": g}
    parts = []
    if spec.train_weight:  # ∂f/∂W = g_w Σ_p G_p ⊗ X_p
        jw = torch.matmul(g.transpose(-1, -2), x) if x.shape[1] > 1 else \
            g.transpose(-1, -2) * x.unsqueeze(0)
        parts.append(spec.weight_gain * jw.flatten(2))
    if spec.train_bias:
        parts.append(spec.bias_gain * g.sum(2))
    return {"J": torch.cat(parts, dim=2)}


def _module_jacobian(spec: LayerSpec, args: tuple, g: Tensor) -> Tensor:
    """Exact per-sample, per-output Jacobian (O', n, D) of any module's own parameters, as
    vector-Jacobian products of its output cotangents."""
    if len(args) != 1 or not isinstance(args[0], Tensor):
        raise ValueError(f"module {spec.name!r} ({type(spec.module).__name__}) takes "
                         f"{len(args)} positional inputs; the Jacobian fallback needs exactly one "
                         "tensor")
    module = spec.module
    params = {k: p.detach() for k, p in module.named_parameters(recurse=False) if p.requires_grad}

    def sample_vjp(x: Tensor, cotangent: Tensor) -> Tensor:
        _, pullback = vjp(lambda p: functional_call(module, p, (x.unsqueeze(0),)).squeeze(0),
                          params)
        return torch.cat([v.flatten() for v in pullback(cotangent)[0].values()])

    over_outputs = vmap(sample_vjp, in_dims=(None, 0))
    return vmap(over_outputs, in_dims=(0, 1), out_dims=1)(args[0], g)


# ---------------------------------------------------------------------------------------------
# Per-block kernels
# ---------------------------------------------------------------------------------------------

def _block(spec: LayerSpec, f1: dict[str, Tensor], f2: dict[str, Tensor], full: bool,
           out: Tensor) -> None:
    """Add one layer's kernel between two chunks to `out`: (n1, O', n2, O') if `full` (features
    sample-major), else the diagonal blocks (O', n1, n2) (features output-major)."""
    if "J" in f1:
        _jacobian_block(f1["J"], f2["J"], full, out)
    elif f1["X"].shape[1] == 1:
        _dense_block(spec, f1, f2, full, out)
    else:
        _patch_block(spec, f1, f2, full, out)


def _jacobian_block(j1: Tensor, j2: Tensor, full: bool, out: Tensor) -> None:
    """Θ = J1 J2ᵀ."""
    if full:
        n1, o, dim = j1.shape
        n2 = j2.shape[0]
        out.add_((j1.reshape(n1 * o, dim) @ j2.reshape(n2 * o, dim).T).view(n1, o, n2, o))
    else:
        out.baddbmm_(j1, j2.transpose(1, 2))


def _input_factor(spec: LayerSpec, x1: Tensor, x2: Tensor) -> Tensor:
    """S = g_w² X1 X2ᵀ + g_b² over rows of the (flattened) patches."""
    if spec.train_weight:
        s = x1 @ x2.T
        s.mul_(spec.weight_gain ** 2)
        if spec.train_bias:
            s.add_(spec.bias_gain ** 2)
        return s
    return torch.full((x1.shape[0], x2.shape[0]), spec.bias_gain ** 2, dtype=x1.dtype,
                      device=x1.device)


def _dense_block(spec: LayerSpec, f1: dict[str, Tensor], f2: dict[str, Tensor], full: bool,
                 out: Tensor) -> None:
    """(g_w² A1 A2ᵀ + g_b²) ⊙ (G1 G2ᵀ) for one output position."""
    s = _input_factor(spec, f1["X"][:, 0], f2["X"][:, 0])
    g1, g2 = f1["G"][:, :, 0], f2["G"][:, :, 0]  # (n, O', c) if full else (O', n, c)
    if full:
        n1, o, c = g1.shape
        n2 = g2.shape[0]
        t = g1.reshape(n1 * o, c) @ g2.reshape(n2 * o, c).T
        out.addcmul_(t.view(n1, o, n2, o), s.view(n1, 1, n2, 1))
    else:
        t = torch.bmm(g1, g2.transpose(1, 2))
        out.addcmul_(t, s.unsqueeze(0))


def _patch_block(spec: LayerSpec, f1: dict[str, Tensor], f2: dict[str, Tensor], full: bool,
                 out: Tensor) -> None:
    """Σ_{p,q} (g_w² ⟨X1_p, X2_q⟩ + g_b²) ⟨G1_p, G2_q⟩ for layers with several positions."""
    x1, x2, g1, g2 = f1["X"], f2["X"], f1["G"], f2["G"]
    n1, p1, d = x1.shape
    n2, p2, _ = x2.shape
    o, c = g1.shape[1 if full else 0], g1.shape[-1]
    s = _input_factor(spec, x1.reshape(n1 * p1, d), x2.reshape(n2 * p2, d)).view(n1, p1, n2, p2)
    if full:
        t = g1.reshape(n1 * o * p1, c) @ g2.reshape(n2 * o * p2, c).T
        out.add_(torch.einsum("ipjq,iapjbq->iajb", s, t.view(n1, o, p1, n2, o, p2)))
    else:
        t = torch.bmm(g1.reshape(o, n1 * p1, c), g2.reshape(o, n2 * p2, c).transpose(1, 2))
        out.add_(torch.einsum("ipjq,aipjq->aij", s, t.view(o, n1, p1, n2, p2)))


# ---------------------------------------------------------------------------------------------
# Chunked driver
# ---------------------------------------------------------------------------------------------

def _factorised_ntk(net: nn.Module, specs: list[LayerSpec], x1: Tensor, x2: Tensor,
                    symmetric: bool, output_dim: int, mode: str, per_layer: bool,
                    max_memory: int | None) -> Tensor:
    """Loop over pairs of sample chunks (only i ≤ j when symmetric), sum layer blocks."""
    cot = _cotangents(mode, output_dim, x1)
    n_out = cot.shape[0]
    full = mode in ("full", "sum_logits")
    n1, n2 = x1.shape[0], x2.shape[0]
    budget = max_memory if max_memory is not None else _default_budget(x1.device)
    chunk, cache_all = _chunk_plan(specs, n1, 0 if symmetric else n2, n_out, full,
                                   x1.element_size(), budget, symmetric)
    n_layers = len(specs) if per_layer else 1
    shape = (n1, n_out, n2, n_out) if full else (n_out, n1, n2)
    result = torch.zeros((n_layers,) + shape, dtype=x1.dtype, device=x1.device)
    rows = _ranges(n1, chunk)
    cols = rows if symmetric else _ranges(n2, chunk)
    cache: dict[tuple[int, int, int], list] = {}

    def features(side: int, r: range) -> list:
        key = (0 if symmetric else side, r.start, r.stop)
        if key in cache:
            return cache[key]
        feats = _chunk_features(net, specs, (x1 if side == 0 else x2)[r.start:r.stop], cot,
                                sample_major=full)
        if cache_all:
            cache[key] = feats
        return feats

    tile = _tile_size(chunk, n1, n_out if full else 1) if symmetric else chunk
    for bi, r1 in enumerate(rows):
        f1 = features(0, r1)
        if not cache_all:
            cache[(0, r1.start, r1.stop)] = f1  # keep the row chunk through its columns
        for bj, r2 in enumerate(cols):
            if symmetric and bj < bi:
                continue
            f2 = features(1, r2)
            with torch.no_grad():
                for t1 in _ranges(len(r1), tile, r1.start):
                    for t2 in _ranges(len(r2), tile, r2.start):
                        if symmetric and t2.start < t1.start:
                            continue
                        _tile(specs, _slice(f1, t1, r1.start, full),
                              _slice(f2, t2, r2.start, full),
                              result, t1, t2, full, per_layer)
                        if symmetric:
                            _mirror(result, t1, t2, full)
        if not cache_all:
            cache.clear()
    return _finish(result if per_layer else result[0], mode)


def _tile(specs: list[LayerSpec], f1: list, f2: list, result: Tensor, r1: range, r2: range,
          full: bool, per_layer: bool) -> None:
    """Add every layer's kernel between samples r1 and r2 to `result`."""
    for layer, (spec, a, b) in enumerate(zip(specs, f1, f2)):
        if a is not None and b is not None:
            _block(spec, a, b, full, _view(result[layer if per_layer else 0], r1, r2, full))


def _tile_size(chunk: int, n: int, rows_per_sample: int) -> int:
    """Samples per tile of a symmetric kernel: tiles i ≤ j only save up to half the products,
    while Gram matmuls keep full speed down to about 512 rows."""
    return min(chunk, max(math.ceil(512 / rows_per_sample), math.ceil(n / 8)))


def _slice(features: list, r: range, offset: int, sample_major: bool) -> list:
    """Features of samples r (absolute indices) from those of a chunk starting at `offset`."""
    a, b = r.start - offset, r.stop - offset
    return [None if f is None else
            {k: v[a:b] if k == "X" or sample_major else v[:, a:b] for k, v in f.items()}
            for f in features]


def _view(out: Tensor, r1: range, r2: range, full: bool) -> Tensor:
    """The block of rows r1 and columns r2 of a (N1, O', N2, O') or (O', N1, N2) kernel."""
    if full:
        return out[r1.start:r1.stop, :, r2.start:r2.stop]
    return out[:, r1.start:r1.stop, r2.start:r2.stop]


def _mirror(result: Tensor, r1: range, r2: range, full: bool) -> None:
    """Θ(x2_j, x1_i) = Θ(x1_i, x2_j)ᵀ for the block below the diagonal; diagonal blocks are
    averaged with their transpose so that K(x, x) is exactly symmetric."""
    for out in result:
        if r1 == r2:
            block = _view(out, r1, r1, full)
            block.add_(block.permute(2, 3, 0, 1).clone() if full else
                       block.transpose(1, 2).clone()).mul_(0.5)
        elif full:
            _view(out, r2, r1, True).copy_(_view(out, r1, r2, True).permute(2, 3, 0, 1))
        else:
            _view(out, r2, r1, False).copy_(_view(out, r1, r2, False).transpose(1, 2))


def _finish(result: Tensor, mode: str) -> Tensor:
    """From the internal layout to the public one of `mode`."""
    if mode == "full":
        return result.permute(*range(result.dim() - 4), -4, -2, -3, -1).contiguous()
    if mode == "sum_logits":
        return result[..., :, 0, :, 0].contiguous()
    if mode == "trace":
        return result.mean(-3)
    return result


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


def _feature_elems(spec: LayerSpec, n_out: int) -> int:
    """Elements per sample of a layer's stored features."""
    if spec.form == "factorised":
        return spec.positions * (spec.fan_in + n_out * spec.fan_out)
    return n_out * spec.n_params


def _transient_elems(specs: list[LayerSpec], n_out: int) -> int:
    """Elements per sample alive while a chunk's features are built: activations and their
    clones, every layer's raw cotangents, and the largest per-layer conversion."""
    act = specs[0].activations if specs else 0
    raw = sum(n_out * s.out_numel + s.in_numel for s in specs)
    conversion = max((n_out * (s.out_numel + (s.n_params if s.form == "jacobian" else 0))
                      + s.positions * s.fan_in for s in specs), default=0)
    return 3 * act + raw + conversion


def _block_elems(specs: list[LayerSpec], n1: int, n2: int, n_out: int, full: bool) -> int:
    """Elements of the largest temporary of one layer's block between chunks of n1 and n2."""
    pairs = n_out * n_out if full else n_out
    worst = 0
    for s in specs:
        if s.form == "factorised":
            pp = s.positions * s.positions
            worst = max(worst, n1 * n2 * pp * (1 + pairs) + n1 * n2 * pairs)
        else:
            worst = max(worst, n1 * n2 * pairs)
    return worst


def _chunk_plan(specs: list[LayerSpec], n1: int, n2: int, n_out: int, full: bool,
                itemsize: int, budget: int, symmetric: bool) -> tuple[int, bool]:
    """Largest chunk of samples whose two feature sets, transients and block temporaries fit
    in `budget` bytes, and whether all chunks' features can be kept at once."""
    feat = sum(_feature_elems(s, n_out) for s in specs)
    trans = _transient_elems(specs, n_out)

    def need(n: int) -> int:
        return itemsize * (2 * n * feat + n * trans + _block_elems(specs, n, n, n_out, full))

    largest = max(n1, n2)
    if need(1) > budget:
        raise ValueError(f"max_memory={budget} bytes is too small for even one sample "
                         f"(needs about {need(1)} bytes)")
    lo, hi = 1, largest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid - 1)
    chunk = lo
    total = itemsize * ((n1 + n2) * feat + chunk * trans
                        + _block_elems(specs, chunk, chunk, n_out, full))
    return chunk, total <= budget
