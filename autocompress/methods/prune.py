"""``prune``: structured output-channel pruning with Torch-Pruning, one coupled group at a time.

Each coupled group (a residual add, a depthwise conv, a flatten into a Linear)
loses the same channels in every member; its ratio is the largest ``prune``
set on any member (:func:`~autocompress.methods.shapes.group_prune_ratios`) and
the number kept is :func:`~autocompress.methods.shapes.group_kept_channels` of the
group leader's output channels. Channels are ranked by their group L1
magnitude and removed physically (``Group.prune``), so MACs, parameters and
measured latency all fall. The model's output layer is never in a group.

A group led by an attention's query, key and value projections (``LayerInfo.heads``)
loses whole heads: a head's importance is the mean over its channels, as Torch-Pruning's
``prune_num_heads`` ranks them, and the attention module's head count is updated.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.errors import MethodError
from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory, dependency_graph, set_head_count
from autocompress.methods.registry import register_method
from autocompress.methods.shapes import group_kept_channels, group_prune_ratios
from autocompress.policy import CompressionPolicy


def channel_importance() -> tp.importance.GroupMagnitudeImportance:
    """L1 magnitude summed over every weight slice the channel touches in its group.

    No normaliser: only the ranking inside one group matters.
    """
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer=None)


@register_method
class Prune:
    """Remove the least important output channels of each coupled group (Torch-Pruning)."""

    name = "prune"
    knob = "prune"

    def apply(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        inventory: LayerInventory,
        example_input: ModelInput,
        calibration: Iterable[Any] | None,
    ) -> nn.Module:
        ratios = {g: r for g, r in group_prune_ratios(policy, inventory).items() if r > 0}
        if not ratios:
            return model
        # One graph for all groups: Group.prune keeps it consistent, as Torch-Pruning's own
        # pruners rely on, and the leaders' channel counts are untouched by other groups.
        graph = dependency_graph(model, example_input)
        importance = channel_importance()
        for group_name in inventory.groups:  # module order, so results are deterministic
            if group_name not in ratios:
                continue
            leader = model.get_submodule(group_name)
            if isinstance(leader, nn.Linear):
                n, fn = leader.out_features, tp.prune_linear_out_channels
            elif isinstance(leader, nn.Conv2d):
                n, fn = leader.out_channels, tp.prune_conv_out_channels
            else:
                raise MethodError(
                    f"prune: group leader {group_name!r} is a {type(leader).__name__}, expected "
                    "Conv2d or Linear; was the model changed after its inventory was built?"
                )
            info = inventory[group_name]
            if n != info.out_channels:
                raise MethodError(
                    f"prune: group leader {group_name!r} has {n} output channels, its inventory "
                    f"{info.out_channels}; was the model changed after its inventory was built?"
                )
            keep = group_kept_channels(info, ratios[group_name])
            if keep >= n:
                continue
            full = graph.get_pruning_group(leader, fn, list(range(n)))
            scores = importance(full)
            if scores is None or scores.numel() != n:
                raise MethodError(
                    f"prune: Torch-Pruning gave no channel importance for group {group_name!r}; "
                    "it cannot be pruned, set its prune to null"
                )
            drop = _dropped(scores, keep, info.head_dim)
            group = graph.get_pruning_group(leader, fn, drop)
            grouped = [
                dep.target.name for dep, _ in group
                if isinstance(dep.target.module, nn.Conv2d) and dep.target.module.groups > 1
                and not (dep.target.module.groups == dep.target.module.in_channels
                         == dep.target.module.out_channels)
            ]
            if grouped:
                raise MethodError(
                    f"prune: group {group_name!r} contains a grouped conv ({grouped[0]}), whose "
                    "channel groups cannot be pruned evenly; set prune to null for this group"
                )
            if not graph.check_pruning_group(group):
                raise MethodError(
                    f"prune: group {group_name!r} would lose every channel of a member; "
                    f"lower its prune ratio (given {ratios[group_name]})"
                )
            group.prune()
            if info.heads and info.head_dim:
                attention = model.get_submodule(group_name.rpartition(".")[0])
                set_head_count(attention, keep // info.head_dim, info.head_dim)
        return model


def _dropped(scores: torch.Tensor, keep: int, head_dim: int | None) -> list[int]:
    """The channels to remove, least important first out: single channels, or whole heads of
    ``head_dim`` channels ranked by their mean importance.

    >>> _dropped(torch.tensor([3., 1., 2., 5.]), 2, None)
    [1, 2]
    >>> _dropped(torch.tensor([3., 1., 2., 5., 0., 1.]), 4, 2)
    [4, 5]
    """
    n = scores.numel()
    if not head_dim:
        return torch.argsort(scores, stable=True)[: n - keep].sort().values.tolist()
    by_head = scores.view(n // head_dim, head_dim).mean(dim=1)
    heads = torch.argsort(by_head, stable=True)[: (n - keep) // head_dim].sort().values.tolist()
    return [h * head_dim + i for h in heads for i in range(head_dim)]
