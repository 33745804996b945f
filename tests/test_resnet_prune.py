"""Structured pruning on real architectures with residual and depthwise coupling
(real Torch-Pruning dependency graphs, real ONNX Runtime)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from autocompress.inventory import build_inventory
from autocompress.methods import apply_policy, model_stats
from autocompress.methods.shapes import kept_channels
from autocompress.models import resnet20
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import export_onnx, run_onnx

ARCHS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": resnet20,
    "torchvision-resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "torchvision-mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
}


def _out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pruning_every_group_by_half_gives_a_smaller_working_model(arch: str) -> None:
    torch.manual_seed(0)
    model = ARCHS[arch]().eval()
    x = torch.randn(1, 3, 32, 32)
    inv = build_inventory(model, x)
    policy = CompressionPolicy(layers={g: LayerPolicy(prune=0.5) for g in inv.groups})
    small = apply_policy(model, policy, x, inv)

    # every member of every coupled group keeps exactly kept_channels(n, 0.5); the head keeps 10
    for lay in inv:
        expected = kept_channels(lay.out_channels, 0.5) if lay.prunable else lay.out_channels
        assert _out_channels(small.get_submodule(lay.fqn)) == expected, lay.fqn
    assert small.get_submodule(inv.fqns[-1]).out_features == 10

    before, after = model_stats(model, x), model_stats(small, x)
    assert after["macs"] < 0.35 * before["macs"]  # about a quarter: in and out channels halve
    assert after["params"] < 0.35 * before["params"]

    xb = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = small(xb)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    got = run_onnx(export_onnx(small, x), xb.numpy())
    assert np.abs(got - out.numpy()).max() < 1e-4 * max(1.0, float(out.abs().max()))
    # the pruned model is a normal model again: it can be inspected (and compressed) further
    assert build_inventory(small, x).total_macs == after["macs"]


def test_resnet20_residual_groups_prune_together() -> None:
    torch.manual_seed(0)
    model = resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    inv = build_inventory(model, x)
    # the stem and every conv2 of stage 1 feed the same residual stream: one group
    stage1 = ["conv1"] + [f"layer1.{i}.conv2" for i in range(3)]
    assert {inv[f].group for f in stage1} == {"conv1"}
    # setting prune on one member prunes the whole group (group ratio = max over members)
    small = apply_policy(
        model, CompressionPolicy(layers={"layer1.1.conv2": LayerPolicy(prune=0.75)}), x, inv
    )
    keep = kept_channels(16, 0.75)
    assert keep == 8  # 4 rounded up to one block of channel_multiple(16) = 8 channels
    assert [small.get_submodule(f).out_channels for f in stage1] == [keep] * 4
    assert small.layer1[0].conv1.in_channels == keep
    assert small.layer2[0].shortcut[0].in_channels == keep
    assert small.layer1[0].conv1.out_channels == 16  # its own group, untouched
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
