"""The shape rules every stage must agree on: how many channels a prune ratio keeps,
which rank a low-rank factorisation really uses, and which ratio a coupled group gets.

The analytic cost model and the methods both call these functions, so a
predicted cost always describes the model that ``apply_policy`` builds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autocompress.inventory import LayerInventory
    from autocompress.policy import CompressionPolicy


def kept_channels(n: int, prune: float | None) -> int:
    """Channels left after removing the fraction ``prune`` of ``n`` (at least one).

    >>> kept_channels(32, 0.5), kept_channels(10, 0.25), kept_channels(4, 0.99)
    (16, 8, 1)
    """
    if not prune:
        return n
    return max(1, n - int(math.floor(prune * n + 1e-9)))


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
