"""``lowrank``: truncated-SVD factorisation of Linear and Conv2d weights into two layers.

- ``Linear(in, out)`` -> ``Sequential(Linear(in, r, bias=False), Linear(r, out))``
- ``Conv2d(in, out, k)`` -> ``Sequential(Conv2d(in, r, k, stride, padding, dilation,
  bias=False), Conv2d(r, out, 1))``

The factors live at ``<fqn>.0`` and ``<fqn>.1``; their product is the best
rank-``r`` approximation of the weight (``U sqrt(S)`` and ``sqrt(S) V^T``, so
both factors have the same scale, which helps later quantisation). The rank is
:func:`~autocompress.methods.shapes.lowrank_rank` of the layer's *current*
weight matrix (after pruning); where it would not reduce MACs the layer is left
dense with a :class:`LowRankSkipped` warning. Grouped and depthwise convs are
left dense too.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory
from autocompress.methods.registry import register_method, replace_module
from autocompress.methods.shapes import lowrank_rank
from autocompress.policy import CompressionPolicy


class LowRankSkipped(UserWarning):
    """A low-rank factorisation was not applied (break-even or grouped conv)."""


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, second)`` with ``second @ first`` the best rank-``rank`` fit of ``weight``.

    ``weight`` is 2-D ``(rows, cols)``; ``first`` is ``(rank, cols)``, ``second`` ``(rows, rank)``,
    each carrying the square root of the singular values.

    The singular vectors of the shorter side come from the eigenvectors of its Gram matrix
    in float64: a full SVD of VGG's 4096 x 25088 classifier takes 310 s on one thread, the
    Gram matrix and its eigenvectors 37 s. Squaring the condition number costs nothing
    that matters here: float64 keeps singular values down to 1e-6 of the largest, and a
    rank cut keeps the largest.

    >>> w = torch.randn(6, 4) @ torch.randn(4, 5)  # rank 4
    >>> a, b = svd_factors(w, 4)
    >>> torch.allclose(b @ a, w, atol=1e-4)
    True
    >>> w = torch.randn(40, 9)
    >>> u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    >>> best = (u[:, :3] * s[:3]) @ vh[:3]  # Eckart-Young: the best rank-3 fit
    >>> a, b = svd_factors(w, 3)
    >>> torch.allclose((b @ a).double(), best, atol=1e-4)
    True
    """
    w = weight.detach().double()
    tall = w.shape[0] > w.shape[1]
    side = w.T if tall else w  # (short, long)
    values, vectors = torch.linalg.eigh(side @ side.T)  # ascending
    top = vectors[:, -rank:].flip(1)  # (short, rank), largest first
    root = values[-rank:].flip(0).clamp(min=0).sqrt().sqrt()  # sqrt of the singular values
    # A zero singular value's direction carries nothing: its row and column stay zero.
    inverse = torch.where(root > 0, 1 / root.clamp(min=torch.finfo(w.dtype).tiny), 0.0)
    near = top * root[None, :]  # (short, rank)
    far = (top.T @ side) * inverse[:, None]  # (rank, long)
    first, second = (near.T, far.T) if tall else (far, near)
    return first.to(weight.dtype).contiguous(), second.to(weight.dtype).contiguous()


def factorise(module: nn.Module, rank: int) -> nn.Sequential:
    """The two-layer rank-``rank`` form of a Linear or ungrouped Conv2d."""
    a: nn.Linear | nn.Conv2d
    b: nn.Linear | nn.Conv2d
    if isinstance(module, nn.Linear):
        first, second = svd_factors(module.weight, rank)
        a = nn.Linear(module.in_features, rank, bias=False)
        b = nn.Linear(rank, module.out_features, bias=module.bias is not None)
        a.weight.data.copy_(first)
        b.weight.data.copy_(second)
    elif isinstance(module, nn.Conv2d) and module.groups == 1:
        out, cin, kh, kw = module.weight.shape
        first, second = svd_factors(module.weight.reshape(out, cin * kh * kw), rank)
        a = nn.Conv2d(
            cin, rank, (kh, kw), stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            dilation=module.dilation,  # type: ignore[arg-type]
            bias=False, padding_mode=module.padding_mode,
        )
        b = nn.Conv2d(rank, out, 1, bias=module.bias is not None)
        a.weight.data.copy_(first.reshape(rank, cin, kh, kw))
        b.weight.data.copy_(second.reshape(out, rank, 1, 1))
    else:
        raise TypeError(f"cannot factorise {type(module).__name__}")
    if module.bias is not None and b.bias is not None:
        b.bias.data.copy_(module.bias.detach())
    seq = nn.Sequential(a, b).to(device=module.weight.device, dtype=module.weight.dtype)
    return seq.train(module.training)


def matrix_shape(module: nn.Conv2d | nn.Linear) -> tuple[int, int]:
    """(rows, cols) of the weight as SVD sees it: (out, in/groups * kh * kw)."""
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


@register_method
class LowRank:
    """Replace each layer that has a ``rank`` by its truncated-SVD two-layer form."""

    name = "lowrank"
    knob = "rank"

    def apply(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        inventory: LayerInventory,
        example_input: ModelInput,
        calibration: Iterable[Any] | None,
    ) -> nn.Module:
        for fqn, lp in policy.layers.items():
            if lp.rank is None:
                continue
            module = model.get_submodule(fqn)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue  # already replaced by an earlier method; nothing sensible to do
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                warnings.warn(
                    f"lowrank: layer {fqn!r} is a grouped/depthwise conv; left dense",
                    LowRankSkipped, stacklevel=2,
                )
                continue
            rows, cols = matrix_shape(module)
            rank = lowrank_rank(rows, cols, lp.rank)
            if rank is None:
                warnings.warn(
                    f"lowrank: layer {fqn!r} rank {lp.rank} would not reduce MACs on its "
                    f"{rows}x{cols} weight (it needs rank < {rows * cols / (rows + cols):.1f}); "
                    "left dense",
                    LowRankSkipped, stacklevel=2,
                )
                continue
            replace_module(model, fqn, factorise(module, rank))
        return model
