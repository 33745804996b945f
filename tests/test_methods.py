"""Compression methods: hand-computed costs, the shared contract every method passes,
and each method's own effect (real Torch-Pruning, real ONNX Runtime)."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from autocompress.errors import MethodError, PolicyError
from autocompress.inventory import LayerInventory, build_inventory, count_macs
from autocompress.methods import (
    METHODS,
    ActFakeQuant,
    LowRankSkipped,
    apply_policy,
    model_size_bytes,
    model_stats,
    quantize_weight,
    weight_modules,
)
from autocompress.methods.quantize import QDQConv2d, QDQLinear
from autocompress.methods.shapes import kept_channels
from autocompress.models import DigitsCNN, DigitsMLP
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import export_onnx, run_onnx


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return count_macs(model, x)[0][""]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- tiny models
class TinyResidual(nn.Module):
    """A stem, one residual block (coupled with the stem), a depthwise conv and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.conv_b(torch.relu(self.conv_a(x))))
        x = torch.relu(self.dw(x))
        return self.fc(x.mean(dim=(2, 3)))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "DigitsCNN": (DigitsCNN, (1, 1, 8, 8)),
    "DigitsMLP": (DigitsMLP, (1, 1, 8, 8)),
    "TinyResidual": (TinyResidual, (1, 3, 8, 8)),
}


def make(name: str) -> tuple[nn.Module, torch.Tensor, LayerInventory]:
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(*shape)
    return model, x, build_inventory(model, x)


# ---------------------------------------------------------------- hand-computed costs
def test_conv_macs_and_params_by_hand() -> None:
    conv = nn.Conv2d(1, 4, 3)  # 5x5 -> 3x3: 4 out * 1 in * 9 taps * 9 positions
    inv = build_inventory(nn.Sequential(conv), torch.zeros(1, 1, 5, 5))
    assert inv["0"].macs == 4 * 1 * 9 * 9 == 324
    assert inv["0"].params == 4 * 9 + 4 == 40
    assert inv.total_macs == 324


def test_small_net_macs_params_and_pruned_costs_by_hand() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(36, 5))
    x = torch.zeros(1, 1, 5, 5)
    inv = build_inventory(net, x)
    assert (inv["0"].macs, inv["3"].macs, inv.total_macs) == (324, 180, 504)
    assert inv.total_params == 40 + 36 * 5 + 5 == 225
    assert inv["0"].group == "0" and not inv["3"].prunable  # the output layer keeps its 5 classes
    # Half of the conv's channels go, and with them half of the Linear's inputs (flatten coupling).
    small = apply_policy(net, CompressionPolicy(layers={"0": LayerPolicy(prune=0.5)}), x, inv)
    assert small[0].out_channels == 2 and small[3].in_features == 18
    assert macs(small, x) == 2 * 9 * 9 + 18 * 5 == 252
    assert params(small) == (2 * 9 + 2) + (18 * 5 + 5) == 115


def test_lowrank_costs_by_hand() -> None:
    lin = nn.Sequential(nn.Linear(64, 32))
    x = torch.zeros(1, 64)
    small = apply_policy(lin, CompressionPolicy(layers={"0": LayerPolicy(rank=4)}), x)
    assert macs(small, x) == 64 * 4 + 4 * 32 == 384  # dense: 2048
    assert params(small) == 64 * 4 + 4 * 32 + 32 == 416
    conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    xc = torch.zeros(1, 8, 6, 6)
    small = apply_policy(conv, CompressionPolicy(layers={"0": LayerPolicy(rank=2)}), xc)
    assert macs(conv, xc) == 16 * 8 * 9 * 36 == 41472
    assert macs(small, xc) == 2 * 8 * 9 * 36 + 16 * 2 * 36 == 6336
    assert params(small) == 2 * 8 * 9 + 16 * 2 + 16 == 192


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (None, 40 * 4 + 4 * 4),  # float32 everywhere
        (LayerPolicy(bits=4), 40 * 4 // 8 + 4 * 4),  # weights at 4 bits, bias stays float32
        (LayerPolicy(bits=3), 15 + 16),  # 120 bits = 15 bytes
        (LayerPolicy(bits=16), 40 * 2 + 16),
        (LayerPolicy(bits=8, sparsity=0.5), 40 + 16),  # sparse 20 + 20*4 = 100 > dense 40
        (LayerPolicy(sparsity=0.9), (4 * 4 + 4 * 4) + 16),  # 4 kept: 16 B values + 16 B index
        (LayerPolicy(prune=0.5), 40 * 4 + 16),  # prune alone changes no storage width
    ],
)
def test_model_size_bytes_by_hand(layer: LayerPolicy | None, expected: int) -> None:
    model = nn.Sequential(nn.Linear(10, 4))
    policy = CompressionPolicy(layers={"0": layer} if layer else {})
    assert model_size_bytes(model, policy) == expected


def test_model_size_bytes_follows_factors_and_wrappers() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(4, 64)
    policy = CompressionPolicy(
        layers={"0": LayerPolicy(rank=4, bits=4, act_bits=8), "2": LayerPolicy(bits=8)}
    )
    small = apply_policy(model, policy, x)
    assert [n for n, _ in weight_modules(small, "0")] == ["0.1.0", "0.1.1"]
    # factor weights 64*4 + 4*32 at 4 bits; bias 32 float; layer 2: 320 at 8 bits + 10 float
    assert model_size_bytes(small, policy) == (256 + 128) // 2 + 32 * 4 + 320 + 10 * 4


# ---------------------------------------------------------------- the shared contract
def _prune(inv: LayerInventory) -> dict[str, LayerPolicy]:
    return {lay.fqn: LayerPolicy(prune=0.5) for lay in inv if lay.prunable}


def _lowrank(inv: LayerInventory) -> dict[str, LayerPolicy]:
    return {
        lay.fqn: LayerPolicy(rank=max(1, lay.max_rank // 4))
        for lay in inv
        if lay.kind != "DepthwiseConv2d"
    }


def _sparsity(inv: LayerInventory) -> dict[str, LayerPolicy]:
    return {lay.fqn: LayerPolicy(sparsity=0.5) for lay in inv}


def _quantize(inv: LayerInventory) -> dict[str, LayerPolicy]:
    return {lay.fqn: LayerPolicy(bits=4, act_bits=8) for lay in inv}


POLICIES: dict[str, Callable[[LayerInventory], dict[str, LayerPolicy]]] = {
    "prune": _prune,
    "lowrank": _lowrank,
    "sparsity": _sparsity,
    "quantize": _quantize,
}


def _combined(inv: LayerInventory) -> dict[str, LayerPolicy]:
    layers: dict[str, dict] = {lay.fqn: {} for lay in inv}
    for build in POLICIES.values():
        for fqn, lp in build(inv).items():
            layers[fqn].update(lp.model_dump(exclude_none=True))
    return {fqn: LayerPolicy(**kw) for fqn, kw in layers.items()}


def test_registry_order_and_every_method_has_a_contract_policy() -> None:
    assert list(METHODS)[:4] == ["prune", "lowrank", "sparsity", "quantize"]
    assert set(METHODS) <= set(POLICIES), "a new method must add its policy to POLICIES"
    assert [m.name for m in METHODS.values()] == list(METHODS)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", [*POLICIES, "combined"])
def test_method_contract(method: str, model_name: str) -> None:
    model, x, inv = make(model_name)
    xb = torch.randn(5, *x.shape[1:])
    before_state, before_repr = _state(model), repr(model)
    layers = _combined(inv) if method == "combined" else POLICIES[method](inv)
    policy = CompressionPolicy(layers=layers)
    if method == "combined":
        small = apply_policy(model, policy, x, inv)
    else:  # the registry contract itself: apply(model, policy, inventory, input, calibration)
        small = METHODS[method].apply(copy.deepcopy(model), policy, inv, x, None)
        assert small is not model
    with torch.no_grad():
        ref, out = model(xb), small(xb)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    a, b = model_stats(model, x), model_stats(small, x, policy)
    assert b["macs"] <= a["macs"] and b["params"] <= a["params"]
    assert b["size_bytes"] <= a["size_bytes"]
    # the method really did something (sparsity 0.5 at 32 bits saves no bytes: index overhead)
    assert not torch.equal(out, ref) or a != b
    # the input model is untouched
    assert repr(model) == before_repr
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    # and the result exports and runs in ONNX Runtime, agreeing with PyTorch (8-bit inputs run
    # as integer kernels there, whose re-quantised outputs may move a value by a rounding step)
    got = run_onnx(export_onnx(small, x), xb.numpy())
    top = float(out.abs().max())
    bound = 2e-2 * top if method in ("quantize", "combined") else 1e-4 * max(1.0, top)
    assert np.abs(got - out.numpy()).max() <= bound


@pytest.mark.parametrize("model_name", list(MODELS))
def test_empty_and_float_policies_change_nothing(model_name: str) -> None:
    model, x, inv = make(model_name)
    xb = torch.randn(5, *x.shape[1:])
    noop = {lay.fqn: LayerPolicy(prune=0.0, sparsity=0.0, bits=32, act_bits=32) for lay in inv}
    half = {lay.fqn: LayerPolicy(bits=16) for lay in inv}
    for layers in ({}, noop, half):
        small = apply_policy(model, CompressionPolicy(layers=layers), x, inv)
        assert small is not model
        assert repr(small) == repr(model)
        assert torch.equal(small(xb), model(xb))
        assert model_stats(small, x)["macs"] == model_stats(model, x)["macs"]


def test_apply_policy_validates_and_leaves_training_mode_alone() -> None:
    model, x, inv = make("DigitsCNN")
    model.train()
    with pytest.raises(PolicyError, match="'features.9'"):
        apply_policy(model, CompressionPolicy(layers={"features.9": LayerPolicy(bits=4)}), x)
    with pytest.raises(PolicyError, match="classifier.3.*cannot be pruned"):
        apply_policy(model, CompressionPolicy(layers={"classifier.3": LayerPolicy(prune=0.5)}), x)
    small = apply_policy(model, CompressionPolicy(layers={"features.0": LayerPolicy(bits=8)}), x)
    assert model.training and not small.training


# ---------------------------------------------------------------- prune
def test_prune_removes_the_smallest_l1_channels_of_the_group() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, 1.0, 4.0, 2.0]).view(4, 1, 1, 1))
        net[2].weight.fill_(1.0)
    x = torch.ones(1, 1, 2, 2)
    small = apply_policy(net, CompressionPolicy(layers={"0": LayerPolicy(prune=0.5)}), x)
    # channels 0 (|3|) and 2 (|4|) survive, in order; the consumer loses the matching inputs
    assert small[0].weight.flatten().tolist() == [3.0, 4.0]
    assert small[2].weight.shape == (2, 2, 1, 1)


@pytest.mark.parametrize("model_name", ["TinyResidual", "DigitsCNN"])
def test_prune_keeps_the_shared_channel_count_in_each_coupled_group(model_name: str) -> None:
    model, x, inv = make(model_name)
    small = apply_policy(model, CompressionPolicy(layers=_prune(inv)), x, inv)
    for lay in inv:
        module = small.get_submodule(lay.fqn)
        out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        expected = kept_channels(lay.out_channels, 0.5) if lay.prunable else lay.out_channels
        assert out == expected, lay.fqn
    if model_name == "TinyResidual":  # stem, conv_b and the depthwise conv share one group
        assert inv["conv_b"].group == inv["stem"].group == inv["dw"].group == "stem"
        assert small.dw.groups == small.dw.in_channels == 4


def test_groups_touching_a_grouped_conv_are_not_prunable() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                        nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(1, 3, 3, 3)
    inv = build_inventory(net, x)
    # conv 0 feeds the grouped conv, whose own outputs feed conv 4: Torch-Pruning's group.prune
    # cannot remove channels evenly per channel group, so only conv 4's group is prunable
    assert [lay.prunable for lay in inv] == [False, False, True, False]
    with pytest.raises(PolicyError, match="'2' cannot be pruned"):
        apply_policy(net, CompressionPolicy(layers={"2": LayerPolicy(prune=0.5)}), x, inv)
    small = apply_policy(net, CompressionPolicy(layers={"4": LayerPolicy(prune=0.5)}), x, inv)
    assert small[4].out_channels == 4 and small[7].in_features == 4
    # an inventory that claims otherwise (e.g. from an older version) gets a clear MethodError
    stale = LayerInventory(
        layers=[dataclasses.replace(lay, prunable=True, group="0") if lay.fqn == "0" else lay
                for lay in inv],
        total_macs=inv.total_macs, total_params=inv.total_params,
    )
    with pytest.raises(MethodError, match="group '0' contains a grouped conv"):
        apply_policy(net, CompressionPolicy(layers={"0": LayerPolicy(prune=0.5)}), x, stale)


def test_group_ratio_is_the_largest_prune_of_its_members() -> None:
    model, x, inv = make("TinyResidual")
    policy = CompressionPolicy(
        layers={"stem": LayerPolicy(prune=0.25), "conv_b": LayerPolicy(prune=0.5)}
    )
    small = apply_policy(model, policy, x, inv)
    assert small.stem.out_channels == small.conv_b.out_channels == small.dw.out_channels == 4
    assert small.conv_a.out_channels == 8  # its own group, not in the policy


# ---------------------------------------------------------------- lowrank
def test_lowrank_factors_reproduce_a_low_rank_weight_exactly() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1, dilation=1)
    with torch.no_grad():  # rank-2 weight: the rank-2 factorisation is exact
        conv.weight.copy_((torch.randn(12, 2) @ torch.randn(2, 54)).view(12, 6, 3, 3))
    net = nn.Sequential(conv)
    x = torch.randn(2, 6, 9, 9)
    small = apply_policy(net, CompressionPolicy(layers={"0": LayerPolicy(rank=2)}), x[:1])
    a, b = small[0]
    assert (a.in_channels, a.out_channels, a.kernel_size, a.stride, a.bias) == (6, 2, (3, 3), (2, 2), None)
    assert (b.in_channels, b.out_channels, b.kernel_size) == (2, 12, (1, 1))
    assert torch.allclose(small(x), net(x), atol=1e-4)


def test_lowrank_skips_with_a_warning_at_break_even() -> None:
    lin = nn.Sequential(nn.Linear(16, 16))  # break-even: r * 32 >= 256, so r >= 8 is skipped
    x = torch.randn(1, 16)
    with pytest.warns(LowRankSkipped, match=r"layer '0' rank 8 would not reduce MACs.*16x16"):
        small = apply_policy(lin, CompressionPolicy(layers={"0": LayerPolicy(rank=8)}), x)
    assert isinstance(small[0], nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowRankSkipped)
        small = apply_policy(lin, CompressionPolicy(layers={"0": LayerPolicy(rank=7)}), x)
    assert isinstance(small[0], nn.Sequential)


def test_lowrank_uses_the_pruned_shape_and_skips_grouped_convs() -> None:
    # after pruning conv 0 to 8 channels, conv 2 is 8x(8*9); rank 6 < 576/80 = 7.2 still pays
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2))
    x = torch.randn(1, 3, 6, 6)
    pol = CompressionPolicy(layers={"0": LayerPolicy(prune=0.5), "2": LayerPolicy(rank=6),
                                    "4": LayerPolicy(rank=2)})
    with pytest.warns(LowRankSkipped, match="'4' is a grouped/depthwise conv"):
        small = apply_policy(net, pol, x)
    assert small[2][0].in_channels == 8 and small[2][0].out_channels == 6
    assert isinstance(small[4], nn.Conv2d)


# ---------------------------------------------------------------- sparsity
def test_sparsity_bakes_the_mask_into_both_factors() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 10))
    x = torch.randn(1, 40)
    pol = CompressionPolicy(layers={"0": LayerPolicy(rank=5, sparsity=0.3),
                                    "2": LayerPolicy(sparsity=0.75)})
    small = apply_policy(net, pol, x)
    for fqn, s in (("0", 0.3), ("2", 0.75)):
        for _name, mod in weight_modules(small, fqn):
            n = mod.weight.numel()
            assert int((mod.weight == 0).sum()) == round(s * n)
    assert not any("orig" in k or "mask" in k for k in small.state_dict())
    assert not small[2]._forward_pre_hooks


# ---------------------------------------------------------------- quantize
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_weight_quantisation_is_symmetric_per_channel(bits: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    q = quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    for c in range(6):
        scale = w[c].abs().max() / qmax
        levels = torch.round(q[c] / scale)
        assert torch.allclose(levels * scale, q[c], atol=1e-5)
        assert levels.abs().max() <= qmax and len(levels.unique()) <= 2 * qmax + 1
        assert (q[c] - w[c]).abs().max() <= scale / 2 + 1e-5
        assert torch.isclose(q[c].abs().max(), w[c].abs().max())  # the extreme is exact


def test_quantize_bakes_weights_and_wraps_activations_for_onnx() -> None:
    model, x, inv = make("DigitsCNN")
    calib = [torch.rand(16, 1, 8, 8) for _ in range(3)]
    pol = CompressionPolicy(layers={"features.2": LayerPolicy(bits=4, act_bits=8),
                                    "classifier.1": LayerPolicy(bits=32)})
    small = apply_policy(model, pol, x, inv, calibration=calib)
    quant, conv = small.features[2]
    assert isinstance(quant, ActFakeQuant) and isinstance(conv, nn.Conv2d)
    # the activation range is the observed input range of features.2 (after ReLU: min 0)
    with torch.no_grad():
        hidden = [torch.relu(model.features[0](c)) for c in calib]
    hi = max(float(h.max()) for h in hidden)
    assert int(quant.zero_point) == 0 and float(quant.scale) == pytest.approx(hi / 255, rel=1e-4)
    assert torch.equal(small.classifier[1].weight, model.classifier[1].weight)  # 32 bits: float
    assert len(conv.weight[0].unique()) <= 15
    # 4-bit weights read an 8-bit input: the weight exports as int8 QDQ too, so ONNX Runtime's
    # integer kernel uses exactly these weights (not its own per-tensor re-quantisation)
    assert isinstance(conv, QDQConv2d) and not isinstance(small.classifier[1], QDQLinear)
    data = export_onnx(small, x)
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    xb = torch.rand(8, 1, 8, 8)
    assert np.abs(run_onnx(data, xb.numpy()) - small(xb).detach().numpy()).max() < 1e-3


def test_calibration_accepts_loader_batches() -> None:
    model, x, inv = make("DigitsMLP")
    batches = [(torch.rand(4, 1, 8, 8) * 3, torch.zeros(4, dtype=torch.long))]
    pol = CompressionPolicy(layers={"net.1": LayerPolicy(act_bits=8)})
    small = apply_policy(model, pol, x, inv, calibration=batches)
    assert float(small.net[1][0].scale) == pytest.approx(float(batches[0][0].max()) / 255, rel=1e-4)


# ---------------------------------------------------------------- done when (issue 2)
def test_digits_half_channels_and_4_bits_is_under_40_percent_macs(digits_task) -> None:
    model, x = digits_task.model, digits_task.example_input
    inv = build_inventory(model, x)
    layers = {
        lay.fqn: LayerPolicy(prune=0.5 if lay.prunable and lay.kind != "Linear" else None, bits=4)
        for lay in inv
    }
    assert sum(1 for lp in layers.values() if lp.prune) == 2  # both convs
    small = apply_policy(model, CompressionPolicy(layers=layers), x, inv)
    ratio = macs(small, x) / macs(model, x)
    assert ratio < 0.40
    xb = digits_task.batch_input(16) + 0.1 * torch.randn(16, 1, 8, 8)
    got = run_onnx(export_onnx(small, x), xb.numpy())
    assert np.abs(got - small(xb).detach().numpy()).max() < 1e-3
    acc = digits_task.evaluate(small)
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert digits_task.evaluate() == pytest.approx(digits_task.baseline_metric)  # untouched
