"""Attention with its projections as Linear modules, so the search can compress them.

``nn.MultiheadAttention`` keeps its query, key and value projections in one fused
parameter (``in_proj_weight``) and calls its output projection functionally, so a model
built on it (torchvision's ViT, ``nn.TransformerEncoderLayer``) shows none of its
attention projections to the inventory: only the MLP layers can be pruned, factorised
or quantised. :func:`split_fused_attention` swaps each one for
:class:`SplitMultiheadAttention`, which computes the same outputs with four ``nn.Linear``
children named as Hugging Face's attentions name theirs (``query``, ``key``, ``value``),
and reshapes by ``-1`` heads, so whole heads can be pruned as in BERT.

>>> import torch
>>> from torch import nn
>>> layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
>>> x = torch.randn(2, 5, 16)
>>> before = layer(x)
>>> split_fused_attention(layer)
1
>>> bool(torch.allclose(layer(x), before, atol=1e-5)), type(layer.self_attn.query).__name__
(True, 'Linear')
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SplitMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward with ``query``/``key``/``value``/``out_proj`` Linears.

    Takes the same call (``query, key, value, key_padding_mask, need_weights, attn_mask,
    average_attn_weights, is_causal``) and returns the same ``(output, weights)``.
    ``in_proj_bias`` is None and ``_qkv_same_embed_dim`` False because
    ``nn.TransformerEncoderLayer`` reads them to choose its fused fast path, which needs the
    fused parameter; they send it down the plain path that calls this module.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        self.query = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.key = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.value = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.in_proj_bias: torch.Tensor | None = None
        self._qkv_same_embed_dim = False

    @classmethod
    def from_fused(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """The same attention, weights copied from ``mha``'s fused or separate projections."""
        bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, bias, mha.kdim, mha.vdim,
                  mha.batch_first)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.chunk(3) if bias else (None, None, None)
        with torch.no_grad():
            for proj, w, b in zip((new.query, new.key, new.value), weights, biases, strict=True):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new.to(mha.out_proj.weight.device, mha.out_proj.weight.dtype)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, length, heads * head_dim)`` -> ``(batch, heads, length, head_dim)``."""
        return x.view(x.shape[0], x.shape[1], -1, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._heads(self.query(query)), self._heads(self.key(key)), \
            self._heads(self.value(value))
        batch, heads, length, source = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        mask = _additive_mask(attn_mask, key_padding_mask, batch, heads, length, source, q.dtype)
        if is_causal and mask is None:
            causal = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
            mask = _additive_mask(causal, None, batch, heads, length, source, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            out = F.dropout(weights, p) @ v if p else weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _additive_mask(attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None,
                   batch: int, heads: int, length: int, source: int,
                   dtype: torch.dtype) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s masks (boolean: True is masked out; float: added) as one
    float mask broadcast to ``(batch, heads, length, source)``."""
    out: torch.Tensor | None = None
    for mask, shape in ((attn_mask, None), (key_padding_mask, (batch, 1, 1, source))):
        if mask is None:
            continue
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf"))
        mask = mask.to(dtype)
        if shape is not None:
            mask = mask.view(shape)
        elif mask.dim() == 3:  # (batch * heads, length, source)
            mask = mask.view(batch, heads, length, source)
        out = mask if out is None else out + mask
    return out


def split_fused_attention(model: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` in ``model`` (in place) by an equal
    :class:`SplitMultiheadAttention`; returns how many were replaced.

    Attentions with ``add_bias_kv`` or ``add_zero_attn`` are left as they are (their extra
    key and value rows have no projection to split).
    """
    swaps = [(name, m) for name, m in model.named_modules()
             if name and type(m) is nn.MultiheadAttention and m.bias_k is None
             and not m.add_zero_attn]
    for name, mha in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, SplitMultiheadAttention.from_fused(mha))
    return len(swaps)
