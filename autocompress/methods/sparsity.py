"""``sparsity``: unstructured magnitude pruning with the mask baked into the weights.

``torch.nn.utils.prune.l1_unstructured`` zeroes the ``round(sparsity * numel)``
smallest-magnitude weights of each weight tensor of the layer (both factors
when it was factorised), and ``prune.remove`` makes the zeros permanent, so the
model carries no masks or hooks. MACs on dense runtimes do not fall; only
sparse storage shrinks (see :func:`autocompress.methods.apply.model_size_bytes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.nn.utils import prune

from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory
from autocompress.methods.registry import register_method, weight_modules
from autocompress.policy import CompressionPolicy


@register_method
class Sparsity:
    """Zero the smallest-magnitude fraction ``sparsity`` of every weight of the layer."""

    name = "sparsity"
    knob = "sparsity"

    def apply(
        self,
        model: nn.Module,
        policy: CompressionPolicy,
        inventory: LayerInventory,
        example_input: ModelInput,
        calibration: Iterable[Any] | None,
    ) -> nn.Module:
        for fqn, lp in policy.layers.items():
            if not lp.sparsity:
                continue
            for _name, module in weight_modules(model, fqn):
                prune.l1_unstructured(module, "weight", amount=float(lp.sparsity))
                prune.remove(module, "weight")
        return model
