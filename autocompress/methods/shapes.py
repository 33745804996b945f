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


# Pruned layers keep a multiple of the first of these channel counts that they have at least
# two blocks of. ONNX Runtime's NCHWc kernels work in blocks of 16 channels on AVX-512 CPUs
# and of 8 on AVX2 ones; off the block a conv is padded to it and the ops after it (pooling)
# fall back to plain NCHW behind a reorder: on an AVX-512 machine digits' second conv cut
# from 64 to 56 channels (a multiple of 8) made its max pool 6x slower and the model slower
# than the unpruned one (benchmarks/channel_alignment.py measures it). A multiple of 16 is
# aligned on both, and a policy must build the same model on every machine, so the rule
# does not depend on this CPU. Torch-Pruning's ``round_to``, NNCF's pruning and Model
# Optimizer's channel divisor do the same for the same reason.
CHANNEL_MULTIPLES = (16, 8)


def channel_multiple(n: int) -> int:
    """The multiple a pruned layer of ``n`` output channels keeps (1: exact counts).

    >>> channel_multiple(64), channel_multiple(32), channel_multiple(24), channel_multiple(10)
    (16, 16, 8, 1)
    """
    return next((m for m in CHANNEL_MULTIPLES if n >= 2 * m), 1)


def kept_channels(n: int, prune: float | None, multiple: int | None = None) -> int:
    """Channels left after removing the fraction ``prune`` of ``n`` (at least one).

    The layer keeps the multiple of ``multiple`` (default :func:`channel_multiple`) nearest
    to ``n * (1 - prune)`` (ties keep more; at least one multiple), so pruned layers stay on
    the fast, vectorised kernels; a layer too small for any multiple keeps exactly
    ``n - floor(prune * n)``.

    >>> kept_channels(32, 0.5), kept_channels(10, 0.25), kept_channels(4, 0.99)
    (16, 8, 1)
    >>> kept_channels(64, 0.1), kept_channels(64, 0.45), kept_channels(16, 0.75), kept_channels(64, 0.99)
    (64, 32, 8, 16)
    """
    if not prune:
        return n
    keep = max(1, n - int(math.floor(prune * n + 1e-9)))
    multiple = channel_multiple(n) if multiple is None else multiple
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
