"""The shape rules every stage must agree on: how many channels a prune ratio keeps,
which rank a low-rank factorisation really uses, and which ratio a coupled group gets.

The analytic cost model and the methods both call these functions, so a
predicted cost always describes the model that ``apply_policy`` builds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autocompress.inventory import LayerInfo, LayerInventory
    from autocompress.policy import CompressionPolicy


# Pruned layers keep a multiple of this many channels (when they have at least two such
# blocks): 8 fp32 lanes fill one AVX2 register, and ONNX Runtime's NCHWc convolutions work
# in blocks of 8 on AVX2 CPUs, so a channel count off the multiple falls back to slower
# kernels and can make a pruned model slower than the unpruned one
# (benchmarks/channel_alignment.py measures it). Torch-Pruning's ``round_to`` and NNCF's
# pruning do the same for the same reason.
CHANNEL_MULTIPLE = 8


def kept_channels(n: int, prune: float | None, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Channels left after removing the fraction ``prune`` of ``n`` (at least one).

    A layer with at least ``2 * multiple`` channels keeps the multiple of
    ``multiple`` nearest to ``n * (1 - prune)`` (ties keep more; at least
    ``multiple``), so pruned layers stay on the fast, vectorised kernels;
    smaller layers keep exactly ``n - floor(prune * n)``.

    >>> kept_channels(32, 0.5), kept_channels(10, 0.25), kept_channels(4, 0.99)
    (16, 8, 1)
    >>> kept_channels(32, 0.1), kept_channels(32, 0.55), kept_channels(64, 0.45), kept_channels(64, 0.99)
    (32, 16, 40, 8)
    """
    if not prune:
        return n
    keep = max(1, n - int(math.floor(prune * n + 1e-9)))
    if multiple > 1 and n >= 2 * multiple:
        keep = min(n, max(multiple, multiple * math.floor(keep / multiple + 0.5)))
    return keep


def group_kept_channels(leader: LayerInfo, prune: float | None) -> int:
    """Output channels a pruning group keeps, counted on its leader ``leader``.

    A group led by an attention's query, key or value projection loses whole heads, each
    ``head_dim`` channels (:func:`kept_channels` of the heads, with no multiple to keep: at
    least one head stays); any other group loses channels (:func:`kept_channels`).
    """
    if leader.heads and leader.head_dim:
        return kept_channels(leader.heads, prune, multiple=1) * leader.head_dim
    return kept_channels(leader.out_channels, prune)


def group_prune_ratios(policy: CompressionPolicy, inventory: LayerInventory) -> dict[str, float]:
    """Prune ratio of each coupled group: the largest ``prune`` set on any of its members.

    Coupled layers (a residual add, a depthwise conv) must lose the same
    channels, so one ratio serves the whole group; search spaces suggest it on
    the group's first member (the group's name).
    """
    ratios: dict[str, float] = {}
    for fqn, lp in policy.layers.items():
        if not lp.prune or fqn not in inventory:
            continue
        group = inventory[fqn].group
        if group is not None:
            ratios[group] = max(ratios.get(group, 0.0), lp.prune)
    return ratios


def lowrank_rank(rows: int, cols: int, rank: int | None) -> int | None:
    """The rank a factorisation of a ``rows x cols`` weight really uses, or None to skip it.

    A factorisation costs ``rank * (rows + cols)`` MACs per position against
    ``rows * cols`` for the dense layer, so it is skipped where it would not
    reduce MACs (the break-even point), and the rank is clipped to min(rows, cols).

    >>> lowrank_rank(64, 288, 16), lowrank_rank(64, 288, 60), lowrank_rank(64, 288, None)
    (16, None, None)
    """
    if rank is None:
        return None
    r = min(rank, rows, cols)
    if r * (rows + cols) >= rows * cols:
        return None
    return r
