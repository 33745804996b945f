"""Timing on the target: lone layers and whole models, one timing at a time on each host.

Two timings that overlap on one machine slow each other down, and whichever reads the
slower spell decides a budget. Every timing autocompress takes (the latency table's layers
and calibration models, a candidate paired with the uncompressed model, the export's fresh
measurement) therefore holds a host-wide lock (:func:`timing_lock`, an ``flock`` on a file
in the temporary folder), so workers of one study on one host take turns. Another worker's
*fine-tune* is not held back by it: it keeps running on the same cores and slows both
sides of a paired timing alike, which a ratio of the two cancels to first order, but the
absolute milliseconds it reads are slower than on an idle machine.

>>> with timing_lock(), timing_lock():  # re-entrant within a process
...     pass
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import inputs
from autocompress.cost.analytic import LayerShape
from autocompress.cost.latency import (
    QUIET,
    KernelScope,
    batched,
    layer_kernels,
    node_kernel_ms,
    profiled_session,
)
from autocompress.cost.lut_store import conv_padding, int8_weights
from autocompress.cost.target import Target

LOCK_ENV = "AUTOCOMPRESS_TIMING_LOCK"
# Whole-model timings: runs split into blocks, the smallest block median kept (one block on a
# shared machine can come out several times too slow; the smallest block median cannot).
WHOLE_MODEL_RUNS = 100
MODEL_BLOCKS = 10
# About this many milliseconds of runs per model in a candidate's timing: a large model gets
# fewer runs (its per-run noise is smaller), so a timing stays seconds, not a minute.
TIMING_BUDGET_MS = 2500.0

_local = threading.local()
_guard = threading.Lock()


def lock_path() -> Path:
    """The lock file every process on this host shares (``$AUTOCOMPRESS_TIMING_LOCK`` overrides).

    >>> lock_path().name
    'autocompress-timing.lock'
    """
    override = os.environ.get(LOCK_ENV)
    return Path(override) if override else Path(tempfile.gettempdir()) / "autocompress-timing.lock"


@contextlib.contextmanager
def timing_lock() -> Iterator[None]:
    """Hold the host-wide timing lock (blocking); nested calls in one thread hold it once."""
    depth = getattr(_local, "depth", 0)
    if depth:
        _local.depth = depth + 1
        try:
            yield
        finally:
            _local.depth -= 1
        return
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _guard, open(path, "a+") as fh:  # threads of one process take turns too
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        _local.depth = 1
        try:
            yield
        finally:
            _local.depth = 0
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def whole_model_ms(model: nn.Module, example_input: Any, target: Target) -> float:
    """``model``'s latency on ``target`` (ms): the smallest of 10 block medians of 100 runs.

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> whole_model_ms(nn.Linear(8, 8), torch.zeros(1, 8), parse_target("torch-1t-b2")) > 0
    True
    """
    from autocompress.cost.latency import measure_latency

    with timing_lock():
        return float(measure_latency(model, example_input, target, runs=WHOLE_MODEL_RUNS,
                                     blocks=MODEL_BLOCKS).stable_ms)


def in_model_layer_ms(model: nn.Module, example_input: Any, target: Target, fqns: list[str],
                      runs: int = WHOLE_MODEL_RUNS) -> dict[str, float]:
    """Each layer's kernel time (ms) inside ``model`` on an ``ort`` target, from its profiler.

    Each layer's kernel (:func:`~autocompress.cost.latency.layer_kernels`), with what ONNX
    Runtime fused into it, timed as the table times a lone layer, so that the two compare
    like with like: ``runs`` runs in :data:`MODEL_BLOCKS` blocks, each behind the quiet
    gate, and the smallest block median kept. Layers it cannot place are left out.

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> sorted(in_model_layer_ms(net, torch.zeros(1, 8), parse_target("ort-1t-b4"), ["0", "2"]))
    ['0', '2']
    """
    x = batched(example_input, target.require_batch())
    training = model.training
    try:
        with tempfile.TemporaryDirectory() as tmp, timing_lock():
            sess, graph = profiled_session(model, x, target.threads, os.path.join(tmp, "model"))
            feed = inputs.ort_feed(sess, x)
            warmup = 3
            for _ in range(warmup):
                sess.run(None, feed)
            per_block = max(1, runs // MODEL_BLOCKS)
            for _ in range(MODEL_BLOCKS):
                QUIET.wait()
                for _ in range(per_block):
                    sess.run(None, feed)
            with open(sess.end_profiling()) as fh:
                ms = node_kernel_ms(json.load(fh), skip=warmup, blocks=MODEL_BLOCKS)
    finally:
        model.train(training)
    return {f: ms[node] for f, node in layer_kernels(graph, fqns).items() if node in ms}


def runs_for(reference_ms: float | None) -> int:
    """Timed runs per model of a whole-model timing: :data:`WHOLE_MODEL_RUNS`, fewer for a
    model so slow that they would take over :data:`TIMING_BUDGET_MS`, at least two a block.

    >>> runs_for(0.7), runs_for(125.0), runs_for(None)
    (100, 20, 100)
    """
    if not reference_ms or reference_ms <= 0:
        return WHOLE_MODEL_RUNS
    fit = int(TIMING_BUDGET_MS / reference_ms)
    return max(2 * MODEL_BLOCKS, min(WHOLE_MODEL_RUNS, fit))


def paired_model_ms(model: nn.Module, reference: nn.Module, example_input: Any,
                    target: Target, runs: int = WHOLE_MODEL_RUNS) -> tuple[float, float]:
    """``(model's ms, reference's ms)`` on ``target``, timed in alternating blocks.

    Timed seconds apart, each side's smallest block median shares the machine's speed
    of those minutes, so their ratio is what a relative budget compares. ``runs`` per
    model (:func:`runs_for`).

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> big, small = nn.Linear(256, 256), nn.Linear(256, 8)
    >>> mine, ref = paired_model_ms(small, big, torch.zeros(1, 256), parse_target("torch-1t-b8"))
    >>> mine > 0 and ref > 0
    True
    """
    from autocompress.cost.latency import measure_models_interleaved

    with timing_lock():
        mine, ref = measure_models_interleaved([model, reference], example_input, target,
                                               runs=runs, blocks=MODEL_BLOCKS)
    return float(mine.stable_ms), float(ref.stable_ms)


# ---------------------------------------------------------------- lone layers
@dataclass(frozen=True)
class LayerTiming:
    """Settings of single-layer measurements: ``blocks`` x ``runs`` timed runs, min of medians.

    The minimum over many short blocks of each block's median finds the quiet
    moments of a shared machine (load only ever adds time) while one odd fast
    run cannot set it; whole models are measured the same way
    (:data:`MODEL_BLOCKS`), so predictions and measurements compare like with like.
    """

    blocks: int = 10
    runs: int = 3
    warmup: int = 3
    min_run_ms: float = 2.0


def layer_module(shape: LayerShape) -> nn.Module:
    """A module with exactly the shape and structure ``apply_policy`` gives this layer.

    The dense layer or ``Sequential(first, second)`` low-rank factors; for
    ``act_bits`` 8 behind an ``ActFakeQuant`` (QuantizeLinear/DequantizeLinear in
    ONNX), with the first weight exported as int8 QDQ when the weights are
    quantised too (as :mod:`autocompress.methods.quantize` does); with ``q_out``, its
    output quantised too, as the next layer's 8-bit input does inside the model (ONNX
    Runtime then runs one integer kernel, see :func:`with_int8_fusion`).
    """
    from autocompress.methods.quantize import ActFakeQuant, attach_weight_qdq, weight_scale

    cin, cout, r = shape.in_channels, shape.out_channels, shape.rank
    core: nn.Module
    first: nn.Conv2d | nn.Linear
    if shape.kind == "Linear":
        if r is None:
            core = first = nn.Linear(cin, cout, bias=shape.has_bias)
        else:
            first = nn.Linear(cin, r, bias=False)
            core = nn.Sequential(first, nn.Linear(r, cout, bias=shape.has_bias))
    else:
        pad = conv_padding(shape)
        if r is None:
            core = first = nn.Conv2d(
                cin, cout, shape.kernel_size, shape.stride, pad,  # type: ignore[arg-type]
                groups=shape.groups, bias=shape.has_bias,
            )
        else:
            first = nn.Conv2d(cin, r, shape.kernel_size, shape.stride, pad,  # type: ignore[arg-type]
                              bias=False)
            core = nn.Sequential(first, nn.Conv2d(r, cout, 1, bias=shape.has_bias))
    if shape.act_bits == 8:
        if int8_weights(shape):
            with torch.no_grad():
                attach_weight_qdq(first, weight_scale(first.weight, shape.weight_bits))
        core = nn.Sequential(ActFakeQuant(scale=0.02, zero_point=128), core)
        if shape.q_out:
            core.append(ActFakeQuant(scale=0.02, zero_point=128))
    return core.eval()


def kernel_ops_elsewhere(shape: LayerShape) -> frozenset[str]:
    """Op types a lone layer runs that, inside the model, belong to a neighbour's kernel.

    With ``q_out`` the output's DequantizeLinear is the next layer's (its input); with
    ``q_in`` the input's QuantizeLinear is done by the previous layer's integer kernel.
    """
    ops = {"DequantizeLinear"} if shape.q_out else set()
    if shape.q_in:
        ops.add("QuantizeLinear")
    return frozenset(ops)


def behind_producer(shape: LayerShape) -> bool:
    """True when an ONNX Runtime layer is timed behind a stand-in producer (:func:`timed_layer`).

    A convolution that quantises its own input takes, inside a model, a tensor another
    convolution left in ONNX Runtime's blocked layout; the quantiser must reorder it out
    first. A lone layer's input is plain, so without a producer that cost goes unseen.
    """
    return shape.kind == "Conv2d" and shape.act_bits == 8 and not shape.q_in


def timed_layer(shape: LayerShape, runtime: str) -> tuple[nn.Module, KernelScope]:
    """The module timed for ``shape`` on ``runtime`` and which of its ONNX Runtime kernels count.

    :func:`layer_module`, behind a depthwise 3x3 convolution standing in for its producer
    where :func:`behind_producer` says so (on ``ort``; the stand-in's own kernels are not
    counted, see :class:`~autocompress.cost.latency.KernelScope`).

    >>> from autocompress.cost.analytic import LayerShape
    >>> s = LayerShape("c", "Conv2d", 16, 16, (1, 1), (1, 1), 1, (1, 16, 8, 8), (1, 16, 8, 8),
    ...                True, act_bits=8)
    >>> module, scope = timed_layer(s, "ort")
    >>> type(module[0]).__name__, scope.producer
    ('Conv2d', True)
    """
    module = layer_module(shape)
    producer = runtime == "ort" and behind_producer(shape)
    if producer:
        c = shape.in_channels
        module = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), module).eval()
    return module, KernelScope(elsewhere=kernel_ops_elsewhere(shape), producer=producer)


def layer_input(shape: LayerShape, batch: int) -> torch.Tensor:
    """A random input of the layer's (pruned) input shape at ``batch``."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape.input_shape[1:], generator=gen)


def time_layers(shapes: list[LayerShape], batch: int, target: Target,
                timing: LayerTiming) -> tuple[list[list[float]], list[int]]:
    """Block medians (ms) of each lone layer at ``batch``, timed in rounds, and its calls per run.

    In ``torch``, the wall clock of the module call; in ``ort``, the layer's kernel time
    from ONNX Runtime's own profiler, without the NCHWc reorders a lone layer pays at its
    edges (inside a model they sit at layout changes only).

    >>> from autocompress.cost.analytic import compressed_shapes
    >>> from autocompress.cost.target import parse_target
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> from autocompress.policy import CompressionPolicy
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> shape = compressed_shapes(CompressionPolicy(layers={}), inv)[0]
    >>> medians, calls = time_layers([shape], 4, parse_target("torch-1t"), LayerTiming(blocks=2))
    >>> len(medians[0]), min(medians[0]) > 0
    (2, True)
    """
    from autocompress.cost.latency import (
        make_runner,
        measure_interleaved,
        ort_kernel_times_interleaved,
        torch_threads,
    )

    t = timing
    timed = [timed_layer(s, target.runtime) for s in shapes]
    built = [(module, layer_input(s, batch)) for s, (module, _) in zip(shapes, timed, strict=True)]
    with timing_lock(), torch_threads(target.threads):
        if target.runtime == "ort":
            runs = ort_kernel_times_interleaved(
                built, target.threads, runs=t.runs, warmup=t.warmup, blocks=t.blocks,
                scopes=[scope for _, scope in timed])
            medians = [[float(np.median(b)) for b in np.array_split(r, t.blocks)] for r in runs]
            return medians, [1] * len(shapes)
        stats, medians = measure_interleaved(
            [make_runner(m, x, target) for m, x in built], runs=t.blocks * t.runs,
            blocks=t.blocks, warmup=t.warmup, min_run_ms=t.min_run_ms)
        return medians, [st.calls_per_run for st in stats]
