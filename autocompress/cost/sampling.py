"""Seeded random policies over every knob, for fidelity checks of the cost models.

The policies span the whole range a search visits: an overall strength
``u ~ U(0, max_prune)`` is drawn per policy and each group's prune ratio is
drawn in ``[0, u]``, so some policies are light and some heavy; a random
subset of layers gets a low rank, weight bits and 8-bit activations.
"""

from __future__ import annotations

import random
import warnings
from typing import TYPE_CHECKING

from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy, LayerPolicy

if TYPE_CHECKING:
    from torch import nn

    from autocompress.space import ResolvedSpace


def random_policy(
    inventory: LayerInventory,
    rng: random.Random,
    max_prune: float = 0.7,
    p_rank: float = 0.2,
    p_bits: float = 0.5,
    p_act8: float = 0.2,
    p_sparsity: float = 0.2,
) -> CompressionPolicy:
    """One random policy that fits ``inventory`` (prune set on each group's leader).

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> p = random_policy(inv, random.Random(0))
    >>> p.validate_against(inv); set(p.layers) <= set(inv.fqns)
    True
    """
    strength = rng.uniform(0.0, max_prune)
    layers: dict[str, dict] = {}
    for group in inventory.groups:
        ratio = round(rng.uniform(0.0, strength), 2)
        if ratio > 0:
            layers.setdefault(group, {})["prune"] = min(ratio, 0.95)
    for info in inventory:
        knobs = layers.setdefault(info.fqn, {})
        if info.kind != "DepthwiseConv2d" and info.groups == 1 and rng.random() < p_rank:
            knobs["rank"] = max(1, int(info.max_rank * rng.choice([0.125, 0.25, 0.5])))
        if rng.random() < p_bits:
            knobs["bits"] = rng.choice([4, 6, 8, 16, 32])
        if rng.random() < p_act8:
            knobs["act_bits"] = 8
        if rng.random() < p_sparsity:
            knobs["sparsity"] = round(rng.uniform(0.1, 0.9), 2)
    return CompressionPolicy(
        layers={fqn: LayerPolicy(**k) for fqn, k in layers.items() if k}
    )


def build_sampled(model: nn.Module, policy: CompressionPolicy, example_input: ModelInput,
                  inventory: LayerInventory) -> nn.Module:
    """The model a sampled policy makes (``apply_policy``), without ``LowRankSkipped`` warnings.

    A random rank that the policy's own pruning pushed to break-even is left dense, as
    the cost models assume (``compressed_shapes``); a user who never wrote the policy
    would only see a warning about it.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> inv = build_inventory(DigitsCNN(), x)
    >>> p = CompressionPolicy(layers={"classifier.1": LayerPolicy(prune=0.9, rank=64)})
    >>> build_sampled(DigitsCNN(), p, x, inv)(x).shape  # rank 64 past break-even: left dense
    torch.Size([1, 10])
    """
    from autocompress.methods import LowRankSkipped, apply_policy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowRankSkipped)
        return apply_policy(model, policy, example_input, inventory=inventory)


def random_policies(inventory: LayerInventory, n: int, seed: int = 0, **kwargs) -> list[CompressionPolicy]:
    """``n`` seeded random policies (see :func:`random_policy`)."""
    rng = random.Random(seed)
    return [random_policy(inventory, rng, **kwargs) for _ in range(n)]


def space_policies(space: ResolvedSpace, n: int, seed: int = 0) -> list[CompressionPolicy]:
    """``n`` seeded policies drawn as a random search over ``space`` draws them.

    Every parameter takes one of its levels uniformly at random. These are the
    policies a search actually scores, unlike :func:`random_policies`, which
    spreads over every knob of every layer.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> from autocompress.space import SearchSpace
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> sp = SearchSpace.embedded("digits").resolve(inv)
    >>> [p.validate_against(inv) for p in space_policies(sp, 2)]
    [None, None]
    """
    rng = random.Random(seed)
    return [space.policy_from_params(space.draw_params(rng)) for _ in range(n)]
