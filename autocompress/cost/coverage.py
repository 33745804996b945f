"""Every layer shape a search space can give a model: what a table for use away from the
target must hold.

A search on other machines (``search --lut``) cannot time a layer shape its table lacks,
so ``autocompress profile --space S --out lut.json`` measures them all on the target up
front. A layer's runtime shape depends on its own knobs (prune, rank, 8-bit inputs, and
weight bits with 8-bit inputs) and on the pruning of the groups that feed its input
channels; on ONNX Runtime also on whether its neighbours take 8-bit inputs (integer-kernel
fusion). :func:`space_policies` yields, per layer, one policy per combination of those:
the cross product of its own knob levels and its feeding groups' prune levels, each once
as it is and once with its neighbours at 8-bit inputs where the space allows that.

>>> import torch
>>> from autocompress.inventory import build_inventory
>>> from autocompress.models import DigitsCNN
>>> from autocompress.space import SearchSpace
>>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
>>> space = SearchSpace.embedded("digits").resolve(inv)
>>> policies = list(space_policies(space))
>>> len(policies) > len(space.params)
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from autocompress.cost.analytic import compressed_shapes
from autocompress.policy import CompressionPolicy
from autocompress.space import ResolvedSpace

# Knobs that change a layer's runtime shape (sparsity is baked into float weights).
SHAPE_KNOBS = ("prune", "rank", "act_bits", "bits")
# Policies per layer at most: a space with more combinations than this is sampled evenly.
MAX_PER_LAYER = 4096


def feeding_groups(space: ResolvedSpace) -> dict[str, list[str]]:
    """``{fqn: [prune parameter names whose pruning changes that layer's input channels]}``."""
    inventory = space.inventory
    base = {s.fqn: s.in_channels for s in compressed_shapes(CompressionPolicy(layers={}),
                                                             inventory)}
    out: dict[str, list[str]] = {info.fqn: [] for info in inventory}
    for name, p in space.params.items():
        if p.knob != "prune":
            continue
        most = space.policy_from_params({name: p.levels()[-1]})
        for s in compressed_shapes(most, inventory):
            if s.in_channels != base[s.fqn]:
                out[s.fqn].append(name)
    return out


def space_policies(space: ResolvedSpace) -> Iterator[CompressionPolicy]:
    """Per layer, one policy per combination of what decides its runtime shape (see above)."""
    inventory = space.inventory
    feeding = feeding_groups(space)
    by_layer: dict[str, dict[str, Any]] = {}
    for name, p in space.params.items():
        by_layer.setdefault(p.fqn, {})[name] = p
    act8 = {p.fqn for p in space.params.values() if p.knob == "act_bits" and 8 in p.levels()}
    for info in inventory:
        own = [n for n, p in by_layer.get(info.fqn, {}).items() if p.knob in SHAPE_KNOBS]
        names = own + [n for n in feeding[info.fqn] if n not in own]
        if not names:
            continue
        grids = [space.params[n].levels() for n in names]
        combos = list(itertools.product(*grids))
        if len(combos) > MAX_PER_LAYER:
            step = len(combos) / MAX_PER_LAYER
            combos = [combos[int(i * step)] for i in range(MAX_PER_LAYER)]
        neighbours = [f for f in (*inventory.consumers(info.fqn), *_producers(inventory, info.fqn))
                      if f in act8]
        for combo in combos:
            params = dict(zip(names, combo, strict=True))
            yield space.policy_from_params(params)
            if neighbours and params.get(f"{info.fqn}/act_bits") == 8:
                yield space.policy_from_params(
                    {**params, **{f"{f}/act_bits": 8 for f in neighbours}})


def _producers(inventory: Any, fqn: str) -> list[str]:
    return [info.fqn for info in inventory if fqn in inventory.consumers(info.fqn)]
