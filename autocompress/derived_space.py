"""A search space derived from a model's layers, for tasks that ship no space of their own.

:func:`derive_space` reads a :class:`~autocompress.inventory.LayerInventory` and writes an
ordinary space file (docs/search-space.md), rules first-match-wins:

1. the output layer(s) (``match: {output: true}``) stay dense: bits 8 or 32 only;
2. the smallest layers, together under 1% of the MACs and of the weights, search nothing
   (one ``fqn`` rule each; a group leader among them keeps ``prune`` for its group);
3. convs fed by the image (at most 4 input channels) get prune, and bits 8 or 32;
4. depthwise convs get prune (searched only where one leads its group), bits 8 or 32;
5. other convs get prune, bits and sparsity;
6. the query, key and value projections of attention modules (``match: {attention: true}``)
   get prune, which removes whole heads, and the knobs of other Linear layers;
7. the hidden layers of MLP blocks (a Linear whose output units only the next Linear layers
   read, one ``fqn`` rule each) get prune, which removes hidden units, and the knobs of
   other Linear layers;
8. other Linear layers get rank, bits, sparsity and act_bits (no prune: it would cut the
   residual stream's features that every block reads).

The ranges are those of the shipped spaces: convs as ``torchvision_cnn``, Linear layers as
``linear_layers``. :func:`save_derived_space` writes it to ``<out>/search_space.yaml`` so a
user can edit it and pass it back with ``--space``.

>>> import torch
>>> from autocompress.inventory import build_inventory
>>> from autocompress.models import DigitsCNN
>>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
>>> space = derive_space(inv, "digits-cnn")
>>> space.derived, space.source
(True, 'derived')
>>> sorted(n for n in space.resolve(inv).names if n.startswith(("features.2", "classifier")))
['classifier.1/act_bits', 'classifier.1/bits', 'classifier.1/prune', 'classifier.1/rank', \
'classifier.1/sparsity', 'classifier.3/bits', 'features.2/bits', 'features.2/prune', \
'features.2/sparsity']
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

from autocompress.errors import SpaceError
from autocompress.inventory import LayerInfo, LayerInventory
from autocompress.space import SearchSpace

DERIVED_FILE = "search_space.yaml"

# Knob domains as YAML flow mappings; convs follow torchvision_cnn.yaml, Linear layers
# linear_layers.yaml, sensitive layers (output, stem, depthwise) the shipped "8 or 32" rule.
CONV_PRUNE = "{low: 0.0, high: 0.5, step: 0.1}"
CONV_BITS = "{choices: [4, 8, 32]}"
CONV_SPARSITY = "{low: 0.0, high: 0.5, step: 0.1}"
LINEAR_RANK = "{choices: [0.125, 0.25, 0.5, 1.0]}"
LINEAR_BITS = "{choices: [4, 6, 8, 32]}"
LINEAR_SPARSITY = "{low: 0.0, high: 0.6, step: 0.1}"
SAFE_BITS = "{choices: [8, 32]}"
# 8-bit inputs with 8-bit weights let ONNX Runtime run a Linear layer as an integer matmul:
# all-MiniLM-L6-v2 with every Linear at 8/8 ran 0.42x its float latency (ort, 1 thread, b8)
# at a cosine of 0.993 before any fine-tune. Where it does not pay (small layers, where the
# quantise/dequantise pair costs more than it saves) the latency table measures that.
LINEAR_ACT_BITS = "{choices: [8, 32]}"
# The knob lines every Linear rule holds (attention, MLP hidden layers, the rest).
LINEAR_KNOBS = (f"    rank: {LINEAR_RANK}", f"    bits: {LINEAR_BITS}",
                f"    sparsity: {LINEAR_SPARSITY}", f"    act_bits: {LINEAR_ACT_BITS}")
HEADS_PRUNE = "{choices: [0.0, 0.25, 0.5]}"  # of each attention's heads: 12 heads keep 12, 9 or 6

TINY_SHARE = 0.01  # the smallest layers together below this share of MACs and of weights
STEM_CHANNELS = 4  # a conv with at most this many input channels reads the image itself


def tiny_layers(inventory: LayerInventory, share: float = TINY_SHARE) -> list[str]:
    """The smallest non-output layers that together hold under ``share`` of both the layers'
    MACs and their weights, in module order: compressing them cannot move a budget.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> tiny_layers(build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8)), share=0.05)
    ['features.0']
    """
    macs = sum(layer.macs for layer in inventory) or 1
    params = sum(layer.params for layer in inventory) or 1
    order = {fqn: i for i, fqn in enumerate(inventory.fqns)}
    candidates = sorted(
        (layer for layer in inventory if layer.fqn not in inventory.outputs),
        key=lambda layer: (max(layer.macs / macs, layer.params / params), order[layer.fqn]),
    )
    picked: list[str] = []
    mac_sum = param_sum = 0.0
    for layer in candidates:
        mac_sum += layer.macs / macs
        param_sum += layer.params / params
        if mac_sum >= share or param_sum >= share:
            break
        picked.append(layer.fqn)
    return sorted(picked, key=order.__getitem__)


def mlp_hidden_layers(inventory: LayerInventory) -> list[str]:
    """Linear layers whose output units only other Linear layers read, and that nothing else
    is pruned with: an MLP block's hidden layers, whose units can go. Attention projections
    and output layers are not among them.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> mlp_hidden_layers(build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8)))
    ['net.1', 'net.3']
    """
    hidden = []
    for layer in inventory:
        if (layer.kind != "Linear" or not layer.prunable or layer.group != layer.fqn
                or layer.heads or layer.fqn in inventory.outputs):
            continue
        readers = [inventory[c] for c in inventory.consumers(layer.fqn)]
        alone = [m.fqn for m in inventory.group_members(layer.fqn)] == [layer.fqn]
        if alone and readers and all(r.kind == "Linear" for r in readers):
            hidden.append(layer.fqn)
    return hidden


def derive_space(inventory: LayerInventory, task_name: str = "this model") -> SearchSpace:
    """The space of the module docstring for ``inventory``, as validated YAML text.

    The text depends only on the inventory and ``task_name`` (no date, no path), so a
    resumed run derives the same space and its fingerprint matches the study's.
    Raises :class:`SpaceError` when the model has no compressible layer.
    """
    if not len(inventory):
        raise SpaceError(
            f"cannot derive a search space for {task_name}: it has no Conv2d or Linear layer "
            "the example input reaches (autocompress inspect lists them)"
        )
    macs = sum(layer.macs for layer in inventory) or 1
    params = sum(layer.params for layer in inventory) or 1
    outputs = [fqn for fqn in inventory.fqns if fqn in inventory.outputs]
    tiny = tiny_layers(inventory)
    # A tiny group leader still decides the pruning of its group's other, larger members.
    leads_more = {fqn for fqn in tiny if inventory[fqn].prunable and inventory[fqn].group == fqn
                  and any(m.fqn not in tiny for m in inventory.group_members(fqn))}
    taken = set(outputs) | set(tiny)
    stems = [layer.fqn for layer in inventory if layer.kind == "Conv2d"
             and layer.in_channels <= STEM_CHANNELS and layer.fqn not in taken]
    kinds = {layer.kind for layer in inventory if layer.fqn not in taken | set(stems)}

    def share(layer: LayerInfo) -> str:
        return f"{100 * layer.macs / macs:.2g}% of MACs, {100 * layer.params / params:.2g}% of weights"

    task_name = " ".join(task_name.split())  # one line, whatever the task's name holds
    lines = [
        f"# Search space derived by autocompress from the {len(inventory)} compressible layers "
        f"of {task_name}",
        f"# (inventory fingerprint {inventory.sha256[:12]}). Edit it and pass it back with "
        "--space FILE;",
        "# rules are tried in order and the first that matches a layer wins "
        "(docs/search-space.md).",
    ]
    if inventory.pruning_error:
        lines.append("# Torch-Pruning cannot trace this model, so no prune parameter is made.")
    lines += [
        "schema_version: 1",
        f"description: {json.dumps(f'derived from the layers of {task_name}')}",
        "defaults: {}  # every layer is matched by a rule below",
        "rules:",
    ]
    if outputs:
        lines += [
            "  # The output layer(s): their few weights decide every prediction, so no rank or",
            "  # sparsity, and 8 or 32 bits. They are never pruned (their channels are outputs).",
            "  - match: {output: true}",
            f"    bits: {SAFE_BITS}",
        ]
    if tiny:
        lines += [
            f"  # The smallest layers: together under {TINY_SHARE:.0%} of the MACs and of the "
            "weights, so compressing",
            "  # them cannot move a budget; nothing is searched on them (a group leader keeps "
            "prune,",
            "  # which its larger group members follow). Delete a line to search that layer "
            "like its kind.",
        ]
        for fqn in tiny:
            knob = f", prune: {CONV_PRUNE}" if fqn in leads_more else ""
            lines.append(f"  - {{match: {{fqn: {_quote(fqn)}}}{knob}}}  # {share(inventory[fqn])}")
    if stems:
        lines += [
            f"  # Convs that read the image (at most {STEM_CHANNELS} input channels): few "
            "weights that every later",
            "  # layer depends on, so 8 or 32 bits and no sparsity; prune still thins their "
            "outputs.",
        ]
        for fqn in stems:
            lines += [f"  - match: {{fqn: {_quote(fqn)}}}", f"    prune: {CONV_PRUNE}",
                      f"    bits: {SAFE_BITS}"]
    if "DepthwiseConv2d" in kinds:
        lines += [
            "  # Depthwise convs: one small kernel per channel, sensitive to quantisation and",
            "  # sparsity; no rank (one channel per group). Their group's first layer prunes "
            "them.",
            "  - match: {kind: DepthwiseConv2d}",
            f"    prune: {CONV_PRUNE}",
            f"    bits: {SAFE_BITS}",
        ]
    if "Conv2d" in kinds:
        lines += [
            "  # Convolutions: channel pruning (once per coupled group), weight bits, sparsity.",
            "  - match: {kind: Conv2d}",
            f"    prune: {CONV_PRUNE}",
            f"    bits: {CONV_BITS}",
            f"    sparsity: {CONV_SPARSITY}",
        ]
    if any(inventory[fqn].heads for fqn in inventory.fqns if fqn not in taken):
        lines += [
            "  # Attention: the query, key and value projections. prune removes whole heads "
            "(the same",
            "  # heads from all three, and their inputs to the output projection); the "
            "fraction is of",
            "  # each attention's heads. The other knobs as for other Linear layers.",
            "  - match: {attention: true}",
            f"    prune: {HEADS_PRUNE}",
            *LINEAR_KNOBS,
        ]
    hidden = [fqn for fqn in mlp_hidden_layers(inventory) if fqn not in taken]
    if hidden and not inventory.pruning_error:
        lines += [
            "  # MLP hidden layers: only the next Linear layer reads their units, so prune "
            "removes hidden",
            "  # units. The other knobs as for other Linear layers.",
        ]
        for fqn in hidden:
            lines += [f"  - match: {{fqn: {_quote(fqn)}}}", f"    prune: {CONV_PRUNE}",
                      *LINEAR_KNOBS]
    if "Linear" in kinds:
        lines += [
            "  # Other Linear layers: low rank, weight bits, sparsity, 8-bit inputs (with 8-bit "
            "weights: an",
            "  # integer matmul in ONNX Runtime); no prune, which would cut the",
            "  # features that every later block reads (add it here if the model tolerates it).",
            "  - match: {kind: Linear}",
            *LINEAR_KNOBS,
        ]
    space = SearchSpace.from_yaml("\n".join(lines) + "\n", source="derived")
    return dataclasses.replace(space, derived=True)


def save_derived_space(space: SearchSpace, out: str | Path) -> SearchSpace:
    """Write ``space`` to ``<out>/search_space.yaml``; return it with that path as its source.

    An existing file with the same text is kept (a resumed run or a second worker derives
    the same space); one with other text raises :class:`SpaceError` rather than overwrite
    what may be the user's edit.

    >>> import tempfile, torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> out = tempfile.mkdtemp()
    >>> saved = save_derived_space(derive_space(inv), out)
    >>> SearchSpace.load(saved.source).sha256 == saved.sha256
    True
    """
    path = Path(out) / DERIVED_FILE
    if path.is_file():
        if path.read_text() != space.text:
            raise SpaceError(
                f"{path} differs from the search space derived for this model (edited, or "
                f"derived from another model); pass it with --space {path} or delete it"
            )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole and renamed, so a worker starting alongside never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".search_space.", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(space.text)
        os.replace(tmp, path)
    return dataclasses.replace(space, source=str(path))


def _quote(fqn: str) -> str:
    """``fqn`` as a YAML flow scalar: quoted when it is not a plain dotted name."""
    plain = fqn and all(c.isalnum() or c in "._" for c in fqn) and not fqn[0].isdigit()
    if plain and fqn.lower() not in ("null", "true", "false", "yes", "no", "on", "off"):
        return fqn
    return '"' + fqn.replace("\\", "\\\\").replace('"', '\\"') + '"'
