"""Analytic costs of a policy (MACs, BOPs, params, size) without building the model.

Every shape comes from the shared rules in :mod:`autocompress.methods.shapes`,
so the numbers describe exactly the model ``apply_policy`` builds:

- a layer in pruning group ``g`` keeps ``group_kept_channels(leader_g, ratio_g)`` output
  channels (whole heads where ``g`` is an attention's query, key and value);
- its input shrinks with the groups that feed it: each group ``g`` feeding
  ``n_g`` of its inputs (``LayerInfo.in_groups``) removes
  ``n_g - n_g * kept_g / out_g`` of them (a flatten feeds ``n_g / out_g`` inputs per channel);
- a depthwise conv follows its input: ``in = out = groups`` = kept channels;
- ``rank`` factorises ``Conv(in, out, k)`` into ``Conv(in, r, k) + Conv(r, out, 1)``
  (``Linear`` alike) with ``r = lowrank_rank(out, in * kh * kw, rank)`` on the
  *pruned* weight; at or above break-even the layer stays dense (as apply_policy does).

Units: one multiply-add is one MAC, counted (as fvcore does) for the batch of
the inventory's example input. ``BOPs = MACs x weight bits x activation bits``
(32 for float). ``size_bytes`` follows
:func:`autocompress.methods.apply.model_size_bytes` exactly: the weights of a
policy layer at ``bits`` per element (16 for half, 32 float), stored sparse
(``k * bits / 8 + 4 * k`` bytes with an int32 index per kept weight,
``k = n - round(sparsity * n)``) where that is smaller than dense; every other
parameter (biases, BatchNorm, layers without a policy) at 32 bits.

The part of the model that is not a Conv2d/Linear (BatchNorm, pooling: what
fvcore counts outside the layers) is scaled with the pruned activations
(MACs) and output channels (params): exact when each such op follows one
layer, as BatchNorm does, and a few-percent error on a few-percent share otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from autocompress.inventory import LayerInfo, LayerInventory
from autocompress.methods.shapes import group_kept_channels, group_prune_ratios, lowrank_rank
from autocompress.policy import CompressionPolicy, LayerPolicy

INDEX_BYTES = 4  # sparse storage: one int32 index per kept weight (as methods.apply)
FLOAT_BITS = 32

# Budget metric name -> Costs attribute.
METRICS: dict[str, str] = {
    "latency": "latency_ms",
    "macs": "macs",
    "bops": "bops",
    "params": "params",
    "size": "size_bytes",
}


@dataclass(frozen=True)
class LayerShape:
    """One compressible layer as ``apply_policy`` builds it (the key of its latency too).

    ``rank`` is the rank really used (None: dense); ``positions`` is the
    number of output positions per sample (H*W for convs). ``q_in``/``q_out``: ONNX
    Runtime runs the quantiser of this layer's input / output inside a neighbour's or
    its own integer kernel (set by the latency table,
    :func:`autocompress.cost.lut.with_int8_fusion`; the policy alone does not say).
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
    has_bias: bool
    rank: int | None = None
    weight_bits: int = FLOAT_BITS
    act_bits: int = FLOAT_BITS
    sparsity: float = 0.0
    q_in: bool = False
    q_out: bool = False

    @property
    def weight_tensors(self) -> list[int]:
        """Element counts of the weight tensors (one dense, or the two low-rank factors)."""
        kh, kw = self.kernel_size
        cols = self.in_channels // self.groups * kh * kw
        if self.rank is None:
            return [self.out_channels * cols]
        return [self.rank * self.in_channels * kh * kw, self.out_channels * self.rank]

    @property
    def mac_units(self) -> int:
        """MACs per output position and sample: the weight elements each position touches."""
        return sum(self.weight_tensors)

    @property
    def params(self) -> int:
        return sum(self.weight_tensors) + (self.out_channels if self.has_bias else 0)


@dataclass(frozen=True)
class LayerCost:
    """Costs of one compressible layer under a policy."""

    fqn: str
    in_channels: int
    out_channels: int
    rank: int | None
    macs: int
    bops: int
    params: int
    size_bytes: int


@dataclass(frozen=True)
class Costs:
    """Costs of a whole model under a policy.

    ``latency_ms`` is None until a latency model fills it
    (:meth:`with_latency`); :meth:`value` reads any budget metric by name.

    >>> c = Costs(macs=10, bops=10240, params=3, size_bytes=12)
    >>> c.value("size"), c.with_latency(1.5).value("latency")
    (12, 1.5)
    """

    macs: int
    bops: int
    params: int
    size_bytes: int
    latency_ms: float | None = None
    layers: tuple[LayerCost, ...] = field(default=(), repr=False)

    def value(self, metric: str) -> float | None:
        """The cost a budget metric (latency|macs|bops|params|size) refers to."""
        return getattr(self, METRICS[metric])

    def with_latency(self, latency_ms: float | None) -> Costs:
        return replace(self, latency_ms=None if latency_ms is None else float(latency_ms))

    def to_dict(self, layers: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("macs", "bops", "params", "size_bytes", "latency_ms")}
        if layers:
            d["layers"] = [asdict(lc) for lc in self.layers]
        return d


def _positions(info: LayerInfo) -> int:
    """MACs per weight element in the inventory: output positions x batch, as fvcore counted."""
    kh, kw = info.kernel_size
    units = info.out_channels * (info.in_channels // info.groups) * kh * kw
    return info.macs // units if units else 0


def compressed_shapes(policy: CompressionPolicy, inventory: LayerInventory) -> list[LayerShape]:
    """Each compressible layer's shape after ``policy``, in inventory order.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> inv = build_inventory(DigitsCNN(), torch.zeros(1, 1, 8, 8))
    >>> p = CompressionPolicy(layers={"features.2": LayerPolicy(prune=0.5),
    ...                               "classifier.1": LayerPolicy(rank=16)})
    >>> [(s.in_channels, s.out_channels, s.rank) for s in compressed_shapes(p, inv)]
    [(1, 32, None), (32, 32, None), (512, 128, 16), (128, 10, None)]
    """
    ratios = group_prune_ratios(policy, inventory)
    kept = {g: group_kept_channels(inventory[g], r) for g, r in ratios.items() if g in inventory}
    shapes = []
    for info in inventory:
        lp = policy.layers.get(info.fqn) or LayerPolicy()
        out = kept.get(info.group, info.out_channels) if info.group else info.out_channels
        if info.kind == "DepthwiseConv2d":
            cin, groups = out, out
        else:
            cin, groups = info.in_channels, info.groups
            for g, n in info.in_groups.items():
                if g in kept:
                    full = inventory[g].out_channels
                    cin -= n - round(n * kept[g] / full)
        kh, kw = info.kernel_size
        rank = None
        if lp.rank is not None and groups == 1:
            rank = lowrank_rank(out, cin // groups * kh * kw, lp.rank)
        shapes.append(
            LayerShape(
                fqn=info.fqn, kind=info.kind, in_channels=cin, out_channels=out,
                kernel_size=info.kernel_size, stride=info.stride, groups=groups,
                input_shape=(info.input_shape[0], *_with_channels(info, cin, info.input_shape)),
                output_shape=(info.output_shape[0],
                              *_with_channels(info, out, info.output_shape)),
                has_bias=info.has_bias, rank=rank,
                weight_bits=lp.weight_bits, act_bits=lp.activation_bits,
                sparsity=float(lp.sparsity or 0.0),
            )
        )
    return shapes


def _with_channels(info: LayerInfo, channels: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its batch, with the channel dim (1 for convs, last for Linear) set."""
    rest = list(shape[1:])
    if info.kind == "Linear":
        rest[-1] = channels
    else:
        rest[0] = channels
    return tuple(rest)


def tensor_bytes(n: int, bits: int, sparsity: float = 0.0) -> int:
    """Storage of one weight tensor of ``n`` elements (dense, or sparse where smaller).

    >>> tensor_bytes(40, 4), tensor_bytes(40, 32, 0.0), tensor_bytes(1000, 8, 0.9)
    (20, 160, 500)
    """
    dense = math.ceil(n * bits / 8)
    if not sparsity:
        return dense
    k = n - round(sparsity * n)
    return min(dense, math.ceil(k * bits / 8) + k * INDEX_BYTES)


def analytic_costs(
    policy: CompressionPolicy | None,
    inventory: LayerInventory,
    include_layers: bool = True,
) -> Costs:
    """MACs, BOPs, params and size_bytes of the model ``policy`` makes, from the inventory alone.

    ``policy=None`` gives the uncompressed model's costs.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> base = analytic_costs(None, inv)
    >>> base.macs == inv.total_macs, base.params == inv.total_params
    (True, True)

    Pruning half of ``net.1`` (64 -> 512) leaves it 256 outputs, so ``net.3`` sees 256 inputs:

    >>> analytic_costs(CompressionPolicy(layers={"net.1": LayerPolicy(prune=0.5)}), inv).macs
    152576
    >>> 64 * 256 + 256 * 512 + 512 * 10
    152576
    """
    policy = policy or CompressionPolicy(layers={})
    shapes = compressed_shapes(policy, inventory)
    layer_costs = []
    base_act = new_act = 0  # output activations of all layers: scales non-layer MACs
    base_ch = new_ch = 0  # output channels of all layers: scales non-layer params
    for info, s in zip(inventory, shapes, strict=True):
        pos = _positions(info)
        macs = s.mac_units * pos
        params = s.params
        size = sum(tensor_bytes(n, s.weight_bits, s.sparsity) for n in s.weight_tensors)
        size += (s.out_channels if s.has_bias else 0) * FLOAT_BITS // 8
        layer_costs.append(
            LayerCost(
                fqn=s.fqn, in_channels=s.in_channels, out_channels=s.out_channels, rank=s.rank,
                macs=macs, bops=macs * s.weight_bits * s.act_bits, params=params, size_bytes=size,
            )
        )
        per_channel = info.output_positions * info.output_shape[0]
        base_act += info.out_channels * per_channel
        new_act += s.out_channels * per_channel
        base_ch += info.out_channels
        new_ch += s.out_channels
    other_macs = max(inventory.total_macs - sum(i.macs for i in inventory), 0)
    other_params = max(inventory.total_params - sum(i.params for i in inventory), 0)
    other_macs = round(other_macs * new_act / base_act) if base_act else other_macs
    other_params = round(other_params * new_ch / base_ch) if base_ch else other_params
    return Costs(
        macs=sum(c.macs for c in layer_costs) + other_macs,
        bops=sum(c.bops for c in layer_costs) + other_macs * FLOAT_BITS * FLOAT_BITS,
        params=sum(c.params for c in layer_costs) + other_params,
        size_bytes=sum(c.size_bytes for c in layer_costs) + other_params * FLOAT_BITS // 8,
        layers=tuple(layer_costs) if include_layers else (),
    )
