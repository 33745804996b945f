"""Analytic costs: hand-computed on a tiny net, and equal to fvcore/model_size_bytes on the
model apply_policy really builds (random policies over every knob)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from autocompress.cost import Costs, analytic_costs, compressed_shapes
from autocompress.cost.analytic import tensor_bytes
from autocompress.cost.sampling import random_policies, random_policy
from autocompress.inventory import build_inventory, count_macs
from autocompress.methods import apply_policy, model_size_bytes
from autocompress.models import DigitsCNN, DigitsMLP, resnet20
from autocompress.policy import CompressionPolicy, LayerPolicy

# Random ranks at or above break-even are skipped on purpose; the cost model knows.
pytestmark = pytest.mark.filterwarnings("ignore::autocompress.methods.LowRankSkipped")


class Tiny(nn.Module):
    """conv 2->4 (3x3, pad 1) on 4x4, flatten, Linear 64->3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _fvcore_macs(model: nn.Module, x: torch.Tensor) -> int:
    return count_macs(model, x)[0][""]


def test_uncompressed_costs_equal_inventory():
    model, x = Tiny(), torch.zeros(1, 2, 4, 4)
    inv = build_inventory(model, x)
    c = analytic_costs(None, inv)
    assert c.macs == inv.total_macs == 4 * 2 * 9 * 16 + 64 * 3
    assert c.params == inv.total_params == (4 * 2 * 9 + 4) + (64 * 3 + 3)
    assert c.bops == c.macs * 32 * 32
    assert c.size_bytes == c.params * 4
    assert c.latency_ms is None


def test_hand_computed_prune_bits_sparsity():
    model, x = Tiny(), torch.zeros(1, 2, 4, 4)
    inv = build_inventory(model, x)
    policy = CompressionPolicy(layers={
        "conv": LayerPolicy(prune=0.5, bits=4, act_bits=8),
        "fc": LayerPolicy(bits=8, sparsity=0.5),
    })
    c = analytic_costs(policy, inv)
    # conv keeps 2 of 4 channels; fc loses the 2 pruned channels x 16 positions of its input
    conv_macs, fc_macs = 2 * 2 * 9 * 16, 32 * 3
    assert [(lc.in_channels, lc.out_channels) for lc in c.layers] == [(2, 2), (32, 3)]
    assert c.macs == conv_macs + fc_macs
    assert c.bops == conv_macs * 4 * 8 + fc_macs * 8 * 32
    assert c.params == (2 * 2 * 9 + 2) + (32 * 3 + 3)
    # conv: 36 weights at 4 bits + 2 float biases; fc: 96 weights at 8 bits stay dense
    # (48 kept x (1 + 4 index bytes) = 240 > 96) + 3 float biases
    assert c.size_bytes == (18 + 8) + (96 + 12)
    small = apply_policy(model, policy, x, inventory=inv)
    assert _fvcore_macs(small, x) == c.macs
    assert sum(p.numel() for p in small.parameters()) == c.params
    assert model_size_bytes(small, policy) == c.size_bytes


def test_lowrank_counts_both_factors_and_break_even_stays_dense():
    model, x = DigitsMLP(), torch.zeros(1, 1, 8, 8)
    inv = build_inventory(model, x)
    c = analytic_costs(CompressionPolicy(layers={"net.1": LayerPolicy(rank=8)}), inv)
    net1 = c.layers[0]
    assert net1.rank == 8 and net1.macs == 8 * 64 + 512 * 8 and net1.params == 8 * 64 + 512 * 8 + 512
    # rank 60 on a 512x64 weight: 60 * 576 >= 512 * 64, so apply_policy leaves it dense
    dense = analytic_costs(CompressionPolicy(layers={"net.1": LayerPolicy(rank=60)}), inv)
    assert dense.layers[0].rank is None and dense.macs == inv.total_macs


def test_sparse_storage_rule():
    # dense 1000 x 8 bits = 1000 B; 100 kept x (1 + 4) = 500 B is smaller
    assert tensor_bytes(1000, 8, 0.9) == 500
    assert tensor_bytes(1000, 8, 0.1) == 1000  # 900 x 5 > dense
    assert tensor_bytes(10, 3) == 4  # 30 bits round up to whole bytes


def test_costs_value_by_budget_metric():
    c = Costs(macs=1, bops=2, params=3, size_bytes=4).with_latency(0.5)
    assert [c.value(m) for m in ("macs", "bops", "params", "size", "latency")] == [1, 2, 3, 4, 0.5]


def test_depthwise_follows_its_group():
    pytest.importorskip("torchvision")
    import torchvision

    model = torchvision.models.mobilenet_v2(width_mult=0.35)
    x = torch.zeros(1, 3, 32, 32)
    inv = build_inventory(model, x)
    dw = next(i for i in inv if i.kind == "DepthwiseConv2d" and i.group != i.fqn)
    policy = CompressionPolicy(layers={dw.group: LayerPolicy(prune=0.5)})
    shape = {s.fqn: s for s in compressed_shapes(policy, inv)}[dw.fqn]
    kept = shape.out_channels
    assert kept < dw.out_channels and shape.in_channels == shape.groups == kept


def _check_against_model(model: nn.Module, x: torch.Tensor, n: int, seed: int) -> None:
    inv = build_inventory(model, x)
    for policy in random_policies(inv, n, seed=seed):
        c = analytic_costs(policy, inv)
        small = apply_policy(model, policy, x, inventory=inv)
        fv, _ = count_macs(small, x)
        assert c.macs == pytest.approx(fv[""], rel=0.01), policy.to_json()
        assert c.params == pytest.approx(sum(p.numel() for p in small.parameters()), rel=0.01)
        assert c.size_bytes == pytest.approx(model_size_bytes(small, policy), rel=0.01)
        # per layer exactly (the layer, its factors and its quantiser live under its fqn)
        for lc in c.layers:
            assert lc.macs == fv.get(lc.fqn, 0), (lc.fqn, policy.layers.get(lc.fqn))


@pytest.mark.parametrize("make", [DigitsCNN, DigitsMLP])
def test_agrees_with_fvcore_on_compressed_digits_models(make):
    torch.manual_seed(0)
    _check_against_model(make(), torch.randn(1, 1, 8, 8), n=12, seed=1)


def test_agrees_with_fvcore_on_compressed_resnet20():
    torch.manual_seed(0)
    _check_against_model(resnet20(), torch.randn(1, 3, 32, 32), n=2, seed=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_agrees_with_fvcore_on_compressed_torchvision(name):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    _check_against_model(model, torch.randn(1, 3, 224, 224), n=6, seed=3)


@pytest.mark.slow
def test_agrees_with_fvcore_on_many_resnet20_policies():
    torch.manual_seed(0)
    _check_against_model(resnet20(), torch.randn(1, 3, 32, 32), n=15, seed=4)


def test_random_policies_are_valid_and_seeded():
    inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    a = random_policies(inv, 5, seed=7)
    assert a == random_policies(inv, 5, seed=7)
    for p in a:
        p.validate_against(inv)
    assert random_policy(inv, random.Random(1)) != random_policy(inv, random.Random(2))
