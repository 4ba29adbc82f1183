"""Cotangents for the NTK engine: one forward per chunk, then all output directions at once.

The model is read as a chain of steps (nested `nn.Sequential`s are flattened). Known steps —
Linear, Conv2d, normalisation and position-embedding layers, elementwise activations — have
their own batched vector-Jacobian products; any other step is differentiated by autograd, with
every output direction in one vmapped backward (`is_grads_batched`), its parametrised
submodules' output cotangents read on the way. Cotangents are (n, O', *shape) tensors, sample
first, with whatever strides the producing kernel left.

When the chain ends in a Linear readout f = R u reached from a layer only through per-channel
maps (activations, eval-mode BatchNorm, pooling, flattening of (C, 1, 1)), that layer's output
cotangent is G_acp = R_ac D_cp with D = ∂u_c/∂y_cp (Novak et al. 2022, arXiv:2206.08720):
the engine backpropagates the single direction D through that segment and crosses the layer
with the readout folded into its weights, V_(a,c') = Σ_c R_ac W_cc' — for a convolution one
transposed convolution of the n samples into O'·C' channels instead of n·O' samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.func import vjp, vmap
from torch.nn import functional as F

from ntkpipe.ntk_layers import (BATCHNORMS, LayerSpec, check_batchnorm_mode, conv_padding,
                                fill_spec, module_kind)

ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardtanh, nn.Hardswish,
               nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid)
PASSTHROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
CHANNEL_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
RESHAPES = (nn.Flatten, nn.Unflatten)


@dataclass
class Step:
    """One link of the chain."""

    name: str
    module: nn.Module
    role: str                      # "layer", "act", "pass", "reshape", "mean" or "generic"
    specs: list[LayerSpec] = field(default_factory=list)
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    kept: int = 0                  # per-sample elements a generic step keeps for its backward


@dataclass
class Chain:
    """A model as steps, its parametrised layers (in `layer_names` order) and the readout."""

    steps: list[Step]
    specs: list[LayerSpec]
    first_param: int               # no cotangent is needed below this step
    segment: tuple[int, int] | None = None  # (boundary layer, readout) step indices
    channels_last: bool = False
    act_elems: int = 0             # per-sample size of every step's input

    def readout_matrix(self, cot: Tensor) -> Tensor:
        """R (O', C): the directions `cot` (O', O) pulled back through the readout weight."""
        spec = self.steps[self.segment[1]].specs[0]
        return cot @ (spec.weight_gain * spec.module.weight.detach())


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------

def plan_chain(net: nn.Module, x: Tensor, parametrised: list[tuple[str, nn.Module]]) -> Chain:
    """Steps of `net` with shapes and layer specs from a one-sample probe forward."""
    owned = {id(m) for _, m in parametrised}
    steps = [_make_step(name, m, owned, parametrised) for name, m in _leaves(net, "")]
    seen = [id(s.module) for s in steps]
    if len(set(seen)) != len(seen):
        raise ValueError("a module is called more than once per forward pass (weight sharing): "
                         "use implementation='reference'")
    act = _probe(steps, x[:1])
    specs_by_name = {s.name: s for st in steps for s in st.specs}
    specs = [specs_by_name[name] for name, _ in parametrised if name in specs_by_name]
    first = next((k for k, st in enumerate(steps) if st.specs), len(steps))
    chain = Chain(steps, specs, first, act_elems=act,
                  channels_last=x.dim() == 4 and any(
                      sp.kind == "conv" for st in steps for sp in st.specs))
    if steps and steps[-1].role == "layer":
        steps[-1].specs[0].last = True
    chain.segment = _readout_segment(steps)
    if chain.segment is not None:
        for k in range(chain.segment[0], chain.segment[1]):
            for spec in steps[k].specs:
                spec.readout = True
    return chain


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """Steps in call order: children of plain `nn.Sequential`s, recursively."""
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for name, child in module._modules.items():  # named_children() hides repeats
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, module


def _make_step(name: str, module: nn.Module, owned: set[int],
               parametrised: list[tuple[str, nn.Module]]) -> Step:
    """Classify a step by what it holds."""
    for sub_name, sub in module.named_modules(prefix=name):
        check_batchnorm_mode(sub_name, sub)
    inner = [(n, m) for n, m in parametrised
             if n == name or n.startswith(f"{name}.") or not name]
    if id(module) in owned and len(inner) == 1:
        return Step(name, module, "layer", [LayerSpec(name, module, module_kind(module))])
    if inner:
        return Step(name, module, "generic", [LayerSpec(n, m, module_kind(m)) for n, m in inner])
    if isinstance(module, ELEMENTWISE):
        return Step(name, module, "act")
    if isinstance(module, PASSTHROUGH) and not module.training:
        return Step(name, module, "pass")
    if isinstance(module, RESHAPES):
        return Step(name, module, "reshape")
    if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
        return Step(name, module, "mean")  # global average pooling
    return Step(name, module, "generic")


def _probe(steps: list[Step], x: Tensor) -> int:
    """Run one sample through the steps: shapes, layer sizes; return the kept activations."""
    act = 0
    with torch.no_grad():
        for step in steps:
            step.in_shape = tuple(x.shape[1:])
            act += x[0].numel()
            records: dict[str, tuple[Tensor, Tensor]] = {}
            kept = [0]
            with _recording(step, records, kept):
                y = step.module(x)
            if not isinstance(y, Tensor):
                raise ValueError(f"step {step.name!r} ({type(step.module).__name__}) returns "
                                 f"{type(y).__name__}, not a tensor")
            for spec in step.specs:
                if spec.name in records:
                    fill_spec(spec, *records[spec.name])
            step.kept = kept[0]
            step.out_shape = tuple(y.shape[1:])
            x = y
    return act


class _recording:
    """Forward hooks on a step's parametrised modules: record (input, output), refuse a second
    call (weight sharing), count what its leaf modules output."""

    def __init__(self, step: Step, records: dict, kept: list[int] | None = None,
                 clone: bool = False) -> None:
        self.step, self.records, self.kept, self.clone = step, records, kept, clone
        self.handles: list = []

    def __enter__(self) -> "_recording":
        for spec in self.step.specs:
            self.handles.append(spec.module.register_forward_hook(self._record(spec.name)))
        if self.kept is not None and self.step.role == "generic":
            for m in self.step.module.modules():
                if not any(True for _ in m.children()):
                    self.handles.append(m.register_forward_hook(self._count))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _record(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            if name in self.records:
                raise ValueError(f"module {name!r} is called more than once per forward pass "
                                 "(weight sharing): use implementation='reference'")
            if len(args) != 1 or not isinstance(args[0], Tensor) or not isinstance(output, Tensor):
                raise ValueError(f"module {name!r} ({type(module).__name__}) must map one tensor "
                                 "to one tensor")
            x = args[0].detach()
            self.records[name] = (x.clone() if self.clone else x, output)
            # A clone downstream keeps `output` intact if a later op works in place.
            return output.clone() if self.clone else None
        return hook

    def _count(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        if isinstance(output, Tensor):
            self.kept[0] += output[0].numel()


def _readout_segment(steps: list[Step]) -> tuple[int, int] | None:
    """(boundary, readout): the last step a Linear on (n, C) and the steps before it down to
    the boundary layer all per-channel maps of C channels (channel dimension 1)."""
    if not steps or steps[-1].role != "layer" or steps[-1].specs[0].kind != "linear" \
            or len(steps[-1].in_shape) != 1:
        return None
    channels = steps[-1].in_shape[0]
    k = len(steps) - 2
    while k >= 0 and _per_channel(steps[k], channels):
        k -= 1
    if k < 0 or steps[k].role != "layer" or steps[k].specs[0].kind not in (
            "linear", "conv", "affine"):
        return None
    spec, out = steps[k].specs[0], steps[k].out_shape
    if not out or out[0] != channels or (spec.kind == "linear" and len(out) != 1) or \
            (spec.kind == "affine" and isinstance(spec.module, nn.LayerNorm) and len(out) != 1):
        return None
    return k, len(steps) - 1


def _per_channel(step: Step, channels: int) -> bool:
    """Does the step map each of `channels` channels (dim 1) to itself alone?"""
    if not step.in_shape or step.in_shape[0] != channels or not step.out_shape or \
            step.out_shape[0] != channels:
        return False
    m = step.module
    if step.role in ("act", "pass"):
        return True
    if step.role == "layer":
        return step.specs[0].kind == "affine" and type(m) in BATCHNORMS
    if isinstance(m, BATCHNORMS):
        return True
    if isinstance(m, CHANNEL_POOLS):
        return True
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and all(s == 1 for s in step.in_shape[1:])
    return False


# ---------------------------------------------------------------------------------------------
# Forward tape and batched backward
# ---------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    """What one step's forward left for its backward (x: a layer's input, for its features)."""

    x: Tensor | None
    aux: object = None


def forward_tape(chain: Chain, x: Tensor) -> list[_Entry | None]:
    """Forward a chunk through the chain, keeping what each step's backward needs."""
    if chain.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tape: list[_Entry | None] = []
    for k, step in enumerate(chain.steps):
        if k < chain.first_param:  # nothing below the first layer is differentiated
            with torch.no_grad():
                y = step.module(x)
            tape.append(None)
        else:
            y, aux = _step_forward(step, x, needs_input_grad=k > chain.first_param)
            tape.append(_Entry(x if step.role == "layer" else None, aux))
        x = y
    return tape


def _step_forward(step: Step, x: Tensor, needs_input_grad: bool) -> tuple[Tensor, object]:
    """(output, what the backward needs)."""
    m = step.module
    if step.role == "act" and type(m) is nn.ReLU:
        with torch.no_grad():
            return m(x), x > 0  # ReLU's derivative as a mask (1 byte per element)
    if step.role == "act":
        with torch.enable_grad():
            leaf = x.detach().requires_grad_()
            y = m(leaf.clone())  # in-place activations must not touch a leaf
            (deriv,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        return y.detach(), deriv
    if step.role in ("pass", "layer", "reshape", "mean"):
        with torch.no_grad():
            return m(x), None
    if not step.specs:
        y, pullback = vjp(m, x)
        return y.detach(), pullback
    records: dict[str, tuple[Tensor, Tensor]] = {}
    with _recording(step, records, clone=True), torch.enable_grad():
        leaf = x.detach().requires_grad_(needs_input_grad and x.is_floating_point())
        y = m(leaf)
    return y.detach(), (leaf, y, records)


def initial_cotangent(n: int, cot: Tensor) -> Tensor:
    """The directions backpropagated from the output, for every sample: (n, O', O)."""
    return cot.unsqueeze(0).expand(n, -1, -1).contiguous()


def backward(chain: Chain, tape: list[_Entry | None], n: int, cot: Tensor
             ) -> Iterator[tuple[LayerSpec, Tensor, tuple]]:
    """Yield (spec, layer input, cotangent) for every parametrised layer reached, from the
    output down; the cotangent is ("G", (n, O', *out)), ("D", (n, *out), R) for layers in
    the readout form, or ("C", (n, O', O), directions (O', O)) for a last layer, whose output
    cotangent is the same for every sample. Each step's tape entry is freed once crossed."""
    state = {"g": initial_cotangent(n, cot), "d": None, "r": None}
    for k in range(len(chain.steps) - 1, chain.first_param - 1, -1):
        yield from _backward_step(chain, k, tape[k], n, cot, state)
        tape[k] = None


def _backward_step(chain: Chain, k: int, entry: _Entry, n: int, cot: Tensor, state: dict
                   ) -> Iterator[tuple[LayerSpec, Tensor, tuple]]:
    """One step of `backward`: yield its layers' cotangents, update the running cotangent
    state["g"] (all directions) or state["d"] (the single readout direction)."""
    step, seg = chain.steps[k], chain.segment
    need_input = k > chain.first_param
    last = k == len(chain.steps) - 1  # the output cotangents: the directions themselves
    if seg is not None and k == seg[1]:  # the readout: continue with the single direction D
        yield step.specs[0], entry.x, ("C", state["g"], cot) if last else ("G", state["g"])
        g = state["g"]
        state.update(g=None, r=chain.readout_matrix(cot),
                     d=torch.ones(n, 1, step.in_shape[0], dtype=g.dtype, device=g.device))
    elif state["d"] is not None:
        d, r = state["d"], state["r"]
        yield from _segment_step(step, entry, d, r)
        if k == seg[0]:
            state.update(d=None, g=_cross_boundary(step, entry, d, r) if need_input else None)
        else:
            state["d"] = _step_backward(step, entry, d)
    elif step.role == "generic" and step.specs:
        grads = _generic_backward(step, entry, state["g"], need_input)
        for spec in step.specs:
            if spec.name in grads:
                yield spec, entry.aux[2][spec.name][0], ("G", grads[spec.name])
        state["g"] = grads.get("")
    else:
        if step.role == "layer":
            yield step.specs[0], entry.x, ("C", state["g"], cot) if last else ("G", state["g"])
        state["g"] = _step_backward(step, entry, state["g"]) if need_input else None


def _segment_step(step: Step, entry: _Entry, d: Tensor, r: Tensor
                  ) -> Iterator[tuple[LayerSpec, Tensor, tuple]]:
    """A parametrised step in the readout segment: D (n, 1, *out) for the readout form, else
    the materialised cotangent R ⊗ D."""
    if step.role != "layer":
        return
    spec = step.specs[0]
    if spec.form == "readout":
        yield spec, entry.x, ("D", d[:, 0], r)
    else:
        yield spec, entry.x, ("G", materialise(d, r))


def materialise(d: Tensor, r: Tensor) -> Tensor:
    """G (n, O', C, ...) = R_ac D_ic... from D (n, 1, C, ...) and R (O', C)."""
    return d * r.view(1, *r.shape, *([1] * (d.dim() - 3)))


def _cross_boundary(step: Step, entry: _Entry, d: Tensor, r: Tensor) -> Tensor:
    """The input cotangent (n, O', *in) of the boundary layer, whose output cotangent is R ⊗ D."""
    spec = step.specs[0]
    m = spec.module
    if spec.kind == "conv" and m.groups == 1 and conv_padding(m)[0] is not None:
        return _conv_readout_input_grad(
            spec, d[:, 0].contiguous(memory_format=torch.channels_last), r, step.in_shape)
    return _step_backward(step, entry, materialise(d, r))


def _step_backward(step: Step, entry: _Entry, g: Tensor) -> Tensor:
    """Input cotangent (n, O', *in) of a step from its output cotangent (n, O', *out)."""
    if step.role == "act":
        return g.mul_(entry.aux.unsqueeze(1))
    if step.role == "pass":
        return g
    if step.role == "reshape":
        return g.reshape(*g.shape[:2], *step.in_shape)
    if step.role == "mean":  # (n, O', C, 1, 1) spread evenly over the positions, channels last
        n, o = g.shape[:2]
        c, h, w = step.in_shape
        out = g.new_empty(n, o, h, w, c)
        out.copy_(g.reshape(n, o, 1, 1, c).div(h * w).expand_as(out))
        return out.permute(0, 1, 4, 2, 3)
    if step.role == "generic":
        return vmap(lambda c: entry.aux(c)[0], in_dims=1, out_dims=1)(g)
    spec = step.specs[0]
    m = spec.module
    if spec.kind == "linear":
        return torch.matmul(g, m.weight.detach()).mul_(spec.weight_gain)
    if spec.kind == "conv":
        return _conv_input_grad(spec, g, step.in_shape)
    if spec.kind == "additive":
        return g
    if spec.kind == "affine" and not isinstance(m, nn.LayerNorm):
        scale = torch.rsqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = scale * m.weight.detach()
        return g.mul_(scale.view(-1, *([1] * (g.dim() - 3))))
    _, pullback = vjp(m, entry.x)
    return vmap(lambda c: pullback(c)[0], in_dims=1, out_dims=1)(g)


def _conv_input_grad(spec: LayerSpec, g: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """Transposed convolution of all n·O' cotangents at once (channels-last for oneDNN)."""
    m = spec.module
    n, o = g.shape[:2]
    flat = g.reshape(n * o, *g.shape[2:]).contiguous(memory_format=torch.channels_last)
    weight = m.weight.detach() * spec.weight_gain
    symmetric, pads, mode = conv_padding(m)
    if symmetric is not None:
        out = torch.nn.grad.conv2d_input((n * o, *in_shape), weight, flat, m.stride, symmetric,
                                         m.dilation, m.groups)
        return out.unflatten(0, (n, o))
    padded = (in_shape[0], in_shape[1] + pads[2] + pads[3], in_shape[2] + pads[0] + pads[1])
    out = torch.nn.grad.conv2d_input((n * o, *padded), weight, flat, m.stride, 0, m.dilation,
                                     m.groups)
    zeros = out.new_zeros(n * o, *in_shape)
    _, pullback = vjp(lambda z: F.pad(z, pads, mode=mode), zeros)
    return pullback(out)[0].unflatten(0, (n, o))


def _conv_readout_input_grad(spec: LayerSpec, d: Tensor, r: Tensor,
                             in_shape: tuple[int, ...]) -> Tensor:
    """Input cotangent of a conv whose output cotangent is R_ac D_icp: one transposed
    convolution of D with V[c, (a, c')] = g_w R_ac W_cc' (n samples into O'·C' channels)."""
    m = spec.module
    o, c = r.shape
    w = m.weight.detach() * spec.weight_gain                 # (c, c', kh, kw)
    v = (r.T[:, :, None, None, None] * w[:, None]).reshape(c, o * w.shape[1], *w.shape[2:])
    out_size = d.shape[2:]
    pad = conv_padding(m)[0]
    extra = [size - ((o_ - 1) * s - 2 * p + dl * (k - 1) + 1) for size, o_, s, p, dl, k in
             zip(in_shape[1:], out_size, m.stride, pad, m.dilation, m.kernel_size)]
    out = F.conv_transpose2d(d, v, None, m.stride, pad, tuple(extra), 1, m.dilation)
    return out.unflatten(1, (o, w.shape[1]))


def _generic_backward(step: Step, entry: _Entry, g: Tensor, need_input: bool
                      ) -> dict[str, Tensor]:
    """Every direction through a generic step in one vmapped autograd pass: the output
    cotangents of its parametrised modules, and of its input under the key ""."""
    leaf, y, records = entry.aux
    present = [s for s in step.specs if s.name in records and records[s.name][1].requires_grad]
    inputs = [records[s.name][1] for s in present]
    if need_input and leaf.requires_grad:
        inputs.append(leaf)
    if not inputs:
        return {}
    grads = torch.autograd.grad(y, inputs, grad_outputs=g.movedim(1, 0), is_grads_batched=True,
                                allow_unused=True)
    out = {}
    for s, t, gr in zip(present, inputs, grads):
        out[s.name] = (torch.zeros((g.shape[1], *t.shape), dtype=t.dtype, device=t.device)
                       if gr is None else gr).movedim(0, 1)
    if need_input and leaf.requires_grad:
        gr = grads[-1]
        out[""] = (torch.zeros((g.shape[1], *leaf.shape), dtype=leaf.dtype, device=leaf.device)
                   if gr is None else gr).movedim(0, 1)
    return out
