"""Per-layer rules of the NTK engine: which modules factorise, the contraction forms with their
FLOP and memory costs, each chunk's features, and the block a layer adds to a kernel tile.

A layer y = g_w·W x + g_b·b (a Linear over positions p, or a Conv2d with x_p the unfolded patch
of output position p) with output cotangents G_a = ∂f_a/∂y has ∂f_a/∂W = g_w Σ_p G_ap ⊗ x_p.
With x̃_p = (g_w x_p, g_b) its kernel is, in three exact forms:

  patch     Σ_{p,q} ⟨x̃_ip, x̃_jq⟩ ⟨G_iap, G_jbq⟩                      (sum over position pairs)
  jacobian  ⟨J_ia, J_jb⟩ with the layer's own Jacobian J_ia = Σ_p G_iap ⊗ x̃_ip
  readout   Σ_c R_ac R_bc ⟨H_ic, H_jc⟩ with H_ic = Σ_p D_icp x̃_ip,

(Novak, Sohl-Dickstein & Schoenholz 2022, "Fast finite width neural tangent kernel",
arXiv:2206.08720, §3–4: structured derivatives). The readout form applies when the layer's
output reaches a linear readout f = R u only through per-channel maps (activations, eval-mode
BatchNorm, pooling), so that G_iacp = R_ac D_icp with D_icp = ∂u_c/∂y_cp the same for every
output a. For a Linear on vectors (P = 1) H_ic = D_ic x̃_i is rank one, and the block is
⟨x̃_i, x̃_j⟩ Σ_c R_ac R_bc D_ic D_jc, symmetric in (a, b): one Gram per output pair a ≤ b, about
half the products of the (N·O)² Gram of the cotangents. Normalisation layers y = γ ⊙ x̂ + β
have ∂f_a/∂γ_k = Σ_p G_apk x̂_pk and ∂f_a/∂β_k = Σ_p G_apk; a position embedding y = x + g·E has ∂f_a/∂E = g·G_a. Any other module
with parameters gets its exact Jacobian from `torch.func`.

Features are sample-major (sample index first), so a range of samples is a contiguous block of
Gram rows; a tile of the kernel is (t1, O', t2, O') for "full", (t1, t2) for "trace" (the sum
over outputs; the caller divides by O) and (O', t1, t2) for "per_output".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.nn import functional as F

from ntkpipe.models import Conv2d as GainedConv2d, Dense, PositionEmbedding

FORMS = ("patch", "jacobian", "readout", "output")
# Elements a rank-one readout block may scale beyond its products (a row slab of D).
SLAB_ELEMS = 2 ** 22
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class LayerSpec:
    """How one parametrised module contributes to the kernel."""

    name: str
    module: nn.Module
    kind: str               # "linear", "conv", "affine", "additive" or "other"
    form: str = "jacobian"  # one of FORMS
    weight_gain: float = 1.0
    bias_gain: float = 1.0
    train_weight: bool = False
    train_bias: bool = False
    positions: int = 1      # P: output positions sharing the weight (tokens, pixels)
    fan_in: int = 0         # d: patch or input size per group
    fan_out: int = 0        # c: output channels (affine: normalised elements)
    groups: int = 1
    n_params: int = 0       # D: trainable scalars of the module
    out_numel: int = 0      # per-sample output size
    in_numel: int = 0       # per-sample input size
    readout: bool = False   # its output cotangent factorises as R ⊗ D (readout form allowed)
    last: bool = False      # the model's last step: its output cotangents are the directions
    slab_elems: int = SLAB_ELEMS  # rank-one readout: room for a scaled slab of D (the planner's)

    @property
    def width(self) -> int:
        """d': columns of the augmented input x̃ per group (affine: γ and β per channel)."""
        if self.kind == "affine":
            return int(self.train_weight) + int(self.train_bias)
        return (self.fan_in if self.train_weight else 0) + int(self.train_bias)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------

def module_kind(module: nn.Module) -> str:
    """The rule that gives `module`'s own parameters their exact kernel."""
    if type(module) in (nn.Linear, Dense):
        return "linear"
    if type(module) in (nn.Conv2d, GainedConv2d):
        return "conv"
    if type(module) is nn.LayerNorm:
        return "affine"
    if type(module) in BATCHNORMS and _batchnorm_is_fixed(module):
        return "affine"
    if type(module) is PositionEmbedding:
        return "additive"
    return "other"


def _batchnorm_is_fixed(module: nn.Module) -> bool:
    """Eval-mode BatchNorm with running statistics: a fixed per-channel affine map."""
    return not module.training and module.running_mean is not None


def check_batchnorm_mode(name: str, module: nn.Module) -> None:
    """Refuse BatchNorm that normalises with batch statistics (the per-sample NTK is undefined)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not _batchnorm_is_fixed(module):
        raise ValueError(f"module {name!r} ({type(module).__name__}) normalises with batch "
                         "statistics (training mode or no running statistics), which mixes the "
                         "samples: call model.eval() first")


def fill_spec(spec: LayerSpec, x: Tensor, y: Tensor) -> None:
    """Gains, trainable flags and sizes of a layer from one sample's input `x` and output `y`."""
    m = spec.module
    spec.out_numel, spec.in_numel = y[0].numel(), x[0].numel()
    spec.n_params = sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad)
    weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
    spec.train_weight = isinstance(weight, Tensor) and weight.requires_grad
    spec.train_bias = isinstance(bias, Tensor) and bias.requires_grad
    spec.weight_gain = float(getattr(m, "weight_gain", 1.0))
    spec.bias_gain = float(getattr(m, "bias_gain", 1.0))
    if spec.kind == "linear":
        spec.fan_out, spec.fan_in = weight.shape
        spec.positions = y[0].numel() // spec.fan_out
    elif spec.kind == "conv":
        spec.fan_out, spec.groups = weight.shape[0], m.groups
        spec.fan_in = weight[0].numel()
        spec.positions = y[0, 0].numel()
    elif spec.kind == "affine":
        spec.fan_out = _affine_channels(m)
        spec.positions = y[0].numel() // spec.fan_out
    elif spec.kind == "additive" and tuple(m.weight.shape) != tuple(y.shape[1:]):
        spec.kind = "other"  # a broadcast embedding: the generic rule is exact


def _affine_channels(module: nn.Module) -> int:
    """Number of per-element scales of a normalisation layer."""
    if isinstance(module, nn.LayerNorm):
        return math.prod(module.normalized_shape)
    return module.num_features


# ---------------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------------

def applicable_forms(spec: LayerSpec) -> tuple[str, ...]:
    """Forms that are exact for this layer."""
    forms = {"linear": ("patch", "jacobian"), "conv": ("patch", "jacobian"),
             "affine": ("jacobian",)}.get(spec.kind, ("jacobian",))
    if spec.last and spec.kind == "linear" and spec.positions == 1:
        forms += ("output",)
    return forms + ("readout",) if spec.readout and spec.kind != "other" else forms


def _directions_per_pair(n_out: int, mode: str) -> int:
    """Output pairs (a, b) a sample pair's block holds."""
    return n_out * n_out if mode in ("full", "sum_logits") else n_out


def form_flops(spec: LayerSpec, form: str, n_out: int, mode: str, rows: int,
               pairs: float) -> float:
    """FLOPs of `form` for the features of `rows` samples and `pairs` sample pairs."""
    o, p, d, c, g = n_out, spec.positions, spec.width, spec.fan_out, spec.groups
    dirs = _directions_per_pair(n_out, mode)
    if form == "jacobian":
        build = 2 * o * c * p * d if spec.kind in ("linear", "conv", "affine") else \
            2 * o * (spec.n_params + spec.in_numel + spec.out_numel)
        return rows * build + 2 * pairs * dirs * spec.n_params
    if form == "patch":
        return pairs * p * p * (2 * g * d + 2 * dirs * c + 2 * dirs * g)
    if form == "output":
        return pairs * (2 * d + o)
    if rank_one(spec):
        return pairs * (2 * d + 2 * c * mix_columns(n_out, mode) + 2 * dirs)
    mix = {"full": o * o, "sum_logits": 1, "per_output": o}.get(mode, 0)
    return rows * 2 * c * p * d + pairs * 2 * c * (d + mix)


def rank_one(spec: LayerSpec) -> bool:
    """Does the readout form factorise as ⟨x̃_i, x̃_j⟩ · (a Gram of D) (a Linear on vectors)?"""
    return spec.kind == "linear" and spec.positions == 1


def mix_columns(n_out: int, mode: str) -> int:
    """Distinct output weightings of the rank-one readout block: pairs a ≤ b, one per output,
    or one."""
    return {"full": n_out * (n_out + 1) // 2, "sum_logits": 1, "per_output": n_out}.get(mode, 1)


def feature_elems(spec: LayerSpec, form: str, n_out: int) -> int:
    """Elements per sample of a layer's stored features."""
    if form == "jacobian":
        return n_out * spec.n_params
    if form == "patch":
        return spec.positions * (spec.groups * spec.width + n_out * spec.fan_out)
    if form == "output":
        return spec.width
    if rank_one(spec):
        return spec.fan_out + spec.width
    return spec.fan_out * spec.width


def build_elems(spec: LayerSpec, form: str, n_out: int) -> int:
    """Elements per sample alive while a layer's features are built, beyond the cotangent."""
    p, o = spec.positions, n_out
    if form == "readout" and rank_one(spec):
        return 2 * (spec.fan_out + spec.width)
    if form == "output":
        return 2 * spec.width
    if spec.kind in ("linear", "conv"):
        patches = 3 * spec.groups * spec.width * p  # unfold, augmented copy, a transpose
        return patches + {"jacobian": 2 * o * spec.n_params, "patch": 2 * o * p * spec.fan_out,
                          "readout": 2 * spec.fan_out * spec.width}[form]
    if spec.kind == "affine":
        return 2 * spec.in_numel + 2 * o * spec.out_numel + 2 * o * spec.n_params
    return 4 * o * spec.n_params + 2 * o * (spec.in_numel + spec.out_numel)


def pair_elems(spec: LayerSpec, form: str, n_out: int, mode: str) -> int:
    """Elements per sample pair of the temporaries of a layer's block in one tile."""
    dirs = _directions_per_pair(n_out, mode)
    if form == "readout" and rank_one(spec):
        # the input Gram, one product per mix column, their (a, b) arrangement (the scaled
        # slab of D is the planner's fixed `slab_elems`)
        return 1 + mix_columns(n_out, mode) + dirs
    if form == "output":  # the input Gram, a broadcast product
        return 1 + dirs
    if form == "jacobian" or (form == "readout" and mode == "trace"):
        return dirs if mode == "per_output" else 0
    if form == "readout":
        return spec.fan_out + 2 * dirs
    p2 = spec.positions ** 2
    return (p2 + 2 * p2 * dirs) if spec.positions > 1 else 1 + dirs


def choose_form(spec: LayerSpec, implementation: str, n_out: int, mode: str, rows: int,
                pairs: float) -> str:
    """The layer's form under `implementation` ("auto": the fewest FLOPs)."""
    forms = applicable_forms(spec)
    if implementation == "jacobian":
        return "jacobian"
    if implementation == "factorised" and "patch" in forms:
        return "patch"
    if implementation == "structured" and "readout" in forms:
        return "readout"
    return min(forms, key=lambda f: form_flops(spec, f, n_out, mode, rows, pairs))


# ---------------------------------------------------------------------------------------------
# Inputs and cotangents in a canonical layout
# ---------------------------------------------------------------------------------------------

def conv_padding(module: nn.Module) -> tuple[tuple[int, int] | None, tuple[int, ...], str]:
    """(symmetric padding or None, explicit F.pad amounts, pad mode) of a Conv2d."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0), (0, 0, 0, 0), "constant"
        pads = []
        for k, dil in zip(reversed(module.kernel_size), reversed(module.dilation)):
            total = dil * (k - 1)  # 'same': torch puts the extra pixel at the end
            pads += [total // 2, total - total // 2]
        return None, tuple(pads), "constant" if module.padding_mode == "zeros" else \
            module.padding_mode
    ph, pw = module.padding
    if module.padding_mode == "zeros":
        return (ph, pw), (pw, pw, ph, ph), "constant"
    return None, (pw, pw, ph, ph), module.padding_mode


def unfolded_patches(module: nn.Module, x: Tensor) -> Tensor:
    """The patches each output position of a Conv2d sees: (n, C_in·kh·kw, P)."""
    symmetric, pads, mode = conv_padding(module)
    if symmetric is None:
        x = F.pad(x, pads, mode=mode)
        symmetric = (0, 0)
    return F.unfold(x, module.kernel_size, module.dilation, symmetric, module.stride)


def augmented_input(spec: LayerSpec, x: Tensor) -> Tensor:
    """x̃ = (g_w·x, g_b) per group and output position: (n, g, P, d')."""
    n, g, p = x.shape[0], spec.groups, spec.positions
    out = torch.empty(n, g, p, spec.width, dtype=x.dtype, device=x.device)
    if spec.train_bias:
        out[..., -1] = spec.bias_gain
    if not spec.train_weight:
        return out
    if spec.kind == "linear":
        torch.mul(x.reshape(n, 1, p, spec.fan_in), spec.weight_gain, out=out[..., :spec.fan_in])
    elif g == 1:
        _patches_into(spec.module, x, spec.weight_gain, out[:, 0, :, :spec.fan_in])
    else:
        raw = unfolded_patches(spec.module, x).view(n, g, spec.fan_in, p).transpose(2, 3)
        torch.mul(raw, spec.weight_gain, out=out[..., :spec.fan_in])
    return out


def _patches_into(module: nn.Module, x: Tensor, gain: float, out: Tensor) -> None:
    """gain × the patches of a Conv2d (groups 1) into out (n, P, kh·kw·C_in): one strided copy
    from the channels-last input (F.unfold, or one copy per kernel tap, is 2–3× slower)."""
    n, c = x.shape[:2]
    symmetric, pads, mode = conv_padding(module)
    if any(pads):
        if symmetric is not None:  # zeros: a channels-last padded copy
            xp = x.new_zeros(n, x.shape[2] + pads[2] + pads[3], x.shape[3] + pads[0] + pads[1],
                             c)
            xp[:, pads[2]:pads[2] + x.shape[2], pads[0]:pads[0] + x.shape[3]] = \
                x.permute(0, 2, 3, 1)
        else:
            xp = F.pad(x, pads, mode=mode).permute(0, 2, 3, 1)
    else:
        xp = x.permute(0, 2, 3, 1)
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    ho, wo = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1, (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    sn, sy, sx, sc = xp.stride()
    src = xp.as_strided((n, ho, wo, kh, kw, c), (sn, sh * sy, sw * sx, dh * sy, dw * sx, sc),
                        xp.storage_offset())
    taps = out.view(n, ho, wo, kh, kw, c)
    if gain == 1:
        taps.copy_(src)
    else:
        torch.mul(src, gain, out=taps)


def channel_major(spec: LayerSpec, t: Tensor, lead: int) -> Tensor:
    """A tensor (lead dims, *per-sample output) as (lead dims, c, P) (a view where possible)."""
    if spec.kind == "conv" or (spec.kind == "affine" and not isinstance(spec.module, nn.LayerNorm)):
        return t.reshape(*t.shape[:lead], spec.fan_out, spec.positions)
    return t.reshape(*t.shape[:lead], spec.positions, spec.fan_out).transpose(-1, -2)


def normalised_input(module: nn.Module, x: Tensor) -> Tensor:
    """x̂ of a normalisation layer y = γ ⊙ x̂ + β, shaped like x."""
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(x, module.normalized_shape, None, None, module.eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return (x - module.running_mean.view(shape)) * torch.rsqrt(
        module.running_var.view(shape) + module.eps)


# ---------------------------------------------------------------------------------------------
# Features of one chunk
# ---------------------------------------------------------------------------------------------

def layer_features(spec: LayerSpec, x: Tensor, g: Tensor, mode: str) -> dict[str, Tensor]:
    """Features of a layer from its input x (n, ...) and output cotangents g (n, O', *out)."""
    if spec.form == "jacobian":
        return {"J": _jacobian(spec, x, g)}
    xt = augmented_input(spec, x)                      # (n, g, P, d')
    gc = channel_major(spec, g, 2)                     # (n, O', c, P)
    n, o = gc.shape[:2]
    grouped = gc.reshape(n, o, spec.groups, spec.fan_out // spec.groups, spec.positions)
    if mode == "trace":  # (n, g, P, O', c_g): the sum over outputs becomes one Gram
        gf = grouped.permute(0, 2, 4, 1, 3).contiguous()
    else:                # (n, O', g, P, c_g)
        gf = grouped.transpose(3, 4).contiguous()
    return {"X": xt, "G": gf}


def readout_features(spec: LayerSpec, x: Tensor, d: Tensor, r: Tensor,
                     mode: str) -> dict[str, Tensor]:
    """Readout-form features from the input x, D = ∂u/∂y (n, *out) and R (O', c)."""
    if rank_one(spec):
        return {"D": d.reshape(d.shape[0], spec.fan_out), "X": augmented_input(spec, x)[:, 0, 0],
                "M": rank_one_mix(r, mode)}
    dc = channel_major(spec, d, 1)                     # (n, c, P)
    if spec.kind == "affine":
        xh = channel_major(spec, normalised_input(spec.module, x), 1)
        cols = ([(dc * xh).sum(-1)] if spec.train_weight else []) + \
            ([dc.sum(-1)] if spec.train_bias else [])
        h = torch.stack(cols, dim=-1)                  # (n, c, d')
    else:
        xt = augmented_input(spec, x)                  # (n, g, P, d')
        n, g = xt.shape[:2]
        dg = dc.reshape(n, g, spec.fan_out // g, spec.positions)
        h = torch.matmul(dg, xt).reshape(n, spec.fan_out, spec.width)
    if mode == "trace":  # Σ_a R_ac² K_c = the Gram of √w_c H_c
        weight = r.square().sum(0).sqrt()
        return {"J": (h * weight[:, None]).reshape(h.shape[0], 1, -1)}
    feats = {"H": h.transpose(0, 1).contiguous()}      # (c, n, d')
    if mode == "per_output":
        feats["M"] = r.square()                        # (O', c)
    else:
        feats["M"] = (r.T[:, :, None] * r.T[:, None, :]).reshape(r.shape[1], -1)  # (c, O'²)
    return feats


def output_features(spec: LayerSpec, x: Tensor, cot: Tensor) -> dict[str, Tensor]:
    """Features of a last Linear layer, whose output cotangent is the directions C (O', O) for
    every sample: Θ_iajb = (C Cᵀ)_ab ⟨x̃_i, x̃_j⟩, so x̃ (n, d') and C Cᵀ."""
    return {"Y": augmented_input(spec, x)[:, 0, 0], "M": cot @ cot.T}


def rank_one_mix(r: Tensor, mode: str) -> Tensor:
    """Weights (m, c) of the rank-one readout block, one row per mix column: R_ac R_bc for
    a ≤ b ("full", "sum_logits"), R_ac² ("per_output"), Σ_a R_ac² ("trace")."""
    if mode == "trace":
        return r.square().sum(0, keepdim=True)
    if mode == "per_output":
        return r.square()
    a, b = output_pairs(r.shape[0], r.device)
    return r[a] * r[b]


def output_pairs(o: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(a, b) of the output pairs a ≤ b, in the order of the rank-one mix rows."""
    return torch.triu_indices(o, o, device=device)


def _jacobian(spec: LayerSpec, x: Tensor, g: Tensor) -> Tensor:
    """The layer's own Jacobian (n, O', D), gains folded in."""
    n, o = g.shape[:2]
    if spec.kind == "affine":
        gc = channel_major(spec, g, 2)                 # (n, O', c, P)
        xh = channel_major(spec, normalised_input(spec.module, x), 1).unsqueeze(1)
        cols = ([(gc * xh).sum(-1)] if spec.train_weight else []) + \
            ([gc.sum(-1)] if spec.train_bias else [])
        return torch.stack(cols, dim=-1).reshape(n, o, -1)
    if spec.kind == "additive":
        return (spec.weight_gain * g).reshape(n, o, -1)
    if spec.kind == "other":
        return _module_jacobian(spec, x, g)
    xt = augmented_input(spec, x)                      # (n, g, P, d')
    gc = channel_major(spec, g, 2)                     # (n, O', c, P)
    out = torch.empty(n, o, spec.fan_out, spec.width, dtype=x.dtype, device=x.device)
    if spec.groups > 1:
        cg = spec.fan_out // spec.groups
        gg = gc.reshape(n, o, spec.groups, cg, spec.positions)
        out.view(n, o, spec.groups, cg, spec.width).copy_(
            torch.einsum("iagcp,igpk->iagck", gg, xt))
        return out.view(n, o, -1)
    patches = xt[:, 0]                                 # (n, P, d')
    merged = _try_view(gc, (n, o * spec.fan_out, spec.positions))
    if merged is not None and merged.stride(1) == 1 and spec.positions > 1:
        # channels-last cotangents: Xᵀ G as one matmul over positions (1.3–1.4× faster than
        # Gᵀ X with this layout), features ordered (d', c) within each output
        t = torch.bmm(patches.transpose(1, 2), merged.transpose(1, 2))  # (n, d', O'·c)
        out = out.view(n, o, spec.width, spec.fan_out)
        out.copy_(t.view(n, spec.width, o, spec.fan_out).transpose(1, 2))
    elif merged is not None:  # one batched matmul straight into the buffer
        torch.bmm(merged, patches, out=out.view(n, o * spec.fan_out, spec.width))
    elif (rows := _try_view(gc.transpose(2, 3), (n * o, spec.positions, spec.fan_out))
          ) is not None:  # token-major cotangents: one matmul per (sample, output)
        xe = patches.unsqueeze(1).expand(n, o, *patches.shape[1:]).reshape(n * o,
                                                                            *patches.shape[1:])
        torch.bmm(rows.transpose(1, 2), xe, out=out.view(n * o, spec.fan_out, spec.width))
    else:
        for a in range(o):
            out[:, a] = torch.bmm(gc[:, a], patches)
    return out.view(n, o, -1)


def _try_view(t: Tensor, shape: tuple[int, ...]) -> Tensor | None:
    """`t.view(shape)` if the strides allow it, else None."""
    try:
        return t.view(shape)
    except RuntimeError:
        return None


def _module_jacobian(spec: LayerSpec, x: Tensor, g: Tensor) -> Tensor:
    """Exact per-sample Jacobian (n, O', D) of any module's own parameters, as vector-Jacobian
    products of its output cotangents."""
    module = spec.module
    params = {k: p.detach() for k, p in module.named_parameters(recurse=False) if p.requires_grad}

    def sample_vjp(xi: Tensor, cotangent: Tensor) -> Tensor:
        _, pullback = vjp(lambda p: functional_call(module, p, (xi.unsqueeze(0),)).squeeze(0),
                          params)
        return torch.cat([v.flatten() for v in pullback(cotangent)[0].values()])

    over_outputs = vmap(sample_vjp, in_dims=(None, 0))
    try:
        return vmap(over_outputs, in_dims=(0, 0))(x, g)
    except RuntimeError:  # some batching rules (e.g. prelu's backward) fail nested: one level
        return torch.stack([over_outputs(xi, gi) for xi, gi in zip(x, g)])


# ---------------------------------------------------------------------------------------------
# Blocks: one layer's contribution to a tile
# ---------------------------------------------------------------------------------------------

def add_block(spec: LayerSpec, f1: dict[str, Tensor], f2: dict[str, Tensor], s1: slice,
              s2: slice, mode: str, tile: Tensor, overwrite: bool = False) -> None:
    """Add the layer's kernel between samples s1 of f1 and s2 of f2 to `tile` in place (or
    write it there, when `overwrite`: the first layer of a tile saves zeroing it)."""
    if "J" in f1:
        _jacobian_block(f1["J"][s1], f2["J"][s2], mode, tile, overwrite)
    elif "D" in f1:
        _rank_one_block(f1["D"][s1], f2["D"][s2], f1["X"][s1], f2["X"][s2], f1["M"], mode, tile,
                        spec.slab_elems, overwrite)
    elif "H" in f1:
        _readout_block(f1["H"][:, s1], f2["H"][:, s2], f1["M"], mode, tile, overwrite)
    elif "Y" in f1:
        _output_block(f1["Y"][s1], f2["Y"][s2], f1["M"], mode, tile, overwrite)
    else:
        for grp in range(f1["X"].shape[1]):
            _patch_block(f1["X"][s1, grp], f2["X"][s2, grp], f1["G"][s1], f2["G"][s2], grp,
                         mode, tile, overwrite and grp == 0)


def _jacobian_block(j1: Tensor, j2: Tensor, mode: str, tile: Tensor, overwrite: bool) -> None:
    """Θ = J1 J2ᵀ."""
    (t1, o, dim), t2 = j1.shape, j2.shape[0]
    beta = 0 if overwrite else 1
    if mode == "per_output":
        tile.baddbmm_(j1.transpose(0, 1), j2.permute(1, 2, 0), beta=beta)
    elif mode == "trace":
        tile.addmm_(j1.reshape(t1, o * dim), j2.reshape(t2, o * dim).T, beta=beta)
    else:
        tile.view(t1 * o, t2 * o).addmm_(j1.reshape(t1 * o, dim), j2.reshape(t2 * o, dim).T,
                                         beta=beta)


def _accumulate(tile: Tensor, value: Tensor, overwrite: bool) -> None:
    """tile = value or tile += value."""
    if overwrite:
        tile.copy_(value)
    else:
        tile.add_(value)


def _output_block(x1: Tensor, x2: Tensor, cc: Tensor, mode: str, tile: Tensor,
                  overwrite: bool) -> None:
    """(C Cᵀ)_ab ⟨x̃1_i, x̃2_j⟩: on the output diagonal alone when C Cᵀ is the identity."""
    s = x1 @ x2.T                                                     # (t1, t2)
    if mode == "trace":
        _accumulate(tile, s.mul_(cc.trace()), overwrite)
    elif mode == "per_output":
        _accumulate(tile, s[None] * cc.diagonal()[:, None, None], overwrite)
    elif torch.equal(cc, torch.eye(cc.shape[0], dtype=cc.dtype, device=cc.device)):
        if overwrite:
            tile.zero_()
        tile.diagonal(dim1=1, dim2=3).add_(s.unsqueeze(-1))
    else:
        _accumulate(tile, s[:, None, :, None] * cc[None, :, None, :], overwrite)


def _readout_block(h1: Tensor, h2: Tensor, mix: Tensor, mode: str, tile: Tensor,
                   overwrite: bool) -> None:
    """Σ_c R_ac R_bc K_c with K_c = H1_c H2_cᵀ per channel."""
    c, t1, t2 = h1.shape[0], h1.shape[1], h2.shape[1]
    k = torch.bmm(h1, h2.transpose(1, 2)).view(c, t1 * t2)
    if mode == "per_output":
        rows = _try_view(tile, (tile.shape[0], t1 * t2))  # not when the tile is a strided view
        if rows is None:
            _accumulate(tile, (mix @ k).view(tile.shape), overwrite)
        else:
            rows.addmm_(mix, k, beta=0 if overwrite else 1)
    else:
        o = tile.shape[1]
        _accumulate(tile, (k.T @ mix).view(t1, t2, o, o).permute(0, 2, 1, 3), overwrite)


def _rank_one_block(d1: Tensor, d2: Tensor, x1: Tensor, x2: Tensor, mix: Tensor, mode: str,
                    tile: Tensor, slab_elems: int, overwrite: bool) -> None:
    """⟨x̃1_i, x̃2_j⟩ Σ_c M_qc D1_ic D2_jc for every mix row q, placed at (a, b) and (b, a)
    (or at its output, or the trace); rows in slabs so that the scaled copy of D1 stays within
    the size of the products plus `slab_elems`."""
    (t1, c), t2, m = d1.shape, d2.shape[0], mix.shape[0]
    s = x1 @ x2.T                                                     # (t1, t2)
    k = torch.empty(m, t1, t2, dtype=d1.dtype, device=d1.device)
    slab = max(1, min(t1, (m * t1 * t2 + slab_elems) // (m * c)))
    buffer = torch.empty(m * slab * c, dtype=d1.dtype, device=d1.device)
    for r in range(0, t1, slab):
        rows = slice(r, min(r + slab, t1))
        scaled = buffer[:m * (rows.stop - r) * c].view(m, -1, c)
        torch.mul(d1[None, rows], mix[:, None, :], out=scaled)
        scaled = scaled.view(-1, c)                                    # (m·slab, c)
        if slab == t1:
            torch.mm(scaled, d2.T, out=k.view(m * t1, t2))
        else:
            k[:, rows] = (scaled @ d2.T).view(m, -1, t2)
    k.mul_(s)
    if mode == "trace":
        _accumulate(tile, k[0], overwrite)
    elif mode == "per_output":
        _accumulate(tile, k, overwrite)
    else:
        o = tile.shape[1]
        a, b = output_pairs(o, k.device)
        index = torch.empty(o, o, dtype=torch.long, device=k.device)
        index[a, b] = index[b, a] = torch.arange(m, device=k.device)
        _accumulate(tile, k[index.flatten()].view(o, o, t1, t2).permute(2, 0, 3, 1), overwrite)


def _patch_block(x1: Tensor, x2: Tensor, g1: Tensor, g2: Tensor, grp: int, mode: str,
                 tile: Tensor, overwrite: bool) -> None:
    """Σ_{p,q} ⟨x̃1_p, x̃2_q⟩ ⟨G1_p, G2_q⟩ for one group of channels."""
    t1, p, _ = x1.shape
    t2 = x2.shape[0]
    s = (x1.reshape(t1 * p, -1) @ x2.reshape(t2 * p, -1).T).view(t1, p, t2, p)
    if mode == "trace":  # G (t, g, P, O', c_g)
        a1, a2 = g1[:, grp].reshape(t1 * p, -1), g2[:, grp].reshape(t2 * p, -1)
        if p == 1:
            _hadamard_gram(a1, a2, s.view(t1, t2), tile, overwrite)
        else:
            t = (a1 @ a2.T).view(t1, p, t2, p)
            _accumulate(tile, torch.einsum("ipjq,ipjq->ij", s, t), overwrite)
        return
    o = g1.shape[1]
    if mode == "per_output":  # G (t, O', g, P, c_g)
        a1 = g1[:, :, grp].transpose(0, 1).reshape(o, t1 * p, -1)
        a2 = g2[:, :, grp].transpose(0, 1).reshape(o, t2 * p, -1)
        if p == 1:
            _hadamard_gram(a1, a2, s.view(1, t1, t2), tile, overwrite)
        else:
            t = torch.bmm(a1, a2.transpose(1, 2)).view(o, t1, p, t2, p)
            _accumulate(tile, torch.einsum("ipjq,aipjq->aij", s, t), overwrite)
        return
    a1 = g1[:, :, grp].reshape(t1 * o * p, -1)
    a2 = g2[:, :, grp].reshape(t2 * o * p, -1)
    if p == 1:
        _hadamard_gram(a1, a2, s.view(t1, 1, t2, 1), tile, overwrite)
    else:
        t = (a1 @ a2.T).view(t1, o, p, t2, o, p)
        _accumulate(tile, torch.einsum("ipjq,iapjbq->iajb", s, t), overwrite)


def _hadamard_gram(a1: Tensor, a2: Tensor, s: Tensor, tile: Tensor, overwrite: bool) -> None:
    """tile (+)= (A1 A2ᵀ) ⊙ s for A (rows, d) or (batch, rows, d), the product read in the
    tile's shape and s broadcast against it; when overwriting, the product lands in the tile."""
    if overwrite:
        torch.matmul(a1, a2.transpose(-1, -2), out=tile.view(*a1.shape[:-1], a2.shape[-2]))
        tile.mul_(s)
    else:
        tile.addcmul_(torch.matmul(a1, a2.transpose(-1, -2)).view(tile.shape), s)
