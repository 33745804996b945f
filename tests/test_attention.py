"""Fused attention split into Linear projections: same outputs, and the search can compress them."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from autocompress.inventory import attention_heads, build_inventory
from autocompress.methods import apply_policy
from autocompress.models.attention import SplitMultiheadAttention, split_fused_attention
from autocompress.policy import CompressionPolicy, LayerPolicy
from autocompress.runtime.onnx import export_onnx, run_onnx


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_the_split_attention_computes_what_the_fused_one_does(batch_first, need_weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, kdim=12, vdim=10, batch_first=batch_first).eval()
    split = SplitMultiheadAttention.from_fused(mha)
    dims = (2, 5) if batch_first else (5, 2)
    q, k, v = torch.randn(*dims, 16), torch.randn(3, 2, 12), torch.randn(3, 2, 10)
    if batch_first:
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    causal = torch.tensor([[False, True, True]] * 5)
    for kwargs in ({}, {"key_padding_mask": pad}, {"attn_mask": causal, "key_padding_mask": pad},
                   {"attn_mask": torch.randn(5, 3)}):
        want = mha(q, k, v, need_weights=need_weights, **kwargs)
        got = split(q, k, v, need_weights=need_weights, **kwargs)
        assert torch.allclose(got[0], want[0], atol=1e-5)
        if need_weights:
            assert torch.allclose(got[1], want[1], atol=1e-5)


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=4, hidden_dim=32, mlp_dim=64,
                                               num_classes=10).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    return vit


def test_a_vits_attention_projections_become_compressible_and_keep_its_outputs(tmp_path):
    model, x = _tiny_vit(), torch.randn(2, 3, 32, 32)
    before = model(x)
    n_before = len(build_inventory(model, x[:1]))
    assert split_fused_attention(model) == 2
    assert torch.allclose(model(x), before, atol=1e-5)
    inv = build_inventory(model, x[:1])
    block = "encoder.layers.encoder_layer_0.self_attention"
    assert {f"{block}.{p}" for p in ("query", "key", "value", "out_proj")} <= set(inv.fqns)
    assert len(inv) == n_before + 2 * 4
    assert attention_heads(model)[f"{block}.query"] == 4
    from autocompress.space import default_space

    assert default_space("torchvision:vit_b_16", inv).derived  # the CNN space knows no heads
    # Two of the four heads pruned, the query at 8-bit inputs: the model runs and exports.
    policy = CompressionPolicy(layers={f"{block}.query": LayerPolicy(prune=0.5, act_bits=8)})
    small = apply_policy(model, policy, x[:1], inventory=inv)
    attn = small.get_submodule(block)
    assert (attn.key.out_features, attn.value.out_features, attn.out_proj.in_features) == \
        (16, 16, 16)  # the query is wrapped in its input quantiser
    assert attn.num_heads == 2
    out = small(x)
    assert out.shape == before.shape and not torch.allclose(out, before, atol=1e-3)
    onnx_out = run_onnx(export_onnx(small, x[:1]), x[:1])
    assert abs(onnx_out - small(x[:1]).detach().numpy()).max() < 1e-3


def test_a_vit_task_searches_its_attention_heads(tmp_path):
    from autocompress.engine import search
    from autocompress.space import default_space
    from autocompress.tasks import Task
    from autocompress.tasks.synthetic import output_cosine_metric, synthetic_loaders

    model = _tiny_vit()
    train, val = synthetic_loaders(model, (3, 32, 32))
    task = Task(name="tiny-vit", model=model, example_input=torch.randn(1, 3, 32, 32),
                train_loader=train, val_loader=val, metric=output_cosine_metric(model),
                metric_name="cosine", distill="cosine", baseline_metric=1.0)
    assert isinstance(task.model.encoder.layers[0].self_attention, SplitMultiheadAttention)
    inv = build_inventory(task.model, task.example_input)
    space = default_space(task.name, inv).resolve(inv)
    block = "encoder.layers.encoder_layer_1.self_attention"
    assert {f"{block}.query/prune", f"{block}.out_proj/act_bits"} <= set(space.params)
    result = search(task, budget="macs<=80%", target="torch-1t-b1", trials=2, finetune_steps=2,
                    export=False, out=str(tmp_path), seed=0)
    assert len(result.trials) == 2 and result.feasible
