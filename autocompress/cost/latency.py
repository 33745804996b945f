"""Whole-model latency on a target, and the fingerprint of the machine that measured it.

A measurement warms the model up, fixes the thread count, then times at
least 30 runs and reports their median, p90 and spread (interquartile
range). Very short calls are timed in groups: one "run" is ``k``
back-to-back calls with ``k`` chosen so a run lasts at least ``min_run_ms``,
and every number is reported per call. This keeps timer resolution and
Python overhead out of sub-millisecond measurements.

Runtimes live in a registry (:data:`RUNNERS`, keyed by ``Target.runtime``):
each turns ``(model, input, threads)`` into a zero-argument callable that
runs one inference the way the target runs it. The input is any
:data:`~autocompress.inputs.ModelInput` (a tensor, a tuple or a dict of named
tensors); each tensor keeps its dtype on every runtime.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from autocompress import inputs
from autocompress.cost.target import Target
from autocompress.errors import TargetError
from autocompress.inputs import ModelInput

Call = Callable[[], Any]
RunnerFactory = Callable[[nn.Module, ModelInput, int], Call]

DEFAULT_RUNS = 30
DEFAULT_WARMUP = 5
DEFAULT_MIN_RUN_MS = 1.0

# CPU flags that decide which kernels a runtime picks; only these enter the
# fingerprint hash so that cosmetic hypervisor flags do not split a LUT.
_ISA_FLAG = re.compile(r"^(sse\d.*|ssse3|avx.*|fma.*|f16c|amx.*|.*vnni.*|neon|asimd.*|sve.*|.*bf16.*)$")


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency statistics of one measurement, in milliseconds.

    ``spread_ms`` is the interquartile range of the runs; ``calls_per_run``
    says how many back-to-back calls each timed run held. ``stable_ms`` is
    the smallest median of the ``blocks`` groups the runs were split into:
    on a shared machine it skips blocks hit by someone else's load spike and
    is the number cost models compare against (equal to ``median_ms`` for one block).
    """

    median_ms: float
    p90_ms: float
    spread_ms: float
    min_ms: float
    mean_ms: float
    runs: int
    calls_per_run: int
    target: str = ""
    stable_ms: float = 0.0
    blocks: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- timing ------------------------------------------------------------------------


def busy_cores(window_s: float = 0.1) -> float:
    """CPU cores kept busy by anything during ``window_s`` (from /proc/stat; 0.0 elsewhere).

    Called while this process sleeps, it is the load of *other* processes.
    """
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as fh:
                fields = [int(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    a = read()
    time.sleep(window_s)
    b = read()
    if a is None or b is None or b[0] == a[0]:
        return 0.0
    total, idle = b[0] - a[0], b[1] - a[1]
    return (total - idle) / total * (os.cpu_count() or 1)


@dataclass
class QuietGate:
    """Waits (at most ``max_wait_s``) until other processes use fewer than ``busy_below`` cores.

    Off by default (``max_wait_s=0``); benchmarks on shared machines turn it
    on so that measurement blocks run in quiet moments. ``budget_s`` caps the
    total waiting: on a machine that never gets quiet the gate stops waiting
    instead of multiplying the run time. ``waited_s`` and ``gave_up`` say how
    much it helped.
    """

    max_wait_s: float = 0.0
    busy_below: float = 0.3
    budget_s: float = 300.0
    waited_s: float = 0.0
    gave_up: int = 0

    def wait(self) -> None:
        if self.max_wait_s <= 0 or self.waited_s >= self.budget_s:
            return
        t0 = time.perf_counter()
        limit = min(self.max_wait_s, self.budget_s - self.waited_s)
        while busy_cores() >= self.busy_below:
            if time.perf_counter() - t0 > limit:
                self.gave_up += 1
                break
            time.sleep(0.1)
        self.waited_s += time.perf_counter() - t0


QUIET = QuietGate()


def time_call(
    fn: Call,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    min_run_ms: float = DEFAULT_MIN_RUN_MS,
) -> tuple[list[float], int]:
    """Time ``fn``: per-call milliseconds of ``runs`` runs, and the calls per run.

    >>> times, k = time_call(lambda: sum(range(100)), runs=5, warmup=1)
    >>> len(times), k >= 1, min(times) > 0
    (5, True, True)
    """
    QUIET.wait()
    for _ in range(max(warmup, 1)):
        fn()
    # One more call sizes the group; take the faster of two to skip a cold outlier.
    single = min(_one(fn), _one(fn))
    k = max(1, int(min_run_ms / 1e3 / max(single, 1e-7)))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        for _ in range(k):
            fn()
        times.append((time.perf_counter_ns() - t0) / k / 1e6)
    return times, k


def _one(fn: Call) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summarize(
    times: list[float], calls_per_run: int, target: str = "", blocks: int = 1
) -> LatencyStats:
    """Median, p90, IQR, min, mean and min-of-block-medians of per-call times (ms).

    >>> s = summarize([1.0, 2.0, 3.0, 4.0, 10.0, 11.0], 1, blocks=2)
    >>> s.median_ms, s.stable_ms, s.runs
    (3.5, 2.0, 6)
    """
    arr = np.asarray(times, dtype=float)
    q25, q50, q75, q90 = np.percentile(arr, [25, 50, 75, 90])
    blocks = max(1, min(blocks, len(times)))
    stable = min(float(np.median(b)) for b in np.array_split(arr, blocks))
    return LatencyStats(
        median_ms=float(q50), p90_ms=float(q90), spread_ms=float(q75 - q25),
        min_ms=float(arr.min()), mean_ms=float(arr.mean()), runs=len(times),
        calls_per_run=calls_per_run, target=target, stable_ms=stable, blocks=blocks,
    )


# ---- runtimes ----------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous value is restored."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _torch_runner(model: nn.Module, x: ModelInput, threads: int) -> Call:
    model = model.eval()

    def call() -> Any:
        with torch.inference_mode():
            return inputs.call(model, x)

    return call


def _ort_runner(model: nn.Module, x: ModelInput, threads: int) -> Call:
    from autocompress.runtime.onnx import export_onnx, ort_session

    sess = ort_session(export_onnx(model, inputs.take(x, 1)), threads)
    feed = inputs.ort_feed(sess, x)  # every input by name, in its own dtype

    def call() -> Any:
        return sess.run(None, feed)

    return call


RUNNERS: dict[str, RunnerFactory] = {"torch": _torch_runner, "ort": _ort_runner}

# ONNX Runtime's layout conversions into and out of its blocked NCHWc layout.
ORT_LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})


@dataclass(frozen=True)
class KernelScope:
    """Which kernels of a lone layer's ONNX Runtime graph are the layer's as it sits in a model.

    Left out: the layout conversions at the graph's edges (inside a model, a chain of
    NCHWc convolutions passes its tensors on in that layout), op types a neighbour's
    kernel runs inside the model (``elsewhere``), and, with ``producer``, a stand-in
    producer at the graph's start: every node upstream of the layer's input quantiser
    except the layout conversion that feeds it. That conversion is the layer's: an
    8-bit input quantiser takes its tensor out of NCHWc and the layer's float kernel
    takes it back in, which cost mobilenet_v2's features.2.conv.1.0 two 0.37 ms reorders
    in the model (a tenth of the model's time) that a lone layer does not pay.

    >>> import onnx
    >>> from onnx import helper as h
    >>> g = h.make_graph([h.make_node("ReorderInput", ["x"], ["a"], name="in"),
    ...                   h.make_node("Conv", ["a"], ["b"], name="conv"),
    ...                   h.make_node("ReorderOutput", ["b"], ["y"], name="out")], "g",
    ...                  [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
    ...                  [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    >>> sorted(KernelScope().left_out(g))
    ['in', 'out']
    >>> KernelScope(producer=True).left_out(g)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    autocompress.errors.TargetError: ONNX Runtime left no QuantizeLinear in graph 'g' of a layer ...
    """

    elsewhere: frozenset[str] = frozenset()
    producer: bool = False

    def left_out(self, graph: Any) -> set[str]:
        """Names of the nodes of ``graph`` (an ONNX GraphProto) whose kernels are not counted."""
        inputs_ = {i.name for i in graph.input}
        outputs = {o.name for o in graph.output}
        out = {n.name for n in graph.node if n.op_type in self.elsewhere
               or (n.op_type in ORT_LAYOUT_OPS
                   and (set(n.input) & inputs_ or set(n.output) & outputs))}
        if self.producer:
            made_by = {o: n for n in graph.node for o in n.output}
            quantiser = next((n for n in graph.node if n.op_type == "QuantizeLinear"), None)
            if quantiser is None:  # counting the stand-in would be a silently wrong entry
                raise TargetError(
                    f"ONNX Runtime left no QuantizeLinear in graph {graph.name!r} of a layer "
                    "with 8-bit inputs, so its stand-in producer cannot be told apart; "
                    "time it with the torch runtime or report this model")
            feed = made_by.get(quantiser.input[0])
            todo = list(feed.input) if feed is not None and feed.op_type in ORT_LAYOUT_OPS else [
                quantiser.input[0]]
            while todo:
                node = made_by.get(todo.pop())
                if node is not None and node.name not in out:
                    out.add(node.name)
                    todo.extend(node.input)
        return out


def ort_kernel_times(
    model: nn.Module, x: ModelInput, threads: int, runs: int, warmup: int = 3, blocks: int = 1
) -> list[float]:
    """Per-run milliseconds of ``model``'s ONNX Runtime kernels, edge reorders excluded.

    Read from ONNX Runtime's own profiler (kernel durations grouped by run), so
    the per-call session overhead and the reorders into and out of the NCHWc
    layout at the graph's edges, which only a lone layer pays, are not counted
    (:class:`KernelScope`). ``blocks`` groups of ``runs`` runs each start with one
    extra warm-up call (and the quiet gate).

    >>> times = ort_kernel_times(nn.Conv2d(8, 8, 3), torch.zeros(1, 8, 6, 6), threads=1, runs=3)
    >>> len(times), all(t > 0 for t in times)
    (3, True)
    """
    return ort_kernel_times_interleaved([(model, x)], threads, runs, warmup, blocks)[0]


def ort_kernel_times_interleaved(
    models: Sequence[tuple[nn.Module, ModelInput]], threads: int, runs: int, warmup: int = 3,
    blocks: int = 1, scopes: Sequence[KernelScope] | None = None,
) -> list[list[float]]:
    """:func:`ort_kernel_times` of several models, in rounds: block ``i`` of each, then ``i + 1``.

    Every model's blocks fall in the same seconds, so the machine's drift moves
    them alike (see :func:`measure_interleaved`); returns each model's per-run ms.
    ``scopes``: per model, which of its kernels count (:class:`KernelScope`; a lone
    layer's quantisers that a neighbour's integer kernel runs inside the model, see
    :func:`autocompress.cost.lut.with_int8_fusion`).

    >>> a, b = ort_kernel_times_interleaved([(nn.Linear(256, 256), torch.zeros(64, 256)),
    ...                                      (nn.Linear(16, 16), torch.zeros(64, 16))],
    ...                                     threads=1, runs=4, blocks=2)
    >>> len(a), len(b), sum(a) > sum(b)
    (8, 8, True)
    """
    import tempfile

    scopes = list(scopes or [KernelScope()] * len(models))
    with tempfile.TemporaryDirectory() as tmp:
        sessions, feeds, left_out = [], [], []
        for i, ((model, x), scope) in enumerate(zip(models, scopes, strict=True)):
            sess, graph = profiled_session(model, x, threads, os.path.join(tmp, f"ort{i}"))
            left_out.append(frozenset(scope.left_out(graph)))
            sessions.append(sess)
            feeds.append(inputs.ort_feed(sess, x))
        n = [0] * len(models)  # runs so far; the profiler logs one model_run event per run
        timed: list[list[int]] = [[] for _ in models]
        for j, (sess, feed) in enumerate(zip(sessions, feeds, strict=True)):
            for _ in range(max(warmup, 1) - 1):
                sess.run(None, feed)
                n[j] += 1
        for _ in range(blocks):
            QUIET.wait()
            for j, (sess, feed) in enumerate(zip(sessions, feeds, strict=True)):
                sess.run(None, feed)  # one warm-up per block: the other model ran in between
                n[j] += 1
                for _ in range(runs):
                    sess.run(None, feed)
                    timed[j].append(n[j])
                    n[j] += 1
        profiles = []
        for sess in sessions:
            with open(sess.end_profiling()) as fh:
                profiles.append(json.load(fh))
    return [_kernel_totals(events, runs_timed, skip)
            for events, runs_timed, skip in zip(profiles, timed, left_out, strict=True)]


def profiled_session(model: nn.Module, x: ModelInput, threads: int, prefix: str
                     ) -> tuple[Any, Any]:
    """An ONNX Runtime session of ``model`` that profiles its kernels, and its optimised graph.

    The profile and the optimised graph (weights beside it) are written under ``prefix``.
    """
    import onnx

    from autocompress.runtime.onnx import export_onnx, ort_session, session_options

    opts = session_options(threads)
    opts.enable_profiling = True
    opts.profile_file_prefix = prefix
    opts.optimized_model_filepath = f"{prefix}-optimized.onnx"
    opts.add_session_config_entry(  # only the graph is read: weights go beside it
        "session.optimized_model_external_initializers_file_name",
        f"{os.path.basename(prefix)}-optimized.data")
    sess = ort_session(export_onnx(model, inputs.take(x, 1)), opts=opts)
    return sess, onnx.load(opts.optimized_model_filepath, load_external_data=False).graph


def node_kernel_ms(events: list[dict[str, Any]], skip: int = 0,
                   blocks: int = 1) -> dict[str, float]:
    """Each node's kernel ms in an ONNX Runtime profile, its first ``skip`` runs left out:
    the smallest of the medians of ``blocks`` consecutive blocks of runs (the estimator of
    :func:`summarize`'s ``stable_ms``; one block: the median).

    >>> events = [{"cat": "Node", "name": "conv_kernel_time", "dur": d} for d in
    ...           (900, 100, 120, 110, 300, 90)]
    >>> node_kernel_ms(events, skip=1), node_kernel_ms(events, skip=1, blocks=2)
    ({'conv': 0.11}, {'conv': 0.11})
    >>> round(node_kernel_ms(events, skip=0, blocks=3)["conv"], 3)  # 900 lands in a block
    0.115
    """
    spans: dict[str, list[float]] = {}
    suffix = "_kernel_time"
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") == "Node" and name.endswith(suffix):
            spans.setdefault(name[: -len(suffix)], []).append(e["dur"] / 1e3)
    return {k: float(min(np.median(b) for b in np.array_split(v[skip:] or v, blocks) if len(b)))
            for k, v in spans.items()}


def module_paths(node_name: str) -> list[str]:
    """The module paths an exported node's name passes through, outermost first.

    The TorchScript exporter names a node by its scopes, each an attribute name or, inside
    a Sequential, the parent's name plus an index:

    >>> module_paths("/layer1/layer1.0/conv1/conv1.1/Conv_token_71")
    ['layer1', 'layer1.0', 'layer1.0.conv1', 'layer1.0.conv1.1']
    >>> module_paths("/features/features.0/features.0.1/Conv")
    ['features', 'features.0', 'features.0.1']
    """
    paths: list[str] = []
    current, prev = "", None
    for seg in node_name.split("/")[1:-1]:
        if prev is not None and seg.startswith(prev + "."):
            current += seg[len(prev):]  # an index inside the Sequential just entered
        else:
            current = f"{current}.{seg}" if current else seg
        paths.append(current)
        prev = seg
    return paths


def layer_kernels(graph: Any, fqns: Sequence[str]) -> dict[str, str]:
    """``{layer fqn: node name}``: each layer's kernel in a model's optimised ONNX Runtime graph.

    A layer's kernel is a node that takes a weight matrix (an initializer of rank >= 2).
    The module path in the node's name names the layer where it can; a convolution fused
    with its activation is named after the activation's output, so the nodes left are
    given to the layers left, both in order.

    >>> import onnx
    >>> from onnx import helper as h, numpy_helper
    >>> w = [numpy_helper.from_array(np.zeros((4, 4), np.float32), f"w{i}") for i in range(2)]
    >>> g = h.make_graph([h.make_node("Conv", ["x", "w0"], ["a"], name="/l/relu/Relu_output_0"),
    ...                   h.make_node("Gemm", ["a", "w1"], ["y"], name="/l/fc/Gemm")], "g",
    ...                  [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
    ...                  [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], w)
    >>> layer_kernels(g, ["l.conv", "l.fc"])
    {'l.fc': '/l/fc/Gemm', 'l.conv': '/l/relu/Relu_output_0'}
    """
    weights = {t.name for t in graph.initializer if len(t.dims) >= 2}
    nodes = [n.name for n in graph.node if weights.intersection(n.input)]
    out: dict[str, str] = {}
    for name in nodes:
        hit = next((p for p in reversed(module_paths(name)) if p in fqns and p not in out), None)
        if hit is not None:
            out[hit] = name
    named = set(out.values())
    out.update(zip([f for f in fqns if f not in out], [n for n in nodes if n not in named],
                   strict=False))
    return out


def _kernel_totals(events: list[dict[str, Any]], timed: list[int],
                   left_out: frozenset[str] = frozenset()) -> list[float]:
    """Milliseconds of kernels (nodes named in ``left_out`` excepted) in each timed run of a profile."""
    all_spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"]
    run_spans = [all_spans[i] for i in timed if i < len(all_spans)]
    totals = [0.0] * len(run_spans)
    suffix = "_kernel_time"
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith(suffix):
            continue
        if name[: -len(suffix)] in left_out:
            continue
        for i, (start, end) in enumerate(run_spans):
            if start <= e["ts"] <= end:
                totals[i] += e["dur"] / 1e3  # microseconds -> ms
                break
    return totals


def make_runner(model: nn.Module, x: ModelInput, target: Target) -> Call:
    """A callable running one inference of ``model`` on the batch ``x`` as ``target`` runs it.

    Torch threads are not set here; call it inside :func:`torch_threads`.
    """
    return RUNNERS[target.runtime](model, x, target.threads)


def batched(example_input: ModelInput, batch: int) -> ModelInput:
    """``example_input``'s first sample repeated to ``batch`` rows (contiguous), every tensor
    in its own dtype (see :func:`autocompress.inputs.batched`)."""
    return inputs.batched(example_input, batch)


def measure_latency(
    model: nn.Module,
    example_input: ModelInput,
    target: Target,
    warmup: int = DEFAULT_WARMUP,
    runs: int = DEFAULT_RUNS,
    min_run_ms: float = DEFAULT_MIN_RUN_MS,
    blocks: int = 1,
) -> LatencyStats:
    """Latency of ``model`` on ``target`` at ``target.batch`` (default: the input's batch).

    ``blocks`` > 1 splits the runs into that many consecutive groups and
    reports the smallest group median as ``stable_ms`` (robust to load spikes).

    The model is put in eval mode for the measurement (and restored after);
    the torch thread count is restored after as well.

    >>> from autocompress.cost.target import parse_target
    >>> s = measure_latency(nn.Linear(8, 8), torch.zeros(1, 8), parse_target("torch-1t-b4"))
    >>> s.median_ms > 0 and s.p90_ms >= s.median_ms and s.runs == 30
    True
    >>> ids = {"input": torch.zeros(1, 6, dtype=torch.long)}  # token ids stay int64
    >>> measure_latency(nn.Embedding(10, 4), ids, parse_target("ort-cpu-1t-b2"), runs=3).target
    'ort-cpu-1t-b2'
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    batch = target.batch or inputs.batch_size(example_input)
    x = batched(example_input, batch)
    blocks = max(1, min(blocks, runs))
    was_training = model.training
    times: list[float] = []
    try:
        with torch_threads(target.threads):
            call = make_runner(model, x, target)
            for i in range(blocks):
                n = runs // blocks + (1 if i < runs % blocks else 0)
                block, k = time_call(call, runs=n, warmup=warmup if i == 0 else 1,
                                     min_run_ms=min_run_ms)
                times += block
    finally:
        model.train(was_training)
    name = Target(target.runtime, target.threads, batch).name
    return summarize(times, k, target=name, blocks=blocks)


def measure_interleaved(
    calls: list[Call],
    runs: int = DEFAULT_RUNS,
    blocks: int = 10,
    warmup: int = DEFAULT_WARMUP,
    min_run_ms: float = DEFAULT_MIN_RUN_MS,
    target: str = "",
) -> tuple[list[LatencyStats], list[list[float]]]:
    """Time several callables in rounds: block ``i`` of each, then block ``i + 1`` of each.

    Returns each callable's statistics (``stable_ms``: smallest block median) and
    its block medians, round by round. Every callable is timed in the same minutes,
    so a machine whose speed drifts over minutes (a shared VM's does) moves them all
    alike instead of favouring whichever ran in a fast spell.

    >>> stats, medians = measure_interleaved([lambda: sum(range(2000)), lambda: sum(range(10))],
    ...                                      runs=6, blocks=3, warmup=1)
    >>> [s.runs for s in stats], len(medians[0]), stats[0].median_ms > stats[1].median_ms
    ([6, 6], 3, True)
    """
    blocks = max(1, min(blocks, runs))
    times: list[list[float]] = [[] for _ in calls]
    medians: list[list[float]] = [[] for _ in calls]
    per_run = [1] * len(calls)
    for i in range(blocks):
        n = runs // blocks + (1 if i < runs % blocks else 0)
        for j, call in enumerate(calls):
            block, per_run[j] = time_call(call, runs=n, warmup=warmup if i == 0 else 1,
                                          min_run_ms=min_run_ms)
            times[j] += block
            medians[j].append(float(np.median(block)))
    stats = [summarize(t, k, target=target, blocks=blocks) for t, k in zip(times, per_run,
                                                                           strict=True)]
    return stats, medians


def measure_models_interleaved(
    models: list[nn.Module], example_input: ModelInput, target: Target, runs: int,
    blocks: int = 10, others: Sequence[Call] = (),
) -> list[LatencyStats]:
    """Each model's latency on ``target``, the models timed in alternating blocks.

    The batch is ``example_input``'s first sample repeated to the target's batch;
    each model's train/eval mode is restored afterwards. ``others`` (callables that run
    one inference themselves, such as an ONNX Runtime session of an exported file) are
    timed in the same rounds, after the models; their statistics follow the models'.

    >>> from autocompress.cost.target import parse_target
    >>> a, b = nn.Linear(64, 64), nn.Linear(64, 8)
    >>> stats = measure_models_interleaved([a, b], torch.zeros(1, 64), parse_target("torch-1t-b4"),
    ...                                    runs=6, blocks=3)
    >>> [s.runs for s in stats], a.training
    ([6, 6], True)
    """
    x = batched(example_input, target.batch or inputs.batch_size(example_input))
    training = [m.training for m in models]
    try:
        with torch_threads(target.threads):
            calls = [make_runner(m, x, target) for m in models] + list(others)
            stats, _ = measure_interleaved(calls, runs=runs, blocks=blocks, target=target.name)
    finally:
        for m, was in zip(models, training, strict=True):
            m.train(was)
    return stats


# ---- environment fingerprint -------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_description() -> dict[str, Any]:
    """CPU model, architecture, core count and flags (py-cpuinfo; cached per process)."""
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # cpuinfo can fail in odd sandboxes; the platform module still answers
        info = {}
    return {
        "cpu": info.get("brand_raw") or platform.processor() or "unknown",
        "arch": info.get("arch") or platform.machine(),
        "cores": os.cpu_count(),
        "flags": sorted(info.get("flags", [])),
    }


def env_fingerprint(target: Target) -> dict[str, Any]:
    """Everything that decides a latency number: CPU, ISA flags, library versions, target.

    ``fingerprint["hash"]`` is a short stable hash of the parts that matter
    (CPU model, SIMD flags, torch/onnxruntime versions, runtime, threads, batch);
    latency tables are keyed by it.

    >>> from autocompress.cost.target import parse_target
    >>> fp = env_fingerprint(parse_target("ort-cpu-1t-b8"))
    >>> fp["threads"], fp["batch"], len(fp["hash"])
    (1, 8, 12)
    """
    import onnxruntime

    cpu = cpu_description()
    isa = [f for f in cpu["flags"] if _ISA_FLAG.match(f)]
    fp: dict[str, Any] = {
        "cpu": cpu["cpu"],
        "arch": cpu["arch"],
        "cores": cpu["cores"],
        "isa_flags": isa,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "runtime": target.runtime,
        "threads": target.threads,
        "batch": target.batch,
        "target": target.name,
    }
    keyed = {k: fp[k] for k in ("cpu", "arch", "isa_flags", "torch", "onnxruntime", "runtime",
                                "threads", "batch")}
    fp["hash"] = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
    fp["flags"] = cpu["flags"]
    return fp
