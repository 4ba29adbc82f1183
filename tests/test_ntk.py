"""The NTK engine against the torch.func reference, in float64, for every mode, implementation
and layer option."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ntkpipe import ntk
from ntkpipe.models import Conv2d, Dense, build_model, make_mlp
from ntkpipe.ntk import MODES, empirical_ntk, layer_names, reference_ntk

F64 = torch.float64
IMPLEMENTATIONS = ("auto", "factorised", "jacobian", "structured")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def assert_matches_reference(model, x1, x2=None, *, mode="full", per_layer=False, **kwargs):
    got = empirical_ntk(model, x1, x2, mode=mode, per_layer=per_layer, dtype=F64, **kwargs)
    want = reference_ntk(model, x1, x2, mode=mode, per_layer=per_layer, dtype=F64)
    assert got.shape == want.shape
    assert got.dtype == F64
    assert rel_err(got, want) < 1e-10
    return got


def every_implementation(model, x1, x2=None, **kwargs):
    for implementation in IMPLEMENTATIONS:
        assert_matches_reference(model, x1, x2, implementation=implementation, **kwargs)


def bn_model(pool: bool = False) -> nn.Module:
    """Conv → eval BatchNorm → ReLU → (global pool or flatten) → Dense, non-trivial statistics."""
    torch.manual_seed(1)
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dense(3, 4, parametrization="ntk")] if pool \
        else [nn.Flatten(), Dense(3 * 5 * 5, 4, parametrization="ntk")]
    model = nn.Sequential(Conv2d(2, 3, 3, padding=1, parametrization="ntk"), nn.BatchNorm2d(3),
                          nn.ReLU(), *head)
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def mlp():
    return build_model("mlp", (2, 3), 3, width=7, depth=2, activation="tanh",
                       regime="lazy", seed=3).eval()


@pytest.fixture(scope="module")
def cnn():
    return build_model("cnn", (3, 6, 6), 3, width=4, depth=2, activation="relu",
                       regime="feature", seed=4).eval()


@pytest.fixture(scope="module")
def vit():
    return build_model("vit", (2, 4, 4), 3, width=4, depth=1, activation="gelu",
                       regime="lazy", patch_size=2, heads=2, mlp_ratio=1.5, seed=6).eval()


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("activation", ["relu", "tanh", "linear"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_mlp_full_kernel_matches_reference(depth, activation, bias, parametrization):
    torch.manual_seed(depth)
    model = make_mlp(5, 6, depth, 3, activation=activation, parametrization=parametrization,
                     bias=bias).eval()
    x1, x2 = torch.randn(4, 5), torch.randn(3, 5)
    assert_matches_reference(model, x1)
    assert_matches_reference(model, x1, x2)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_layer", [False, True])
def test_every_mode_and_implementation_on_mlp(mlp, implementation, mode, per_layer):
    torch.manual_seed(0)
    x1, x2 = torch.randn(5, 2, 3), torch.randn(3, 2, 3)
    assert_matches_reference(mlp, x1, mode=mode, per_layer=per_layer,
                             implementation=implementation)
    assert_matches_reference(mlp, x1, x2, mode=mode, per_layer=per_layer,
                             implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_and_implementation_on_cnn(cnn, implementation, mode):
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 3, 6, 6), torch.randn(2, 3, 6, 6)
    assert_matches_reference(cnn, x1, mode=mode, per_layer=True, implementation=implementation)
    assert_matches_reference(cnn, x1, x2, mode=mode, implementation=implementation)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + ("reference",))
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_and_implementation_on_vit(vit, implementation, mode):
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 2, 4, 4), torch.randn(2, 2, 4, 4)
    assert_matches_reference(vit, x1, mode=mode, per_layer=True, implementation=implementation)
    assert_matches_reference(vit, x1, x2, mode=mode, implementation=implementation)


@pytest.mark.parametrize("regime", ["lazy", "feature"])
def test_vit_in_both_parametrisations_and_strict(regime):
    model = build_model("vit", (3, 6, 6), 2, width=6, depth=2, activation="relu", regime=regime,
                        patch_size=3, heads=3, mlp_ratio=1.0, seed=7).eval()
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 3, 6, 6), torch.randn(2, 3, 6, 6)
    assert_matches_reference(model, x1, x2, per_layer=True, strict=True)
    assert_matches_reference(model, x1, mode="trace", strict=True)


@pytest.mark.parametrize("regime", ["lazy", "feature"])
def test_cnn_relu_with_max_pooling(regime):
    model = build_model("cnn-relu", (3, 8, 8), 4, width=3, depth=2, activation="relu",
                        regime=regime, seed=5).eval()
    torch.manual_seed(0)
    every_implementation(model, torch.randn(3, 3, 8, 8), torch.randn(2, 3, 8, 8),
                         per_layer=True)


@pytest.mark.parametrize("pool", [False, True])
def test_eval_batchnorm(pool):
    model = bn_model(pool)
    torch.manual_seed(0)
    x1, x2 = torch.randn(3, 2, 5, 5), torch.randn(4, 2, 5, 5)
    for mode in MODES:
        for implementation in IMPLEMENTATIONS:
            assert_matches_reference(model, x1, mode=mode, per_layer=True,
                                     implementation=implementation)
        assert_matches_reference(model, x1, x2, mode=mode)


def test_layernorm_and_plain_torch_layers():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(inplace=True),
                          nn.Linear(6, 6, bias=False), nn.Tanh(), nn.Linear(6, 2)).eval()
    torch.manual_seed(0)
    every_implementation(model, torch.randn(5, 4), torch.randn(2, 4), per_layer=True)


@pytest.mark.parametrize("conv", [
    dict(stride=2, padding=1),
    dict(stride=1, padding=2, dilation=2),
    dict(stride=(2, 1), padding=(0, 1), bias=False),
    dict(stride=1, padding=1, padding_mode="reflect"),
    dict(stride=1, padding=1, padding_mode="circular"),
    dict(stride=1, padding=(1, 2), padding_mode="replicate"),
    dict(padding="same"),
    dict(padding="same", kernel_size=2, dilation=(1, 2)),
    dict(padding="valid", stride=2),
    dict(stride=1, padding=0, groups=2),
])
@pytest.mark.parametrize("head", ["flatten", "global-average", "global-max"])
def test_conv_hyperparameters(conv, head):
    torch.manual_seed(3)
    kernel = conv.pop("kernel_size", 3)
    tail = {"flatten": [nn.Flatten(), nn.LazyLinear(3)],
            "global-average": [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)],
            "global-max": [nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(), nn.Linear(4, 3)]}[head]
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh(),
                          nn.Conv2d(2, 4, kernel, **conv), nn.ReLU(), *tail)
    x1, x2 = torch.randn(3, 2, 7, 7), torch.randn(2, 2, 7, 7)
    model(x1)  # materialise the lazy readout
    every_implementation(model.eval(), x1, x2, per_layer=True)


def test_pooling_inside_the_network():
    torch.manual_seed(8)
    model = nn.Sequential(Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          Conv2d(3, 4, 3, stride=1, padding=1), nn.GELU(), nn.AvgPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), Dense(4, 3)).eval()
    every_implementation(model, torch.randn(3, 2, 8, 8), torch.randn(2, 2, 8, 8), mode="trace")
    every_implementation(model, torch.randn(3, 2, 8, 8), per_layer=True)


def test_linear_over_extra_dimensions_sums_positions():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 5, 2))
    every_implementation(model, torch.randn(3, 4, 3), torch.randn(2, 4, 3))


class Scale(nn.Module):
    """A parametrised module without a factorised rule: y = x · exp(w)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-0.5, 0.5, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.exp()


class Residual(nn.Module):
    """A non-Sequential model: the engine differentiates it as one generic step."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.norm, self.out = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 3)
        self.scale = Scale(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.scale(x + self.norm(self.inner(x))))


def test_generic_model_and_unknown_module():
    torch.manual_seed(9)
    model = Residual()
    x1, x2 = torch.randn(4, 4), torch.randn(2, 4)
    for mode in MODES:
        every_implementation(model, x1, x2, mode=mode, per_layer=True)
    chained = nn.Sequential(nn.Linear(4, 4), Scale(4), nn.Tanh(), Residual())
    every_implementation(chained, x1, x2, per_layer=True)


def test_frozen_parameters_are_left_out():
    torch.manual_seed(5)
    model = make_mlp(4, 5, 2, 3)
    model[1].weight.requires_grad_(False)
    model[3].bias.requires_grad_(False)
    every_implementation(model, torch.randn(4, 4), per_layer=True)
    assert layer_names(model) == ["1", "3", "5"]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("chunk,tile,cache_all", [(2, 1, False), (3, 2, True), (4, 4, False)])
def test_chunked_and_tiled_runs_match(cnn, mlp, vit, implementation, chunk, tile, cache_all,
                                      monkeypatch):
    monkeypatch.setattr(ntk, "_chunk_plan", lambda *args: ntk._Sizes(chunk, tile, cache_all))
    monkeypatch.setattr(ntk, "PANEL_ROWS", 2)  # diagonal blocks as panels inside chunks
    monkeypatch.setattr(ntk, "PANEL_SAMPLES", 2)
    torch.manual_seed(0)
    x1, x2 = torch.randn(7, 2, 3), torch.randn(5, 2, 3)
    for mode in MODES:
        for x_2 in (None, x2):
            assert_matches_reference(mlp, x1, x_2, mode=mode, per_layer=True,
                                     implementation=implementation)
    for mode in MODES:  # tiles narrower than the result are strided views of it
        assert_matches_reference(cnn, torch.randn(5, 3, 6, 6), mode=mode,
                                 implementation=implementation)
    assert_matches_reference(vit, torch.randn(5, 2, 4, 4), mode="per_output",
                             implementation=implementation)


def test_memory_budget_sets_the_chunk(mlp, monkeypatch):
    plans = []
    plan = ntk._chunk_plan
    monkeypatch.setattr(ntk, "_chunk_plan", lambda *a: plans.append(plan(*a)) or plans[-1])
    x = torch.randn(40, 2, 3)
    want = reference_ntk(mlp, x, dtype=F64)
    for budget in (15_000, 20_000, 60_000, 120_000, 480_000, 10 ** 9):
        assert rel_err(empirical_ntk(mlp, x, dtype=F64, max_memory=budget), want) < 1e-10
    chunks = [p.chunk for p in plans]
    assert chunks == sorted(chunks) and chunks[0] < 10 and chunks[-1] == 40
    assert not plans[0].cache_all and plans[-1].cache_all


def test_reference_implementation_keeps_the_budget(cnn):
    x = torch.randn(6, 3, 6, 6)
    want = reference_ntk(cnn, x, dtype=F64)
    got = empirical_ntk(cnn, x, dtype=F64, implementation="reference", max_memory=2_000_000)
    assert rel_err(got, want) < 1e-10
    with pytest.raises(ValueError, match="too small.*needs about"):
        empirical_ntk(cnn, x, dtype=F64, implementation="reference", max_memory=10_000)


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------

def test_the_cost_model_picks_the_readout_form_for_the_last_conv():
    model = build_model("cnn", (3, 16, 16), 10, width=16, depth=2, activation="relu",
                        regime="feature")
    x = torch.randn(32, 3, 16, 16)
    plan = ntk._plan(model.eval(), x, x, True, 10, "full", "auto", False)
    forms = {spec.name: spec.form for spec in plan.chain.specs}
    assert forms == {"0": "jacobian", "2": "readout", "6": "output"}
    assert plan.chain.segment == (2, 6)


def test_tiles_cover_the_upper_triangle_once():
    tiles = ntk._tile_pairs(10, 10, True, rows=3, limit=4)
    covered = torch.zeros(10, 10, dtype=torch.int64)
    for a, b in tiles:
        block = torch.ones(a.stop - a.start, b.stop - b.start, dtype=torch.int64)
        if b.start == a.start:  # a panel: from the diagonal on
            block = block.triu()
        covered[a, b] += block
    assert torch.equal(covered, torch.ones(10, 10, dtype=torch.int64).triu())
    assert all(a.stop - a.start <= 4 and b.stop - b.start <= 4 for a, b in tiles)
    assert max(a.stop - a.start for a, b in tiles if a.start == b.start) <= 3


# ---------------------------------------------------------------------------------------------
# Relations between modes, symmetry, dtypes
# ---------------------------------------------------------------------------------------------

def test_modes_are_views_of_the_full_kernel(mlp):
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 2, 3), torch.randn(3, 2, 3)
    full = empirical_ntk(mlp, x1, x2, dtype=F64)
    diag = full.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(empirical_ntk(mlp, x1, x2, mode="trace", dtype=F64),
                               diag.mean(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(empirical_ntk(mlp, x1, x2, mode="per_output", dtype=F64),
                               diag.permute(2, 0, 1), rtol=1e-12, atol=0)
    torch.testing.assert_close(empirical_ntk(mlp, x1, x2, mode="sum_logits", dtype=F64),
                               full.sum((-2, -1)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", MODES)
def test_per_layer_parts_sum_to_total(cnn, mode):
    x = torch.randn(4, 3, 6, 6)
    parts = empirical_ntk(cnn, x, mode=mode, per_layer=True, dtype=F64)
    assert parts.shape[0] == len(layer_names(cnn)) == 3
    torch.testing.assert_close(parts.sum(0), empirical_ntk(cnn, x, mode=mode, dtype=F64),
                               rtol=1e-12, atol=1e-14)


def test_kernel_of_x_with_itself_is_symmetric(mlp):
    x = torch.randn(9, 2, 3)
    full = empirical_ntk(mlp, x, dtype=F64, max_memory=40_000)
    torch.testing.assert_close(full, full.permute(1, 0, 3, 2), rtol=0, atol=0)
    torch.testing.assert_close(full, empirical_ntk(mlp, x, x.clone(), dtype=F64),
                               rtol=1e-12, atol=1e-14)
    flat = full.permute(0, 2, 1, 3).reshape(27, 27)
    assert torch.linalg.eigvalsh(flat).min() > -1e-10 * flat.norm()


@pytest.mark.parametrize("per_layer", [False, True])
def test_full_kernel_is_a_view_of_its_block_matrix(mlp, per_layer):
    x1, x2 = torch.randn(5, 2, 3), torch.randn(4, 2, 3)
    full = empirical_ntk(mlp, x1, x2, dtype=F64, per_layer=per_layer)
    blocks = full.transpose(-3, -2)  # (..., N1, O, N2, O)
    assert blocks.is_contiguous()
    flat = blocks.reshape(*full.shape[:-4], 5 * 3, 4 * 3)
    assert flat.data_ptr() == full.data_ptr()  # the (N1·O, N2·O) matrix costs no copy
    torch.testing.assert_close(full.contiguous(), reference_ntk(mlp, x1, x2, dtype=F64,
                                                                per_layer=per_layer),
                               rtol=1e-10, atol=1e-12)


def test_default_dtype_is_the_models(mlp):
    x = torch.randn(4, 2, 3)
    k32 = empirical_ntk(mlp, x, mode="trace")
    assert k32.dtype == torch.float32
    assert rel_err(k32.double(), empirical_ntk(mlp, x, mode="trace", dtype=F64)) < 1e-5
    assert next(mlp.parameters()).dtype == torch.float32  # the float64 run used a copy


def test_shapes_of_every_mode(mlp):
    x1, x2 = torch.randn(4, 2, 3), torch.randn(2, 2, 3)
    shapes = {"full": (4, 2, 3, 3), "trace": (4, 2), "per_output": (3, 4, 2),
              "sum_logits": (4, 2)}
    for mode, shape in shapes.items():
        assert empirical_ntk(mlp, x1, x2, mode=mode).shape == shape
        assert empirical_ntk(mlp, x1, x2, mode=mode, per_layer=True).shape == (3,) + shape


# ---------------------------------------------------------------------------------------------
# The caller's model and global state are untouched
# ---------------------------------------------------------------------------------------------

def test_callers_model_untouched():
    model = build_model("mlp", (4,), 3, width=5, depth=2, activation="relu", regime="lazy")
    model.train()
    model[1].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    x = torch.randn(3, 4)
    x_before = x.clone()
    for implementation in ntk.IMPLEMENTATIONS:
        empirical_ntk(model, x, implementation=implementation)
        empirical_ntk(model, x, dtype=F64, implementation=implementation, allow_tf32=True)
    assert torch.equal(x, x_before)
    assert model.training and all(m.training for m in model.modules())
    assert not model[1].bias.requires_grad and model[1].weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


def test_eval_batchnorm_buffers_untouched():
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    empirical_ntk(model, torch.randn(3, 2, 5, 5))
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def test_error_output_not_2d():
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="2-D"):
        empirical_ntk(model, torch.randn(2, 1, 5, 5))


def test_error_inputs_mismatch(mlp):
    with pytest.raises(ValueError, match="per-sample shapes"):
        empirical_ntk(mlp, torch.randn(2, 2, 3), torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match="model's input"):
        empirical_ntk(mlp, torch.randn(2, 5))
    with pytest.raises(TypeError, match="x1"):
        empirical_ntk(mlp, [[1.0]])


def test_error_budget_too_small(mlp):
    with pytest.raises(ValueError, match="too small for one block.*needs about"):
        empirical_ntk(mlp, torch.randn(3, 2, 3), max_memory=100)
    with pytest.raises(ValueError, match="max_memory"):
        empirical_ntk(mlp, torch.randn(3, 2, 3), max_memory=-1)


def test_error_unsupported_module_when_strict():
    with pytest.raises(TypeError, match="'scale'.*Scale.*strict"):
        empirical_ntk(Residual(), torch.randn(2, 4), strict=True)
    empirical_ntk(bn_model(), torch.randn(2, 2, 5, 5), strict=True)  # eval BatchNorm factorises


def test_error_batchnorm_in_training_mode():
    model = bn_model().train()
    with pytest.raises(ValueError, match="BatchNorm2d.*batch statistics.*eval"):
        empirical_ntk(model, torch.randn(2, 2, 5, 5))


def test_error_unknown_options(mlp):
    x = torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="mode"):
        empirical_ntk(mlp, x, mode="diag")
    with pytest.raises(ValueError, match="implementation"):
        empirical_ntk(mlp, x, implementation="fast")


def test_error_weight_sharing():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Linear(3, 2))
    with pytest.raises(ValueError, match="more than once"):
        empirical_ntk(model, torch.randn(2, 3))
    assert all(not m._forward_hooks for m in model.modules())


def test_error_parameter_shared_between_modules():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second, nn.Linear(3, 2))
    with pytest.raises(ValueError, match="shared"):
        empirical_ntk(model, torch.randn(2, 3))
    x = torch.randn(3, 3)
    torch.testing.assert_close(empirical_ntk(model, x, implementation="reference"),
                               reference_ntk(model, x))


def test_the_last_hidden_linear_takes_the_rank_one_readout_form():
    model = make_mlp(16, 32, 2, 10).eval()
    x = torch.randn(64, 16)
    forms = {row["layer"]: row["form"] for row in ntk.kernel_plan(model, x, mode="full")}
    assert forms["3"] == "readout"
    for mode in MODES:
        assert_matches_reference(model, x[:9], mode=mode, per_layer=True)


def test_features_are_kept_and_chunks_sized_for_the_cache_on_cpu():
    model = build_model("cnn", (3, 16, 16), 10, width=16, depth=2, activation="relu",
                        regime="feature").eval()
    x = torch.randn(200, 3, 16, 16)
    plan = ntk._plan(model, x, x, True, 10, "full", "auto", False)
    feat, transient, _ = ntk._per_sample_elems(plan, "full")
    sizes = ntk._chunk_plan(plan, 200, 0, "full", 4, 2 ** 34, "cpu")
    assert sizes.cache_all and sizes.tile == 200
    assert sizes.chunk == max(ntk.MIN_CHUNK, ntk.CACHE_BYTES // (4 * (transient - feat)))
    assert ntk._chunk_plan(plan, 200, 0, "full", 4, 2 ** 34, "cuda").chunk == 200


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_the_cpu_reference(mlp, cnn, vit, mode):
    torch.manual_seed(0)
    for model, shape in ((mlp, (6, 2, 3)), (cnn, (5, 3, 6, 6)), (vit, (5, 2, 4, 4))):
        x = torch.randn(*shape, dtype=F64)
        want = reference_ntk(model, x, mode=mode, per_layer=True, dtype=F64)
        for implementation in IMPLEMENTATIONS:
            got = empirical_ntk(copy.deepcopy(model).cuda(), x.cuda(), mode=mode,
                                per_layer=True, dtype=F64, implementation=implementation)
            assert got.device.type == "cuda"
            assert rel_err(got.cpu(), want) < 1e-10
