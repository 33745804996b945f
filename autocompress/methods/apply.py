"""``apply_policy``: a policy + a model -> a new, really smaller model; and its measured size.

The methods run in registry order (prune -> lowrank -> sparsity -> quantize)
on a deep copy, so the caller's model is never touched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory, build_inventory, count_macs
from autocompress.methods.quantize import QUANT_BITS
from autocompress.methods.registry import METHODS
from autocompress.policy import CompressionPolicy

INDEX_BYTES = 4  # sparse storage: one int32 index per kept weight


def apply_policy(
    model: nn.Module,
    policy: CompressionPolicy,
    example_input: ModelInput,
    inventory: LayerInventory | None = None,
    calibration: Iterable[Any] | None = None,
) -> nn.Module:
    """Return a compressed deep copy of ``model`` in eval mode (``model`` is untouched).

    ``policy`` is first checked against ``inventory`` (built from ``model`` and
    ``example_input`` when not given; :class:`~autocompress.errors.PolicyError`
    if it does not fit). ``calibration`` batches (tensors, or ``(inputs, labels)``
    pairs) set the activation ranges for ``act_bits: 8``; default: ``example_input``.

    >>> import torch
    >>> from autocompress.models import DigitsCNN
    >>> from autocompress.policy import LayerPolicy
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> p = CompressionPolicy(layers={"features.0": LayerPolicy(prune=0.5, bits=4)})
    >>> small = apply_policy(DigitsCNN(), p, x)
    >>> small.features[0].out_channels, small(x).shape
    (16, torch.Size([1, 10]))
    """
    if inventory is None:
        # On a copy: building an inventory switches the model to eval mode.
        inventory = build_inventory(copy.deepcopy(model), example_input)
    policy.validate_against(inventory)
    out = copy.deepcopy(model).eval()
    for method in METHODS.values():
        out = method.apply(out, policy, inventory, example_input, calibration)
    return out.eval()


def _owner(module_name: str, fqns: Iterable[str]) -> str | None:
    for fqn in fqns:
        if module_name == fqn or module_name.startswith(fqn + "."):
            return fqn
    return None


def model_size_bytes(model: nn.Module, policy: CompressionPolicy | None = None) -> int:
    """Storage of ``model``'s parameters in bytes under ``policy`` (rounded up per tensor).

    Rules (the analytic cost model uses the same ones):

    - the weight of a Conv2d/Linear that holds policy layer ``fqn`` (the layer or its
      low-rank factors) takes ``bits`` per element, ``bits`` = the layer's
      ``LayerPolicy.weight_bits`` (2..8 quantised, 16 half, None/32 float);
    - every other parameter (biases, BatchNorm, layers without a policy) takes 32 bits;
    - with ``sparsity`` s > 0 a weight tensor of ``n`` elements keeps
      ``k = n - round(s * n)`` weights (what magnitude pruning keeps); it is stored
      sparse, ``k * bits / 8 + k * 4`` bytes (int32 index per weight), where that is
      smaller than dense.

    >>> from autocompress.policy import LayerPolicy
    >>> m = nn.Linear(10, 4)  # 40 weights + 4 biases
    >>> four_bits = CompressionPolicy(layers={"": LayerPolicy(bits=4)})
    >>> model_size_bytes(m), model_size_bytes(m, four_bits)
    (176, 36)
    """
    layers = dict(policy.layers) if policy is not None else {}
    total = 0
    for name, param in model.named_parameters():
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        fqn = _owner(module_name, layers) if layers else None
        n = param.numel()
        if fqn is None or pname != "weight" or not isinstance(module, (nn.Conv2d, nn.Linear)):
            total += n * 4
            continue
        lp = layers[fqn]
        bits = lp.weight_bits
        dense = math.ceil(n * bits / 8)
        if lp.sparsity:
            kept = n - round(lp.sparsity * n)
            total += min(dense, math.ceil(kept * bits / 8) + kept * INDEX_BYTES)
        else:
            total += dense
    return total


def model_stats(
    model: nn.Module, example_input: ModelInput, policy: CompressionPolicy | None = None
) -> dict[str, Any]:
    """``{"macs", "params", "size_bytes"}`` of ``model`` (fvcore MACs at the input's batch)."""
    macs, _unsupported = count_macs(model, example_input)
    return {
        "macs": int(macs.get("", 0)),
        "params": int(sum(p.numel() for p in model.parameters())),
        "size_bytes": model_size_bytes(model, policy),
    }


def is_quantised(policy: CompressionPolicy) -> bool:
    """True when any layer has fake-quantised weights (2..8 bits) or activations."""
    return any(lp.bits in QUANT_BITS or lp.act_bits == 8 for lp in policy.layers.values())
