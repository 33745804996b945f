"""Model -> LayerInventory: every Conv2d and Linear by FQN, with MACs and pruning groups.

MACs come from fvcore (one multiply-add counts as one MAC); the coupled
pruning groups come from Torch-Pruning's dependency graph: layers whose
output channels must be removed together because of residual adds, concats
or depthwise convs share one ``group`` (named after its first member).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from autocompress import inputs
from autocompress.inputs import ModelInput

LOG = logging.getLogger(__name__)

KINDS = ("Conv2d", "DepthwiseConv2d", "Linear")


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer.

    ``in_groups`` maps a pruning group to how many of this layer's input
    features it feeds, so the effect of pruning on consumers is known without
    building the pruned model.
    """

    fqn: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    has_bias: bool
    group: str | None
    prunable: bool
    in_groups: dict[str, int] = field(default_factory=dict)
    # The head count of the attention whose query, key or value this layer projects (its
    # output channels are whole heads), or None; pruning its group removes whole heads.
    heads: int | None = None

    @property
    def head_dim(self) -> int | None:
        """Output channels per attention head, or None for a layer outside attention."""
        return self.out_channels // self.heads if self.heads else None

    @property
    def weight_matrix_shape(self) -> tuple[int, int]:
        """(rows, cols) of the weight as SVD sees it: (out, in/groups * kh * kw)."""
        kh, kw = self.kernel_size
        return self.out_channels, self.in_channels // self.groups * kh * kw

    @property
    def max_rank(self) -> int:
        """The largest meaningful low-rank factorisation rank: min(out, in*kh*kw)."""
        return min(self.weight_matrix_shape)

    @property
    def output_positions(self) -> int:
        """Number of output positions per sample (H*W for convs, tokens for Linear)."""
        n = 1
        for d in self.output_shape[1:-1] if self.kind == "Linear" else self.output_shape[2:]:
            n *= int(d)
        return n

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kernel_size"] = list(self.kernel_size)
        d["stride"] = list(self.stride)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclass
class LayerInventory:
    """All compressible layers of a model, in module order.

    >>> from autocompress.models import DigitsCNN
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> [l.fqn for l in inv]
    ['features.0', 'features.2', 'classifier.1', 'classifier.3']
    >>> inv["features.0"].macs
    18432
    """

    layers: list[LayerInfo]
    total_macs: int
    total_params: int
    unsupported_ops: dict[str, int] = field(default_factory=dict)
    pruning_error: str | None = None
    # Layers whose output is the model's output (the logits): never pruned, and search
    # spaces can match them with ``{output: true}`` to keep ranks and bits high there.
    outputs: tuple[str, ...] = ()

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, fqn: object) -> bool:
        return any(layer.fqn == fqn for layer in self.layers)

    def __getitem__(self, fqn: str) -> LayerInfo:
        for layer in self.layers:
            if layer.fqn == fqn:
                return layer
        raise KeyError(fqn)

    @property
    def fqns(self) -> list[str]:
        return [layer.fqn for layer in self.layers]

    def consumers(self, fqn: str) -> list[str]:
        """Layers that take ``fqn``'s output channels as input (through its pruning group).

        >>> from autocompress.models import DigitsCNN
        >>> build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8)).consumers("features.2")
        ['classifier.1']
        """
        group = self[fqn].group
        return [c.fqn for c in self.layers if group is not None and group in c.in_groups]

    def group_members(self, group: str) -> list[LayerInfo]:
        """Layers whose output channels are pruned together in ``group``."""
        return [layer for layer in self.layers if layer.group == group]

    @property
    def groups(self) -> list[str]:
        """Pruning group names in module order."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            if layer.group is not None:
                seen.setdefault(layer.group, None)
        return list(seen)

    @functools.cached_property
    def sha256(self) -> str:
        """Fingerprint of the architecture (names, kinds, shapes): policies are checked against it.

        Computed once: an inventory is not changed after :func:`build_inventory`, and cost
        predictions ask for it several times each (budget filling makes ~26 per proposal).
        """
        # Heads only where set, so the fingerprints of models without attention stay as they were.
        arch = [
            [x.fqn, x.kind, x.in_channels, x.out_channels, list(x.kernel_size), x.groups]
            + ([x.heads] if x.heads else [])
            for x in self.layers
        ]
        return hashlib.sha256(json.dumps(arch).encode()).hexdigest()

    def to_records(self) -> list[dict[str, Any]]:
        return [layer.to_dict() for layer in self.layers]


def layer_kind(module: nn.Module) -> str | None:
    """'Conv2d', 'DepthwiseConv2d', 'Linear' or None for anything else."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "DepthwiseConv2d"
        return "Conv2d"
    if isinstance(module, nn.Linear):
        return "Linear"
    return None


# Where attention modules keep their head count, and the names of their separate query, key
# and value projections (Hugging Face BERT, RoBERTa, ViT, DistilBERT; LLaMA-style q_proj).
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
HEAD_SIZE_ATTRS = ("all_head_size",)
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))


def attention_heads(model: nn.Module) -> dict[str, int]:
    """FQN of each separate query, key and value projection -> its attention's head count.

    An attention module counts when it holds its head count under one of
    ``HEAD_COUNT_ATTRS`` and three Linear children named as in ``QKV_NAMES`` with one
    output width that the heads divide (a task splits ``nn.MultiheadAttention`` into such,
    :mod:`autocompress.models.attention`). Fused projections (Swin's ``qkv``) and
    grouped-query attention are not listed: their heads
    are not whole slices of three equal Linear outputs.

    >>> import transformers
    >>> cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                               num_attention_heads=4, intermediate_size=32)
    >>> heads = attention_heads(transformers.BertModel(cfg))
    >>> sorted(heads.items())[:2]
    [('encoder.layer.0.attention.self.key', 4), ('encoder.layer.0.attention.self.query', 4)]
    """
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        heads = next((v for a in HEAD_COUNT_ATTRS
                      if isinstance(v := getattr(module, a, None), int) and v > 1), None)
        if heads is None:
            continue
        for names in QKV_NAMES:
            projs = [getattr(module, n, None) for n in names]
            widths = {p.out_features for p in projs if isinstance(p, nn.Linear)}
            if len(widths) == 1 and all(isinstance(p, nn.Linear) for p in projs) \
                    and widths.pop() % heads == 0:
                found.update({f"{name}.{n}" if name else n: heads for n in names})
                break
    return found


def set_head_count(attention: nn.Module, heads: int, head_dim: int) -> None:
    """Record on an attention module that it now has ``heads`` heads of ``head_dim`` channels.

    Hugging Face attentions reshape by ``-1`` heads, so their forward needs no update;
    the attributes are set anyway so that the model describes itself truly (its config
    is left alone: layers now differ in their head counts).
    """
    for attr in HEAD_COUNT_ATTRS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, heads)
    for attr in HEAD_SIZE_ATTRS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, heads * head_dim)


def compressible_modules(model: nn.Module) -> dict[str, nn.Module]:
    """FQN -> module for every Conv2d and Linear, in module order."""
    return {name: m for name, m in model.named_modules() if layer_kind(m) is not None}


def _shapes(model: nn.Module, example_input: ModelInput, modules: dict[str, nn.Module]):
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    for name, m in modules.items():
        def hook(mod, inp, out, name=name):
            shapes.setdefault(name, (tuple(inp[0].shape), tuple(out.shape)))
        hooks.append(m.register_forward_hook(hook))
    try:
        inputs.forward_error(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def count_macs(model: nn.Module, example_input: ModelInput) -> tuple[dict[str, int], dict[str, int]]:
    """fvcore MACs per module FQN ('' is the total) and the ops fvcore could not count.

    >>> macs, _ = count_macs(nn.Linear(4, 2), {"input": torch.zeros(3, 4)})
    >>> macs[""]
    24
    """
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        with inputs.positional_forward(model, example_input) as args:
            analysis = FlopCountAnalysis(model, args)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            by_module = {k: int(v) for k, v in analysis.by_module().items()}
            unsupported = dict(analysis.unsupported_ops())
    finally:
        model.train(was_training)
    return by_module, unsupported


def output_layers(model: nn.Module, example_input: ModelInput) -> list[nn.Module]:
    """Layers whose output is a model output: their channels are classes, never pruned."""
    modules = compressible_modules(model)
    outs: dict[int, tuple[nn.Module, Any]] = {}
    hooks = []
    for m in modules.values():
        def hook(mod, inp, out):
            # The output is kept alive: a freed tensor's id is reused by later tensors.
            outs[id(out)] = (mod, out)
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            result = inputs.call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
    found = [outs[id(r)][0] for r in inputs.output_tensors(result) if id(r) in outs]
    if not found:
        # The output passed through an op after the last layer; fall back to the last Linear.
        linears: list[nn.Module] = [m for m in modules.values() if isinstance(m, nn.Linear)]
        found = linears[-1:]
    return found


def build_inventory(model: nn.Module, example_input: ModelInput) -> LayerInventory:
    """List every Conv2d/Linear of ``model`` with shapes, fvcore MACs, params and pruning group.

    ``example_input``: a tensor, a tuple of tensors (positional arguments) or a dict of named
    tensors (keyword arguments), of any dtype. A forward that fails on it raises a one-line
    :class:`~autocompress.errors.TaskError`.
    """
    example_input = inputs.normalize(example_input)
    model = model.eval()
    modules = compressible_modules(model)
    shapes = _shapes(model, example_input, modules)
    macs, unsupported = count_macs(model, example_input)
    name_of = {id(m): n for n, m in modules.items()}
    kept = output_layers(model, example_input)
    outputs = tuple(name_of[id(m)] for m in kept)
    pruning_error = None
    heads = attention_heads(model)
    try:
        groups, in_groups = pruning_groups(model, example_input, shapes=shapes, outputs=kept)
        broken = unprunable_linear_groups(model, example_input, groups, heads)
        if broken:
            LOG.info("pruning breaks %s's forward at %s; they are not prunable",
                     type(model).__name__, ", ".join(sorted(broken)))
            groups = {fqn: g for fqn, g in groups.items() if g not in broken}
            in_groups = {fqn: {g: n for g, n in gs.items() if g not in broken}
                         for fqn, gs in in_groups.items()}
    except Exception as exc:  # Torch-Pruning cannot trace some graphs (e.g. channel shuffles)
        # The other knobs still work, so the model stays usable with pruning switched off.
        pruning_error = f"{type(exc).__name__}: {exc}".strip()
        LOG.warning("Torch-Pruning cannot trace %s (%s); no layer is prunable",
                    type(model).__name__, pruning_error)
        groups, in_groups = {}, {}
    layers = []
    for name, m in modules.items():
        if name not in shapes:
            LOG.warning("layer %s is never called by the example input; it is left out", name)
            continue
        kind = layer_kind(m)
        assert kind is not None
        in_ch: int
        out_ch: int
        if isinstance(m, nn.Conv2d):
            in_ch, out_ch = m.in_channels, m.out_channels
            ks, st, g = tuple(m.kernel_size), tuple(m.stride), m.groups
        else:
            in_ch, out_ch = int(m.in_features), int(m.out_features)  # type: ignore[arg-type]
            ks, st, g = (1, 1), (1, 1), 1
        layers.append(
            LayerInfo(
                fqn=name, kind=kind, in_channels=in_ch, out_channels=out_ch,
                kernel_size=ks, stride=st, groups=g,  # type: ignore[arg-type]
                input_shape=shapes[name][0], output_shape=shapes[name][1],
                macs=macs.get(name, 0),
                params=sum(p.numel() for p in m.parameters(recurse=False)),
                has_bias=getattr(m, "bias", None) is not None,
                group=groups.get(name), prunable=name in groups,
                in_groups=in_groups.get(name, {}),
                heads=heads.get(name) if groups.get(name) in heads else None,
            )
        )
    return LayerInventory(
        layers=layers,
        total_macs=macs.get("", sum(layer.macs for layer in layers)),
        total_params=sum(p.numel() for p in model.parameters()),
        unsupported_ops=unsupported,
        pruning_error=pruning_error,
        outputs=outputs,
    )


def dependency_graph(model: nn.Module, example_input: ModelInput):
    """Torch-Pruning's dependency graph of ``model`` (traced on ``example_input`` of any form)."""
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input,
        forward_fn=lambda m, x: inputs.call(m, x),
    )


def _grouped_conv(module: nn.Module) -> bool:
    """A conv with channel groups that is not a plain depthwise conv (in == out == groups)."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and not (module.groups == module.in_channels == module.out_channels)
    )


# A group lists up to this many indices whatever the model's tensors (~100 MB): a small
# model's real groups can list its few channels more times over than its largest tensor holds.
MIN_INDEX_LIMIT = 1 << 20


class _RunawayIndices(Exception):
    """A group's channel indices outgrew every tensor of the model."""


@contextlib.contextmanager
def _bounded_index_lists(limit: int) -> Iterator[None]:
    """Make Torch-Pruning raise :class:`_RunawayIndices` when a flatten index mapping would
    list more than ``limit`` indices, or a group would hold more than ``limit`` in all.

    The library infers reshapes from shapes alone. On channels-last windows (Swin's window
    partitions, MaxViT's grid attention) its index mappings feed each other, so a group
    visits the same reshapes again and again with ever longer index lists until memory runs
    out; the library names Swin among its failures. A real group lists each coupled
    tensor's channels once: across the zoo's models it holds at most a sixth of the
    model's largest tensor (ViT-B/16), while Swin-T's residual stream listed 46 million
    indices, 20 times its largest. Such a group is dropped instead.
    """
    from torch_pruning.dependency import index_mapping
    from torch_pruning.dependency.group import Group

    cls = index_mapping._FlattenIndexMapping
    original, original_add = cls.__call__, Group.add_dep

    def bounded(self: Any, idxs: Any) -> Any:
        if not self.reverse and len(idxs) * self._stride > limit:
            raise _RunawayIndices
        return original(self, idxs)

    def bounded_add(self: Any, dep: Any, idxs: Any) -> None:
        listed = getattr(self, "_autocompress_listed", 0) + len(idxs)
        if listed > limit:
            raise _RunawayIndices
        self._autocompress_listed = listed
        original_add(self, dep, idxs)

    cls.__call__ = bounded  # type: ignore[method-assign]
    Group.add_dep = bounded_add  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__call__ = original  # type: ignore[method-assign]
        Group.add_dep = original_add  # type: ignore[method-assign]


@contextlib.contextmanager
def _index_mappings_frozen(dg: Any) -> Iterator[None]:
    """Torch-Pruning's index mappings of ``dg`` computed once for the block.

    ``get_pruning_group`` recomputes every reshape's mapping on each call, a third of
    Swin-T's inventory; on a graph that nothing prunes meanwhile, once is enough.
    """
    from torch_pruning.dependency import index_mapping

    update = index_mapping.update_index_mapping
    update(dg)
    index_mapping.update_index_mapping = lambda graph: None
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update


def _bounded_groups(
    dg: Any, ignored: list[nn.Module], limit: int, name_of: dict[int, str]
) -> Iterator[Any]:
    """Torch-Pruning's groups rooted at each Conv2d and Linear, as ``get_all_groups`` yields
    them, except that a root whose group runs away is
    skipped (:func:`_bounded_index_lists`): its layers stay unpruned and every other group
    is kept."""
    visited: set[int] = set()
    runaway: list[str] = []
    ignored = list(ignored) + list(getattr(dg, "IGNORED_LAYERS_IN_TRACING", []))
    with _bounded_index_lists(limit), _index_mappings_frozen(dg):
        for m in list(dg.module2node):
            if m in ignored or id(m) in visited or not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            pruner = dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:
                group = dg.get_pruning_group(
                    m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except _RunawayIndices:
                runaway.append(name_of.get(id(m), type(m).__name__))
                continue
            outs = [dep.target.module for dep, _ in group
                    if dg.is_out_channel_pruning_fn(dep.handler)]
            visited.update(id(o) for o in outs)
            if not any(o in ignored for o in outs):
                yield group
    if runaway:
        LOG.info("Torch-Pruning cannot follow the reshapes after %d layers (%s, ...); "
                 "they are not prunable", len(runaway), runaway[0])


def pruning_groups(
    model: nn.Module, example_input: ModelInput, *,
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    outputs: list[nn.Module] | None = None,
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Torch-Pruning coupled groups.

    Returns ``(group_of, in_groups)``: ``group_of[fqn]`` names the group whose
    pruning removes ``fqn``'s output channels (absent when the layer must keep
    them, like the classifier); ``in_groups[fqn][group]`` counts the input
    features of ``fqn`` that pruning ``group`` can remove. ``shapes`` (each layer's input
    and output shape) and ``outputs`` (:func:`output_layers`) save a forward each when the
    caller has them.

    >>> from autocompress.models import DigitsCNN
    >>> group_of, _ = pruning_groups(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> sorted(set(group_of.values()))
    ['classifier.1', 'features.0', 'features.2']
    """
    modules = compressible_modules(model)
    name_of = {id(m): n for n, m in modules.items()}
    ignored = output_layers(model, example_input) if outputs is None else outputs
    if shapes is None:
        shapes = _shapes(model, example_input, modules)
    dg = dependency_graph(model, example_input)
    group_of: dict[str, str] = {}
    in_groups: dict[str, dict[str, int]] = {}
    order = {n: i for i, n in enumerate(modules)}
    largest = max([math.prod(shape) for pair in shapes.values() for shape in pair]
                  + [p.numel() for p in model.parameters()] + [MIN_INDEX_LIMIT])
    for group in _bounded_groups(dg, ignored, largest, name_of):
        if any(_grouped_conv(dep.target.module) for dep, _ in group):
            # Group.prune cannot keep a grouped conv's channel groups equal: not prunable
            continue
        outs: list[str] = []
        ins: dict[str, int] = {}
        for dep, idxs in group:
            name = name_of.get(id(dep.target.module))
            if name is None:
                continue
            handler = getattr(dep.handler, "__name__", str(dep.handler))
            if "out_channels" in handler:
                outs.append(name)
            elif "in_channels" in handler:
                ins[name] = ins.get(name, 0) + len(idxs)
        outs = sorted(set(outs), key=order.__getitem__)
        if not outs:
            continue
        key = outs[0]
        for name in outs:
            group_of.setdefault(name, key)
        for name, n in ins.items():
            if name in outs:  # depthwise convs list both sides; they follow the group
                continue
            in_groups.setdefault(name, {})[key] = n
    return group_of, in_groups


def unprunable_linear_groups(
    model: nn.Module, example_input: ModelInput, group_of: dict[str, str],
    heads: dict[str, int] | None = None,
) -> set[str]:
    """Pruning groups with a Linear member whose pruning breaks the model's forward.

    Torch-Pruning couples channels through adds and matmuls but not through reshapes into
    attention heads (a Hugging Face attention's ``view(batch, seq, -1, head_dim)``) or a
    hidden width fixed in the forward (torchvision ViT's patch embedding, a conv whose group
    holds the residual stream's Linear layers), so such a group looks prunable and every
    pruned model fails. On a copy, every such group loses its first channel (a group led by
    an attention projection in ``heads`` loses its first whole head) and the model runs
    once; only when that fails are the groups tried one at a time (in module order, on a
    fresh copy after each failure), and those after which the forward fails are returned.
    Groups of convs alone are not checked: Torch-Pruning follows convolutional graphs fully,
    and their check would cost a trace.

    >>> from autocompress.models import DigitsCNN
    >>> x = torch.zeros(1, 1, 8, 8)
    >>> unprunable_linear_groups(DigitsCNN(), x, pruning_groups(DigitsCNN(), x)[0])
    set()
    """
    order = {n: i for i, n in enumerate(compressible_modules(model))}
    pending = sorted({g for fqn, g in group_of.items()
                      if isinstance(model.get_submodule(fqn), nn.Linear)}, key=order.__getitem__)
    heads = heads or {}
    if not pending or _prunes_cleanly(model, example_input, pending, heads) is None:
        return set()
    broken: set[str] = set()
    while pending:
        failed = _prunes_cleanly(model, example_input, pending, heads, stop_early=True)
        if failed is None:
            break
        broken.add(pending[failed])
        pending = pending[failed + 1:]
    return broken


def _prunes_cleanly(model: nn.Module, example_input: ModelInput, leaders: list[str],
                    heads: dict[str, int], stop_early: bool = False) -> int | None:
    """Prune one channel of each group in ``leaders`` on a copy; None if the forward still
    runs, else the index of the group after which it failed (``stop_early``: run after each
    group) or 0 (one run after all of them)."""
    import gc

    failed = _prune_and_run(model, example_input, leaders, heads, stop_early)
    # The copy and its dependency graph reference each other: without a collection now,
    # each try would hold a whole model copy until the next cyclic collection.
    gc.collect()
    return failed


def _prune_and_run(model: nn.Module, example_input: ModelInput, leaders: list[str],
                   heads: dict[str, int], stop_early: bool) -> int | None:
    """:func:`_prunes_cleanly` without the collection of its copy."""
    import copy

    import torch_pruning as tp

    trial = copy.deepcopy(model).eval()
    graph = dependency_graph(trial, example_input)
    for i, name in enumerate(leaders):
        leader = trial.get_submodule(name)
        prune = (tp.prune_linear_out_channels if isinstance(leader, nn.Linear)
                 else tp.prune_conv_out_channels)
        n_heads = heads.get(name)
        head_dim = int(getattr(leader, "out_features", 1)) // n_heads if n_heads else 1
        group = graph.get_pruning_group(leader, prune, list(range(head_dim)))
        if graph.check_pruning_group(group):  # a one-channel member has nothing to lose
            group.prune()
            if n_heads:
                set_head_count(trial.get_submodule(name.rpartition(".")[0]), n_heads - 1, head_dim)
        if stop_early and not _runs(trial, example_input):
            return i
    if stop_early:
        return None
    return None if _runs(trial, example_input) else 0


def _runs(model: nn.Module, example_input: ModelInput) -> bool:
    try:
        with torch.no_grad():
            inputs.call(model, example_input)
    except Exception:  # any failure of the pruned forward counts: the group is not prunable
        return False
    return True
