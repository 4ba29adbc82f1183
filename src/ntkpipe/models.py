"""MLPs and CNNs in the standard or the NTK parametrisation.

Every layer with parameters is a `Dense` or a `Conv2d`, subclasses of torch's own that carry two
scalars, `weight_gain` and `bias_gain`, applied in the forward pass:

    y = weight_gain · (W x) + bias_gain · b

Standard parametrisation (regime "feature"): gains 1, torch's default Kaiming-uniform init.
NTK parametrisation (regimes "lazy" and "ntk"): W, b ~ N(0, 1), weight_gain = σ_w / √fan_in,
bias_gain = σ_b (Jacot et al. 2018, eq. 1; the convention of neural-tangents' `stax`).
The NTK engine reads the gains, so both parametrisations get exact factorised kernels.

`arch: vit` is a small Vision Transformer (Dosovitskiy et al. 2020, "An image is worth 16x16
words", arXiv:2010.11929): a patch-embedding convolution, learned position embeddings,
pre-LayerNorm blocks of multi-head self-attention and an MLP, a final LayerNorm, the mean over
tokens and a linear head. Its Dense and Conv2d layers take the parametrisation's gains; the
attention logits are scaled by 1/√d_head in both parametrisations.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# lazy: the NTK parametrisation at lr · lazy_lr_scale; ntk: the same parametrisation at the lr
# as given (neural-tangents' default, the one Shan & Bordelon 2021 trained); feature: standard
REGIMES = ("lazy", "feature", "ntk")
ACTIVATIONS = ("relu", "tanh", "linear")
ARCHS = ("mlp", "cnn", "cnn-relu", "vit")


class _Gained:
    """Mixin: the gains of one layer and their initialisation."""

    weight_gain: float
    bias_gain: float

    def _init_gains(self, parametrization: str, weight_std: float, bias_std: float,
                    fan_in: int) -> None:
        if parametrization == "ntk":
            self.weight_gain = weight_std / math.sqrt(fan_in)
            self.bias_gain = bias_std
            with torch.no_grad():
                self.weight.normal_()
                if self.bias is not None:
                    self.bias.normal_()
        elif parametrization == "standard":
            self.weight_gain = 1.0
            self.bias_gain = 1.0  # torch's reset_parameters already ran
        else:
            raise ValueError(f"parametrization must be 'ntk' or 'standard', got {parametrization!r}")
        self.parametrization = parametrization


class Dense(nn.Linear, _Gained):
    """Linear layer with NTK-parametrisation gains."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 parametrization: str = "standard", weight_std: float = 1.0,
                 bias_std: float = 0.1) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_gains(parametrization, weight_std, bias_std, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        if self.weight_gain != 1.0:
            out = out * self.weight_gain
        if self.bias is not None:
            out = out + self.bias_gain * self.bias
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parametrization={self.parametrization}"


class Conv2d(nn.Conv2d, _Gained):
    """2-D convolution with NTK-parametrisation gains (fan_in = in_channels · kh · kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True, *, parametrization: str = "standard",
                 weight_std: float = 1.0, bias_std: float = 0.1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         bias=bias)
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_gains(parametrization, weight_std, bias_std, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._conv_forward(x, self.weight, None)
        if self.weight_gain != 1.0:
            out = out * self.weight_gain
        if self.bias is not None:
            out = out + (self.bias_gain * self.bias).view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, parametrization={self.parametrization}"


class PositionEmbedding(nn.Module):
    """Learned per-token embedding added to the tokens: y = x + weight_gain · E, E (T, width).

    Standard parametrisation: E ~ N(0, 0.02²), gain 1 (the ViT convention); NTK
    parametrisation: E ~ N(0, 1), gain `std` (a per-token bias, like the other biases' σ_b)."""

    def __init__(self, tokens: int, width: int, *, parametrization: str = "standard",
                 std: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(tokens, width))
        if parametrization == "ntk":
            nn.init.normal_(self.weight)
            self.weight_gain = std
        elif parametrization == "standard":
            nn.init.normal_(self.weight, std=0.02)
            self.weight_gain = 1.0
        else:
            raise ValueError(f"parametrization must be 'ntk' or 'standard', got {parametrization!r}")
        self.parametrization = parametrization

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.weight if self.weight_gain == 1.0 else self.weight_gain * self.weight)


class PatchTokens(nn.Module):
    """Patch-embedding feature map (N, width, h, w) to tokens (N, h·w, width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TokenMean(nn.Module):
    """Mean over tokens: (N, T, width) to (N, width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(q kᵀ / √d_head) v, with Dense projections."""

    def __init__(self, width: int, heads: int, **dense: object) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = Dense(width, 3 * width, **dense)
        self.proj = Dense(width, width, **dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, w = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, w))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, hidden: int, activation: str,
                 **dense: object) -> None:
        super().__init__()
        act = nn.GELU() if activation == "gelu" else activation_module(activation)
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads, **dense)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(Dense(width, hidden, **dense), act, Dense(hidden, width, **dense))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def activation_module(name: str) -> nn.Module:
    """The activation named in the config."""
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _weight_std(activation: str) -> float:
    # Variance-preserving σ_w: He for ReLU, 1 otherwise (Jacot et al. 2018 use σ_w = 1 for
    # general nonlinearities; √2 keeps ReLU pre-activations O(1) through depth).
    return math.sqrt(2.0) if activation == "relu" else 1.0


def make_mlp(in_features: int, width: int, depth: int, num_outputs: int, *,
             activation: str = "relu", parametrization: str = "standard", bias: bool = True,
             bias_std: float = 0.1) -> nn.Sequential:
    """MLP with `depth` hidden layers of `width` units and a linear readout."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be ≥ 1, got depth={depth}, width={width}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = in_features
    for _ in range(depth):
        layers += [Dense(fan_in, width, bias, parametrization=parametrization,
                         weight_std=_weight_std(activation), bias_std=bias_std),
                   activation_module(activation)]
        fan_in = width
    layers.append(Dense(fan_in, num_outputs, bias, parametrization=parametrization,
                        weight_std=1.0, bias_std=bias_std))
    return nn.Sequential(*layers)


def make_cnn(in_shape: Sequence[int], width: int, depth: int, num_outputs: int, *,
             activation: str = "relu", parametrization: str = "standard", bias: bool = True,
             bias_std: float = 0.1) -> nn.Sequential:
    """Small CNN: `depth` 3×3 conv layers of `width` channels (stride 2 after the first),
    global average pooling, linear readout."""
    if depth < 1 or width < 1:
        raise ValueError(f"depth and width must be ≥ 1, got depth={depth}, width={width}")
    channels = in_shape[0]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [Conv2d(channels, width, 3, stride=1 if i == 0 else 2, padding=1, bias=bias,
                          parametrization=parametrization, weight_std=_weight_std(activation),
                          bias_std=bias_std),
                   activation_module(activation)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               Dense(channels, num_outputs, bias, parametrization=parametrization,
                     weight_std=1.0, bias_std=bias_std)]
    return nn.Sequential(*layers)


def make_cnn_relu(in_shape: Sequence[int], num_outputs: int, *, width: int = 32,
                  parametrization: str = "standard", bias: bool = True,
                  bias_std: float = 0.1) -> nn.Sequential:
    """The `cnn-relu` of Cohen et al.'s edge-of-stability code: two 3×3 conv layers of `width`
    channels, each followed by ReLU and 2×2 max-pooling, then a linear readout."""
    c, h, w = in_shape
    if width < 1:
        raise ValueError(f"width must be ≥ 1, got {width}")
    if h < 4 or w < 4:
        raise ValueError(f"cnn-relu pools twice and needs images of at least 4×4, got {h}×{w}")
    layers: list[nn.Module] = [
        Conv2d(c, width, 3, padding=1, bias=bias, parametrization=parametrization,
               weight_std=math.sqrt(2.0), bias_std=bias_std),
        nn.ReLU(), nn.MaxPool2d(2),
        Conv2d(width, width, 3, padding=1, bias=bias, parametrization=parametrization,
               weight_std=math.sqrt(2.0), bias_std=bias_std),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        Dense(width * (h // 4) * (w // 4), num_outputs, bias, parametrization=parametrization,
              weight_std=1.0, bias_std=bias_std),
    ]
    return nn.Sequential(*layers)


def make_vit(in_shape: Sequence[int], width: int, depth: int, num_outputs: int, *,
             patch_size: int = 4, heads: int | None = None, mlp_ratio: float = 4.0,
             activation: str = "gelu", parametrization: str = "standard", bias: bool = True,
             bias_std: float = 0.1) -> nn.Sequential:
    """Small ViT on (C, H, W) images: `depth` blocks of `width` channels and `heads` heads
    (None: the largest of 4, 3, 2, 1 that divides width), patches of patch_size × patch_size,
    MLP hidden size round(mlp_ratio · width)."""
    if heads is None:
        heads = next(h for h in (4, 3, 2, 1) if width % h == 0) if width >= 1 else 1
    if len(in_shape) != 3:
        raise ValueError(f"vit needs images (C, H, W), got in_shape {tuple(in_shape)}")
    c, h, w = in_shape
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(f"vit patch_size {patch_size} must divide the image size {h}×{w}")
    if depth < 1 or width < 1 or heads < 1 or width % heads:
        raise ValueError(f"vit needs depth ≥ 1 and a width divisible by heads ≥ 1, got "
                         f"depth={depth}, width={width}, heads={heads}")
    hidden = round(mlp_ratio * width)
    if hidden < 1:
        raise ValueError(f"vit mlp_ratio · width must be ≥ 1, got {mlp_ratio} · {width}")
    dense = dict(bias=bias, parametrization=parametrization, bias_std=bias_std)
    layers: list[tuple[str, nn.Module]] = [
        ("patch", Conv2d(c, width, patch_size, stride=patch_size, **dense)),
        ("tokens", PatchTokens()),
        ("position", PositionEmbedding((h // patch_size) * (w // patch_size), width,
                                       parametrization=parametrization, std=bias_std))]
    layers += [(f"block{i}", TransformerBlock(width, heads, hidden, activation, **dense))
               for i in range(depth)]
    layers += [("norm", nn.LayerNorm(width)), ("pool", TokenMean()),
               ("head", Dense(width, num_outputs, **dense))]
    return nn.Sequential(OrderedDict(layers))


def build_model(arch: str, in_shape: Sequence[int], num_outputs: int, *, width: int,
                depth: int, activation: str, regime: str, bias: bool = True,
                bias_std: float = 0.1, seed: int = 0, patch_size: int = 4,
                heads: int | None = None, mlp_ratio: float = 4.0) -> nn.Sequential:
    """The network of one run, initialised from `seed` (regimes 'lazy' and 'ntk' = NTK
    parametrisation, 'feature' = standard parametrisation with Kaiming-uniform init).
    `patch_size`, `heads` and `mlp_ratio` shape `arch='vit'` only, whose activation may also be
    'gelu'."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    if activation not in ACTIVATIONS and not (arch == "vit" and activation == "gelu"):
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if arch == "cnn-relu" and activation != "relu":
        raise ValueError(f"cnn-relu is a ReLU network; activation must be 'relu', got {activation!r}")
    parametrization = "standard" if regime == "feature" else "ntk"
    # fork_rng restores every generator manual_seed touches (CPU and each CUDA device)
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if arch == "mlp":
            return make_mlp(math.prod(in_shape), width, depth, num_outputs,
                            activation=activation, parametrization=parametrization, bias=bias,
                            bias_std=bias_std)
        if arch == "cnn":
            return make_cnn(in_shape, width, depth, num_outputs, activation=activation,
                            parametrization=parametrization, bias=bias, bias_std=bias_std)
        if arch == "cnn-relu":
            return make_cnn_relu(in_shape, num_outputs, width=width,
                                 parametrization=parametrization, bias=bias, bias_std=bias_std)
        if arch == "vit":
            return make_vit(in_shape, width, depth, num_outputs, patch_size=patch_size,
                            heads=heads, mlp_ratio=mlp_ratio, activation=activation,
                            parametrization=parametrization, bias=bias, bias_std=bias_std)
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
