"""``prune``: structured output-channel pruning with Torch-Pruning, one coupled group at a time.

Each coupled group (a residual add, a depthwise conv, a flatten into a Linear)
loses the same channels in every member; its ratio is the largest ``prune``
set on any member (:func:`~autocompress.methods.shapes.group_prune_ratios`) and
the number kept is :func:`~autocompress.methods.shapes.kept_channels` of the
group leader's output channels. Channels are ranked by their group L1
magnitude and removed physically (``Group.prune``), so MACs, parameters and
measured latency all fall. The model's output layer is never in a group.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.errors import MethodError
from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory, dependency_graph
from autocompress.methods.registry import register_method
from autocompress.methods.shapes import group_prune_ratios, kept_channels
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
            keep = kept_channels(n, ratios[group_name])
            if keep >= n:
                continue
            full = graph.get_pruning_group(leader, fn, list(range(n)))
            scores = importance(full)
            if scores is None or scores.numel() != n:
                raise MethodError(
                    f"prune: Torch-Pruning gave no channel importance for group {group_name!r}; "
                    "it cannot be pruned, set its prune to null"
                )
            drop = torch.argsort(scores, stable=True)[: n - keep].sort().values.tolist()
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
        return model
