"""LayerInventory: kinds, hand-computed MACs/params, coupled pruning groups, fingerprint."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.inventory import build_inventory
from autocompress.models import DigitsCNN, resnet20


def test_digits_cnn_macs_and_params_by_hand():
    inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    assert inv.fqns == ["features.0", "features.2", "classifier.1", "classifier.3"]
    # conv: out * in * kh * kw * H * W (padding keeps 8x8)
    assert inv["features.0"].macs == 32 * 1 * 9 * 64
    assert inv["features.2"].macs == 64 * 32 * 9 * 64
    assert inv["classifier.1"].macs == 1024 * 128
    assert inv["classifier.3"].macs == 128 * 10
    assert inv["features.2"].params == 64 * 32 * 9 + 64
    assert inv.total_macs == 18432 + 1179648 + 131072 + 1280
    assert inv.total_params == 320 + 18496 + 131200 + 1290


def test_classifier_is_not_prunable_and_consumers_know_their_producers():
    inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    assert not inv["classifier.3"].prunable and inv["classifier.3"].group is None
    assert inv["features.0"].prunable
    # flatten: each of the 64 channels of features.2 feeds 16 inputs of classifier.1
    assert inv["classifier.1"].in_groups == {"features.2": 1024}
    assert inv["features.2"].in_groups == {"features.0": 32}


def test_resnet20_residual_layers_share_one_group():
    inv = build_inventory(resnet20(), torch.zeros(1, 3, 32, 32))
    stage1 = {m.fqn for m in inv.group_members("conv1")}
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} == stage1
    stage2 = {m.fqn for m in inv.group_members("layer2.0.conv2")}
    assert "layer2.0.shortcut.0" in stage2 and "layer2.2.conv2" in stage2
    # block-internal convs are free to prune on their own
    assert inv["layer1.0.conv1"].group == "layer1.0.conv1"
    assert len(inv.groups) == 1 + 9 + 2  # stem/stage groups + one per block-internal conv


def test_depthwise_conv_joins_its_producer_group():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 5 * 5, 2),
    )
    inv = build_inventory(model, torch.zeros(1, 3, 5, 5))
    assert inv["2"].kind == "DepthwiseConv2d"
    assert inv["2"].group == inv["0"].group == "0"
    assert inv["2"].macs == 8 * 9 * 25  # one 3x3 filter per channel


def test_fingerprint_tracks_architecture_not_weights():
    a = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    b = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    c = build_inventory(DigitsCNN(num_classes=5), torch.zeros(1, 1, 8, 8))
    assert a.sha256 == b.sha256 != c.sha256


def test_a_graph_torch_pruning_cannot_trace_leaves_every_layer_unprunable():
    from autocompress.tasks import load_task

    task = load_task("torchvision:shufflenet_v2_x0_5")
    inv = build_inventory(task.model, task.example_input)
    assert inv.pruning_error  # the reason is kept for the user
    assert len(inv) > 10 and not any(layer.prunable for layer in inv)
    # the MACs are still counted: every layer computes, and the layers are part of the model
    assert all(layer.macs > 0 for layer in inv) and sum(layer.macs for layer in inv) <= inv.total_macs


def test_a_conv_whose_group_holds_a_fixed_hidden_width_is_not_prunable():
    """torchvision's ViT reshapes its patch embedding to ``hidden_dim`` in the forward, so
    the group of ``conv_proj`` (the residual stream, with Linear members) cannot lose channels."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                            hidden_dim=32, mlp_dim=64).eval()
    inv = build_inventory(vit, torch.zeros(1, 3, 32, 32))
    assert not inv["conv_proj"].prunable
    assert not inv["encoder.layers.encoder_layer_0.mlp.3"].prunable
    assert inv["encoder.layers.encoder_layer_0.mlp.0"].prunable  # the MLP's hidden units


def test_the_pruning_checks_leave_no_model_copy_behind():
    """Each check prunes a copy whose dependency graph references it in a cycle; a BERT-base
    inventory held one copy per check (gigabytes) until the next cyclic collection."""
    import gc

    import pytest

    transformers = pytest.importorskip("transformers")
    from autocompress.inventory import pruning_groups, unprunable_linear_groups

    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64)
    bert = transformers.BertModel(config).eval()
    x = torch.zeros(1, 8, dtype=torch.long)
    groups = pruning_groups(bert, x)[0]
    gc.collect()
    gc.disable()
    try:
        before = sum(isinstance(o, nn.Parameter) for o in gc.get_objects())
        assert unprunable_linear_groups(bert, x, groups)  # the attention's reshaped groups
        after = sum(isinstance(o, nn.Parameter) for o in gc.get_objects())
    finally:
        gc.enable()
    assert after == before  # no pruned copy's weights are left waiting for a collection


def test_swin_mlp_hidden_units_prune_although_its_windows_defeat_the_tracer():
    # Torch-Pruning's flatten mappings run away on Swin's window reshapes (unbounded, the
    # inventory ran out of memory and no layer was prunable); those groups are now dropped
    # and the groups it can follow, the MLP hidden units, stay prunable.
    from torchvision.models.swin_transformer import SwinTransformer

    from autocompress.methods.apply import apply_policy
    from autocompress.policy import CompressionPolicy, LayerPolicy

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                            window_size=[4, 4], num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    inv = build_inventory(model, x)
    assert inv.pruning_error is None
    prunable = {layer.fqn for layer in inv.layers if layer.prunable}
    assert prunable == {"features.1.0.mlp.0", "features.3.0.mlp.0"}
    policy = CompressionPolicy(layers={"features.1.0.mlp.0": LayerPolicy(prune=0.5)})
    pruned = apply_policy(model, policy, x, inv)
    assert pruned.features[1][0].mlp[0].out_features == model.features[1][0].mlp[0].out_features // 2
    assert pruned(x).shape == (1, 10)
