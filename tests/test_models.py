"""Tests of ntkpipe.models: NTK / standard parametrisation layers and the model builders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ntkpipe import models
from ntkpipe.models import Conv2d, Dense, build_model

IN_SHAPE = (3, 8, 8)


def _gained_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, (Dense, Conv2d, models.PositionEmbedding))]


# ---- Dense ------------------------------------------------------------------------------------

def test_dense_ntk_gains_and_forward_formula():
    torch.manual_seed(0)
    layer = Dense(16, 4, parametrization="ntk", weight_std=2.0, bias_std=0.3)
    assert layer.weight_gain == pytest.approx(0.5)  # 2 / √16
    assert layer.bias_gain == pytest.approx(0.3)
    x = torch.randn(5, 16)
    w = layer.weight.detach().double().numpy()
    b = layer.bias.detach().double().numpy()
    expected = 0.5 * x.double().numpy() @ w.T + 0.3 * b
    np.testing.assert_allclose(layer(x).detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_dense_ntk_without_bias():
    torch.manual_seed(1)
    layer = Dense(9, 2, bias=False, parametrization="ntk", weight_std=1.5)
    assert layer.bias is None
    assert layer.weight_gain == pytest.approx(0.5)  # 1.5 / 3
    x = torch.randn(3, 9)
    torch.testing.assert_close(layer(x), 0.5 * x @ layer.weight.T)


def test_dense_ntk_init_is_standard_normal():
    torch.manual_seed(2)
    layer = Dense(500, 200, parametrization="ntk")
    w = layer.weight.detach().numpy()
    assert abs(w.mean()) < 0.01
    assert w.std() == pytest.approx(1.0, abs=0.01)
    assert layer.bias.detach().std().item() == pytest.approx(1.0, abs=0.2)


def test_dense_standard_equals_torch_linear():
    torch.manual_seed(3)
    layer = Dense(7, 3)
    assert layer.weight_gain == pytest.approx(1.0) and layer.bias_gain == pytest.approx(1.0)
    ref = nn.Linear(7, 3)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(4, 7)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-6, atol=1e-6)


def test_dense_standard_uses_torch_default_init():
    torch.manual_seed(4)
    layer = Dense(7, 3)
    torch.manual_seed(4)
    ref = nn.Linear(7, 3)
    torch.testing.assert_close(layer.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.bias, ref.bias, rtol=0, atol=0)


def test_bad_parametrization():
    with pytest.raises(ValueError, match="parametrization"):
        Dense(3, 2, parametrization="mup")
    with pytest.raises(ValueError, match="parametrization"):
        Conv2d(3, 2, 3, parametrization="NTK")


# ---- Conv2d -----------------------------------------------------------------------------------

def test_conv_ntk_gain_uses_full_fan_in():
    layer = Conv2d(3, 4, 3, parametrization="ntk", weight_std=math.sqrt(2.0), bias_std=0.2)
    assert layer.weight_gain == pytest.approx(math.sqrt(2.0) / math.sqrt(27))
    assert layer.bias_gain == pytest.approx(0.2)


def test_conv_ntk_forward_hand_case():
    """1 channel, 2×2 kernel, stride 2, padding 1 on a 3×3 input, computed by explicit loops."""
    layer = Conv2d(1, 1, 2, stride=2, padding=1, parametrization="ntk", weight_std=2.0,
                   bias_std=0.5)
    assert layer.weight_gain == pytest.approx(1.0)  # 2 / √4 — the forward must still be exact
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        layer.bias.fill_(10.0)
    x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    padded = np.pad(x[0, 0].numpy(), 1)
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    expected = np.array([[np.sum(padded[2 * i:2 * i + 2, 2 * j:2 * j + 2] * w) + 0.5 * 10.0
                          for j in range(2)] for i in range(2)])
    # e.g. top-left: only x[0, 0] = 1 meets w[1, 1] = 4 → 4 + 5
    assert expected[0, 0] == pytest.approx(9.0)
    np.testing.assert_allclose(layer(x)[0, 0].detach().numpy(), expected)


def test_conv_ntk_forward_equals_scaled_conv():
    torch.manual_seed(5)
    layer = Conv2d(3, 4, 3, stride=2, padding=1, parametrization="ntk", weight_std=1.3,
                   bias_std=0.1)
    x = torch.randn(2, 3, 7, 7)
    gain = 1.3 / math.sqrt(27)
    expected = F.conv2d(x.double(), gain * layer.weight.double(), 0.1 * layer.bias.double(),
                        stride=2, padding=1)
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_conv_standard_equals_torch_conv():
    torch.manual_seed(6)
    layer = Conv2d(3, 5, 3, stride=2, padding=1)
    ref = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 9, 9)
    # Different convolution kernels may sum in a different order: equal to float rounding.
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-6)


# ---- build_model ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("regime", models.REGIMES)
def test_build_model_output_shape_and_parametrisation(arch, regime):
    activation = "relu" if arch == "cnn-relu" else "tanh"  # cnn-relu is ReLU only
    model = build_model(arch, IN_SHAPE, 7, width=6, depth=2, activation=activation,
                        regime=regime, seed=0)
    out = model(torch.randn(4, *IN_SHAPE))
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    expected = "standard" if regime == "feature" else "ntk"
    layers = _gained_layers(model)
    assert layers and all(m.parametrization == expected for m in layers)
    # every parameter belongs to a gained layer (the NTK engine reads their gains), or to a
    # LayerNorm (the ViT's; its γ, β carry no gain)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm)
                for p in m.parameters())
    assert sum(p.numel() for m in layers for p in m.parameters()) + norms == \
        models.parameter_count(model)


def test_mlp_structure_and_parameter_count():
    model = build_model("mlp", (2, 6), 3, width=8, depth=2, activation="relu", regime="lazy")
    dense = _gained_layers(model)
    assert [(d.in_features, d.out_features) for d in dense] == [(12, 8), (8, 8), (8, 3)]
    # σ_w = √2 for the ReLU hidden layers, 1 for the readout
    assert [d.weight_gain for d in dense] == pytest.approx(
        [math.sqrt(2 / 12), math.sqrt(2 / 8), 1 / math.sqrt(8)])
    assert models.parameter_count(model) == (12 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    assert sum(isinstance(m, nn.ReLU) for m in model) == 2


def test_tanh_mlp_uses_unit_weight_std():
    model = build_model("mlp", (4,), 2, width=16, depth=1, activation="tanh", regime="lazy")
    assert [d.weight_gain for d in _gained_layers(model)] == pytest.approx([0.5, 0.25])


def test_cnn_relu_readout_fan_in():
    model = build_model("cnn-relu", (3, 8, 8), 10, width=4, depth=2, activation="relu",
                        regime="lazy")
    assert _gained_layers(model)[-1].in_features == 4 * 2 * 2


@pytest.mark.parametrize("arch", models.ARCHS)
def test_seeding_is_deterministic_and_seed_dependent(arch):
    kw = dict(width=5, depth=2, activation="relu", regime="lazy")
    a = build_model(arch, IN_SHAPE, 3, seed=4, **kw).state_dict()
    b = build_model(arch, IN_SHAPE, 3, seed=4, **kw).state_dict()
    c = build_model(arch, IN_SHAPE, 3, seed=5, **kw).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_build_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    build_model("mlp", IN_SHAPE, 3, width=32, depth=2, activation="relu", regime="feature",
                seed=9)
    with pytest.raises(ValueError):
        build_model("bogus", IN_SHAPE, 3, width=32, depth=2, activation="relu", regime="lazy")
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(torch.rand(5), expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_build_model_leaves_the_cuda_rng_alone():
    torch.cuda.manual_seed_all(1234)
    torch.rand(3, device="cuda")
    state = torch.cuda.get_rng_state_all()
    build_model("mlp", IN_SHAPE, 3, width=8, depth=1, activation="relu", regime="lazy", seed=9)
    after = torch.cuda.get_rng_state_all()
    assert all(torch.equal(a, b) for a, b in zip(state, after))


def test_ntk_output_variance_is_order_one_independent_of_width():
    x = torch.randn(256, *IN_SHAPE, generator=torch.Generator().manual_seed(0))
    variances = {}
    for width in (64, 4096):
        model = build_model("mlp", IN_SHAPE, 10, width=width, depth=2, activation="relu",
                            regime="lazy", seed=1)
        with torch.no_grad():
            variances[width] = model(x).var().item()
    # infinite-width value for unit-variance inputs: ≈ 1.02 (σ_w = √2 hidden, 1 readout, σ_b = 0.1)
    for v in variances.values():
        assert 0.4 < v < 2.5
    assert 1 / 2.5 < variances[64] / variances[4096] < 2.5


def test_standard_parametrisation_output_shrinks_with_width_ntk_does_not():
    """Contrast: Kaiming-uniform readout (1/√fan_in bound, no gain) vs NTK gains."""
    x = torch.randn(128, *IN_SHAPE, generator=torch.Generator().manual_seed(1))
    std = {}
    for regime in ("feature", "lazy"):
        model = build_model("mlp", IN_SHAPE, 10, width=1024, depth=2, activation="relu",
                            regime=regime, seed=2)
        with torch.no_grad():
            std[regime] = model(x).var().item()
    assert std["feature"] < 0.2 * std["lazy"]


@pytest.mark.parametrize("kw, match", [
    (dict(arch="resnet"), "arch"),
    (dict(regime="mean_field"), "regime"),
    (dict(activation="gelu"), "activation"),
    (dict(arch="cnn", activation="sigmoid"), "activation"),
    (dict(width=0), "width"),
    (dict(arch="cnn", width=0), "width"),
    (dict(depth=0), "depth"),
])
def test_bad_arguments_raise_value_error(kw, match):
    args = dict(arch="mlp", width=4, depth=2, activation="relu", regime="lazy")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        build_model(args.pop("arch"), IN_SHAPE, 3, **args)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("width", [0, -3])
def test_cnn_relu_bad_width_raises_value_error(width):
    with pytest.raises(ValueError, match="width"):
        build_model("cnn-relu", IN_SHAPE, 3, width=width, depth=2, activation="relu",
                    regime="lazy")


def test_cnn_relu_bad_activation_raises_value_error():
    with pytest.raises(ValueError, match="activation"):
        build_model("cnn-relu", IN_SHAPE, 3, width=4, depth=2, activation="bogus",
                    regime="lazy")


def test_activation_module():
    assert isinstance(models.activation_module("relu"), nn.ReLU)
    assert isinstance(models.activation_module("tanh"), nn.Tanh)
    assert isinstance(models.activation_module("linear"), nn.Identity)
    with pytest.raises(ValueError, match="activation"):
        models.activation_module("softplus")


# ---- ViT --------------------------------------------------------------------------------------

def _vit(**kw) -> nn.Module:
    args = dict(width=8, depth=2, activation="gelu", regime="lazy", patch_size=4, heads=2,
                mlp_ratio=1.5, seed=0)
    args.update(kw)
    return build_model("vit", IN_SHAPE, 5, **args)


def test_vit_structure_tokens_and_gains():
    model = _vit()
    assert [name for name, _ in model.named_children()] == [
        "patch", "tokens", "position", "block0", "block1", "norm", "pool", "head"]
    assert model.position.weight.shape == (4, 8)  # (8/4)² tokens of width 8
    assert model.patch.kernel_size == (4, 4) and model.patch.stride == (4, 4)
    assert model.block0.attention.heads == 2
    assert model.block0.mlp[0].out_features == 12  # round(1.5 · 8)
    assert isinstance(model.block0.mlp[1], nn.GELU)
    assert model.patch.weight_gain == pytest.approx(1 / math.sqrt(3 * 16))
    assert model.block0.attention.qkv.weight_gain == pytest.approx(1 / math.sqrt(8))
    assert model.position.weight_gain == pytest.approx(0.1)  # NTK: N(0, 1) times σ_b
    standard = _vit(regime="feature")
    assert standard.position.weight_gain == pytest.approx(1.0)
    assert standard.position.weight.std().item() < 0.05  # N(0, 0.02²)


def test_vit_attention_equals_a_direct_computation():
    torch.manual_seed(1)
    attn = models.SelfAttention(6, 2)
    x = torch.randn(3, 5, 6)
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(6, dim=-1)
    heads = [torch.softmax(q[..., h:h + 3] @ k[..., h:h + 3].transpose(1, 2) / math.sqrt(3), -1)
             @ v[..., h:h + 3] for h in (0, 3)]
    expected = torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected, rtol=1e-5, atol=1e-6)


def test_vit_block_is_pre_layernorm_residual():
    torch.manual_seed(2)
    block = models.TransformerBlock(4, 2, 8, "relu")
    x = torch.randn(2, 3, 4)
    h = x + block.attention(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))


def test_vit_default_heads_divide_the_width():
    assert _vit(width=6, heads=None).block0.attention.heads == 3
    assert _vit(width=5, heads=None).block0.attention.heads == 1
    assert _vit(width=8, heads=None).block0.attention.heads == 4


@pytest.mark.parametrize("kw, match", [
    (dict(patch_size=3), "patch_size 3 must divide the image size 8×8"),
    (dict(patch_size=0), "patch_size"),
    (dict(width=6, heads=4), "divisible by heads"),
    (dict(depth=0), "depth"),
    (dict(activation="softplus"), "activation"),
])
def test_vit_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        _vit(**kw)


def test_vit_needs_images():
    with pytest.raises(ValueError, match=r"vit needs images \(C, H, W\)"):
        build_model("vit", (64,), 3, width=8, depth=1, activation="gelu", regime="lazy")


def test_gelu_is_for_vit_only():
    with pytest.raises(ValueError, match="activation"):
        build_model("mlp", IN_SHAPE, 3, width=4, depth=1, activation="gelu", regime="lazy")
