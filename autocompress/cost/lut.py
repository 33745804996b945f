"""Latency prediction from the per-layer lookup table (LUT), measured once per layer shape.

The table's file is :mod:`autocompress.cost.lut_store`; how a lone layer or a whole model
is timed is :mod:`autocompress.cost.timing`; this module predicts from the entries.

Each compressible layer is measured alone, built with the shape
``apply_policy`` gives it (pruned input/output channels, the two low-rank
factors, the 8-bit input fake-quantiser that exports to
QuantizeLinear/DequantizeLinear), at the target's batch, in the target's
runtime. Sparsity and weight bits alone do not enter the key: ``apply_policy``
bakes them into float weights, so a dense runtime runs them at fp32 speed;
only 8-bit inputs do (a QuantizeLinear/DequantizeLinear pair on the input),
and 8-bit inputs with quantised weights (int8 weight QDQ, which ONNX Runtime
may run as an integer kernel).
Nothing is assumed about speed-ups: an int8 QDQ layer costs what it
measures, slower or faster. On ONNX Runtime a layer at 8-bit inputs whose
consumers take 8-bit inputs too is fused into one integer kernel inside the
model; the layers where that happens are read once per model from the
runtime's optimised graph and get entries of their own
(:func:`int8_fusable_layers`, :func:`with_int8_fusion`). A convolution that quantises
its own input is timed behind a stand-in producer, so the reorders out of and back into
ONNX Runtime's blocked layout that its quantiser costs inside a model are counted
(:func:`~autocompress.cost.timing.timed_layer`).

A model's uncompressed layers are timed alone (:func:`~autocompress.cost.timing.time_layers`);
a compressed variant is timed in
blocks alternating with its uncompressed layer and stored as the median block
ratio times that layer's entry, so every entry of a layer shares one scale
whatever minute it was measured in (:meth:`LatencyLUT._paired_entry`).

A policy's latency comes from its layers' entries and one whole-model measurement per
model and target, the uncompressed model's (on ONNX Runtime with a profile of it):

- A layer runs slower inside the model than alone, where its weights and input stay in
  the cache from one timed run to the next: resnet18's layer4 convolutions (9.4 MB of
  weights each) +28-32% on a 2 MB-L2 Xeon, mobilenet_v2's expand convolutions (with the
  ReLU6 fused into them) +37-67% (``benchmarks/layer_probes.py --context``). That excess
  is read once from ONNX Runtime's profile of the uncompressed model
  (:func:`~autocompress.cost.timing.in_model_layer_ms`) and kept per layer, going as the
  layer's weights do: pruned to half its weights, half its excess. Kept in the remainder
  and scaled by activations, it stayed behind when a policy shrank a layer with large
  weights and small outputs: on the Xeon, speed-ratio tau on resnet18 went from 0.85 to
  0.93 and digits' share within 10% from 80% to 90% (``benchmarks/latency_fidelity.py``).

- A policy that leaves the graph as it is (weight bits and sparsity only, baked
  into float weights) is the uncompressed model's measured time: its layers'
  sum plus the *remainder* (BatchNorm, activations, pooling, adds, per-call
  overhead), ``model - sum(layers)``, the layers counted with their excess.
- A policy that changes the graph (channels, factors, 8-bit inputs) is its layers' sum
  plus the remainder scaled by the activations its layers write, per sample, over the
  uncompressed layers' (:func:`activation_share`): the ops between the layers
  (activations, normalisation, attention's score products and softmax, pooling) work on
  those tensors, and shrink when channels or heads go, not when a layer merely gets
  faster (8-bit inputs, a low rank). Scaling the remainder with the layers' time instead
  under-predicted all-MiniLM-L6-v2 with 8-bit Linear layers by 8% (median of 38 timed
  candidates; MAPE 6.8% against 3.1%) and resnet18's random policies (within 10%: 90%
  against 100%); digits, whose remainder is a small negative fusion term, moved
  little (tau 0.78 to 0.82, within 10% 85% to 80%). A least-squares line through a few
  measured compressed models was tried before either rule and swung with their noise on
  sub-millisecond models.

What the search does with a prediction is in :mod:`autocompress.engine.judge`: it screens
and places candidates; the target's timing judges them.

The table is filled lazily and saved after each new entry, merged with what other
processes wrote (:func:`~autocompress.cost.lut_store.write_table`).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autocompress import inputs
from autocompress.cost.analytic import Costs, LayerShape, analytic_costs, compressed_shapes
from autocompress.cost.latency import (
    env_fingerprint,
    measure_models_interleaved,
    module_paths,
)
from autocompress.cost.lut_store import (
    LAYER_METHOD,
    layer_key,
    read_table,
    write_table,
)
from autocompress.cost.target import Target
from autocompress.cost.timing import (
    MODEL_BLOCKS,
    LayerTiming,
    in_model_layer_ms,
    time_layers,
    timing_lock,
)
from autocompress.errors import InputFileError, TargetError
from autocompress.inputs import ModelInput
from autocompress.inventory import LayerInventory
from autocompress.policy import CompressionPolicy, LayerPolicy

# Version of the whole-model fit; a cached fit of another version is measured again
# (5: the uncompressed model alone, no calibration models; 6: its layers' in-model times;
# 7: those timed in blocks, the smallest block median kept, as lone layers are).
FIT_VERSION = 7


@dataclass(frozen=True)
class Prediction:
    """A predicted latency and its parts (ms)."""

    latency_ms: float
    layers_ms: dict[str, float]
    remainder_ms: float


# A cached whole-model fit further than this (relative) from a fresh measurement is redone.
STALE_TOLERANCE = 0.3


# ONNX Runtime's integer kernels: what DequantizeLinear -> Conv/Gemm -> QuantizeLinear fuses into.
INT8_KERNELS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger",
                          "MatMulInteger"})


def int8_fusable_layers(model: nn.Module, inventory: LayerInventory, example_input: ModelInput,
                        threads: int = 1) -> list[str]:
    """Layers ONNX Runtime runs as one integer kernel when they and their consumers take 8-bit inputs.

    ONNX Runtime fuses DequantizeLinear -> Conv/Gemm (-> Relu) -> QuantizeLinear into
    QLinearConv/QGemm, float weights and all, when the layer's output goes (through an
    activation) straight into the next layer's input quantiser; a pooling or an add in
    between keeps it a float kernel. Which layers it fuses is read from the optimised
    graph of the model with every layer at 8-bit inputs (node names carry module paths).
    On this AVX2 CPU that made the digits MLP with 8-bit inputs on its last two layers
    *faster* (0.39x of the uncompressed model, pruned) than without them (0.50x), where
    every lone layer with 8-bit inputs ran slower: a lone layer has no next quantiser.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsCNN
    >>> model, x = DigitsCNN(), torch.zeros(1, 1, 8, 8)
    >>> int8_fusable_layers(model, build_inventory(model, x), x)  # a MaxPool follows features.2
    ['features.0', 'classifier.1']
    """
    import onnx

    from autocompress.methods import apply_policy
    from autocompress.runtime.onnx import export_onnx, ort_session, session_options

    policy = CompressionPolicy(layers={info.fqn: LayerPolicy(act_bits=8) for info in inventory})
    built = apply_policy(model, policy, example_input, inventory=inventory)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(threads)
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        # Only the node names are read; weights go beside the graph, which a model past
        # protobuf's 2 GiB needs.
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        ort_session(export_onnx(built, inputs.take(example_input, 1)), opts=opts)
        nodes = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph.node
    fused = {path for node in nodes if node.op_type in INT8_KERNELS
             for path in module_paths(node.name)}
    return [fqn for fqn in inventory.fqns if fqn in fused]


def with_int8_fusion(shapes: list[LayerShape], inventory: LayerInventory,
                     fusable: Iterable[str]) -> list[LayerShape]:
    """``shapes`` with ``q_out``/``q_in`` set where ONNX Runtime fuses integer kernels.

    A ``fusable`` layer (:func:`int8_fusable_layers`) with 8-bit inputs, dense, whose
    consumers all take 8-bit inputs too, runs as one integer kernel that also quantises
    its output (``q_out``); its consumers then skip their own input quantiser (``q_in``).

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> from autocompress.cost.analytic import compressed_shapes
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> p = CompressionPolicy(layers={"net.3": LayerPolicy(act_bits=8),
    ...                               "net.5": LayerPolicy(act_bits=8)})
    >>> [(s.q_in, s.q_out) for s in with_int8_fusion(compressed_shapes(p, inv), inv,
    ...                                               ["net.1", "net.3"])]
    [(False, False), (False, True), (True, False)]
    """
    from dataclasses import replace

    fusable = set(fusable)
    by_fqn = {s.fqn: s for s in shapes}
    q_out, q_in = set(), set()
    for info in inventory:
        s = by_fqn[info.fqn]
        consumers = inventory.consumers(info.fqn)
        if (info.fqn in fusable and s.act_bits == 8 and s.rank is None and consumers
                and all(by_fqn[c].act_bits == 8 for c in consumers)):
            q_out.add(info.fqn)
            q_in.update(consumers)
    if not q_out:
        return shapes
    return [replace(s, q_in=s.fqn in q_in, q_out=s.fqn in q_out) for s in shapes]


class LatencyLUT:
    """Measured per-layer latencies for one target, cached in a JSON file.

    ``path=None`` keeps the table in memory only. ``measured`` counts the
    single-layer measurements this instance made (cache hits do not count).

    >>> import torch
    >>> from autocompress.cost.target import parse_target
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> model, x = DigitsMLP(), torch.zeros(1, 1, 8, 8)
    >>> inv = build_inventory(model, x)
    >>> lut = LatencyLUT(None, parse_target("torch-1t-b8"))
    >>> ms = lut.predict(CompressionPolicy(layers={"net.1": LayerPolicy(prune=0.5)}), inv, model, x)
    >>> ms > 0, lut.measured > 0
    (True, True)
    """

    def __init__(
        self,
        path: str | Path | None,
        target: Target,
        timing: LayerTiming | None = None,
        model_runs: int = 30,
        progress: Callable[[str], None] | None = None,
        frozen: bool = False,
    ) -> None:
        if target.batch is None:
            raise TargetError(
                f"target {target.name!r} has no batch size; a latency table is per batch: give "
                "-b<batch> or call Target.with_batch(task.target_batch_size) first"
            )
        self.path = Path(path) if path is not None else None
        self.target = target
        self.timing = timing or LayerTiming()
        self.model_runs = model_runs
        self.progress = progress
        #: Read-only and never measured: a table profiled on the target, used elsewhere.
        self.frozen = frozen
        self.fingerprint = env_fingerprint(target)
        self.key = self.fingerprint["hash"]
        self.measured = 0
        self.model_measurements = 0
        self.measure_seconds = 0.0
        self._data = self._load()
        self._dirty = False
        self._forgotten = False  # set by forget_model_if_stale: do not merge old entries back
        self._references: dict[str, list[LayerShape]] = {}  # inventory sha256 -> its layers
        if frozen:
            self.key = self._frozen_key()
            return
        entry = self._data["targets"].setdefault(self.key, {})
        entry["env"] = {k: v for k, v in self.fingerprint.items() if k != "flags"}
        entry.setdefault("layers", {})
        entry.setdefault("models", {})
        if entry.get("layer_method") != LAYER_METHOD:
            # Entries timed another way (before 2: each alone, with the drift of its minute)
            # do not mix with these: the table is measured again.
            entry["layers"], entry["models"] = {}, {}
            entry["layer_method"] = LAYER_METHOD
            self._forgotten = self._dirty = True

    @property
    def foreign(self) -> bool:
        """Whether the table's entry was measured on another machine (another fingerprint)."""
        return self.key != self.fingerprint["hash"]

    @property
    def measured_on(self) -> str:
        """The CPU the table's entry for this target was measured on."""
        return str(self._entry.get("env", {}).get("cpu", "an unknown CPU"))

    def _frozen_key(self) -> str:
        """The entry a frozen table reads: this machine's, else the only one for the target."""
        where = str(self.path)
        if self.path is None or not self.path.is_file():
            raise InputFileError(
                f"latency table {where!r} does not exist; expected a table profiled on the "
                f"target: `autocompress profile --task TASK --target {self.target.name} --out "
                f"{where}` on the deployment machine")
        targets = self._data["targets"]
        if self.key in targets:
            key = self.key
        else:
            same = [k for k, e in targets.items()
                    if e.get("env", {}).get("target") == self.target.name]
            if len(same) != 1:
                held = sorted({str(e.get("env", {}).get("target")) for e in targets.values()})
                raise TargetError(
                    f"latency table {where!r} holds {len(same)} entries for target "
                    f"{self.target.name!r} (it has {', '.join(held) or 'none'}); expected one: "
                    f"profile that target on the deployment machine with `autocompress profile "
                    f"--target {self.target.name} --out {where}`, or pass the --target it holds")
            key = same[0]
        if targets[key].get("layer_method") != LAYER_METHOD:
            raise TargetError(
                f"latency table {where!r} was timed by an older version of autocompress; "
                "profile the target again with `autocompress profile --out`")
        return key

    def _frozen_miss(self, what: str) -> str:
        return (f"the latency table {str(self.path)!r} (profiled on {self.measured_on}) lacks "
                f"{what}; profile this task and search space on the target with `autocompress "
                f"profile --task TASK --space SPACE --target {self.target.name} --out "
                f"{self.path}`")

    # ---- file ----------------------------------------------------------------------
    def _load(self, path: Path | None = None) -> dict[str, Any]:
        return read_table(path if path is not None else self.path)

    @property
    def _entry(self) -> dict[str, Any]:
        return self._data["targets"][self.key]

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        """Layer-config key -> measurement, for this target."""
        return self._entry["layers"]

    def save(self, path: str | Path | None = None) -> None:
        """Merge in what other processes wrote to the file, then write it atomically.

        ``path``: another table file to merge this one into (the shared cache); by default
        the table's own file, written only when something changed.
        """
        if self.frozen:
            return
        dest = Path(path) if path is not None else self.path
        if dest is None or (path is None and not self._dirty):
            return
        write_table(self._data, dest, forgotten=self.key if self._forgotten else None)
        if path is None:
            self._dirty = False
            self._forgotten = False

    # ---- layers --------------------------------------------------------------------
    def layer_ms(self, shape: LayerShape, reference: LayerShape | None = None) -> float:
        """Latency of one layer config on the target, measured on first use.

        ``reference``: the uncompressed layer that ``shape`` compresses. A new
        entry is then timed in blocks alternating with it and stored as the
        median ratio of their block times, times the reference's own entry (see
        :meth:`_paired_entry`).
        """
        batch = self.target.require_batch()
        key = layer_key(shape, batch)
        hit = self.entries.get(key)
        if hit is None and self.frozen:
            raise TargetError(self._frozen_miss(f"layer {shape.fqn} at {key}"))
        if hit is None:
            ref_key = layer_key(reference, batch) if reference is not None else key
            if reference is None or ref_key == key:
                medians, k = self._time_layers([shape], batch)
                hit = {"ms": min(medians[0]), "max_block_ms": max(medians[0]),
                       "runs": self.timing.blocks * self.timing.runs, "calls_per_run": k[0]}
            else:
                hit = self._paired_entry(shape, reference, ref_key, batch)
            self.entries[key] = hit
            self._dirty = True
        return float(hit["ms"])

    def _paired_entry(self, shape: LayerShape, reference: LayerShape, ref_key: str,
                      batch: int) -> dict[str, Any]:
        """The entry of a compressed layer: its time relative to its uncompressed layer.

        Timed alone, one after the other, entries took the speed of the minute each
        was measured in: on a shared VM a 512x512 Linear measured 0.48 ms once and
        0.36-0.42 ms in six later blocks, so pruning it 4% "saved" 30%. Alternating
        blocks with the reference put both in the same seconds; the median of the
        per-block ratios times the reference's entry keeps every entry of a layer on
        one scale, which is what the ratios of a relative budget compare.
        """
        ref_ms = self.layer_ms(reference)
        (mine, ref), k = self._time_layers([shape, reference], batch)
        ratio = float(np.median([a / b for a, b in zip(mine, ref, strict=True)]))
        return {"ms": ratio * ref_ms, "ratio": ratio, "reference": ref_key,
                "alone_ms": min(mine), "max_block_ms": max(mine),
                "runs": self.timing.blocks * self.timing.runs, "calls_per_run": k[0]}

    def _time_layers(self, shapes: list[LayerShape], batch: int) -> tuple[list[list[float]],
                                                                           list[int]]:
        """:func:`~autocompress.cost.timing.time_layers`, counted and its seconds kept."""
        t0 = time.perf_counter()
        medians, calls = time_layers(shapes, batch, self.target, self.timing)
        self.measured += 1
        self.measure_seconds += time.perf_counter() - t0
        return medians, calls

    def measure_missing(self, shapes: Iterable[LayerShape],
                        references: Iterable[LayerShape | None] | None = None) -> int:
        """Measure every config in ``shapes`` not yet in the table; returns how many were new.

        ``references``: each shape's uncompressed layer (see :meth:`layer_ms`).
        """
        before = self.measured
        batch = self.target.require_batch()
        shapes = list(shapes)
        refs = list(references) if references is not None else [None] * len(shapes)
        todo = {layer_key(s, batch): (s, r) for s, r in zip(shapes, refs, strict=True)}
        todo = {k: sr for k, sr in todo.items() if k not in self.entries}
        for i, (shape, ref) in enumerate(todo.values()):
            if self.progress:
                self.progress(f"layer {i + 1}/{len(todo)}: {shape.fqn}")
            self.layer_ms(shape, ref)
        t0 = time.perf_counter()
        self.save()
        if todo:  # writing the new entries down is part of what filling the table costs
            self.measure_seconds += time.perf_counter() - t0
        return self.measured - before

    def layers_ms(self, policy: CompressionPolicy | None, inventory: LayerInventory,
                  model: nn.Module | None = None, example_input: ModelInput | None = None,
                  ) -> dict[str, float]:
        """Per-layer latency of the model ``policy`` makes (from the table, measuring misses).

        ``model``/``example_input``: needed once per model on ONNX Runtime, to find the
        layers it fuses into integer kernels (:meth:`int8_fusable`).
        """
        return self._shapes_ms(self.runtime_shapes(policy, inventory, model, example_input),
                               inventory)

    def runtime_shapes(self, policy: CompressionPolicy | None, inventory: LayerInventory,
                       model: nn.Module | None = None,
                       example_input: ModelInput | None = None) -> list[LayerShape]:
        """``compressed_shapes`` of ``policy``, marked where the runtime fuses integer kernels."""
        shapes = compressed_shapes(policy or CompressionPolicy(layers={}), inventory)
        if self.target.runtime != "ort" or sum(s.act_bits == 8 for s in shapes) < 2:
            return shapes  # a fusion needs a layer and its consumer at 8-bit inputs
        return with_int8_fusion(shapes, inventory,
                                self.int8_fusable(inventory, model, example_input))

    def int8_fusable(self, inventory: LayerInventory, model: nn.Module | None,
                     example_input: ModelInput | None) -> list[str]:
        """:func:`int8_fusable_layers` of the model, found once and kept in the table file.

        Without the model (and nothing cached) no fusion is assumed: each layer then
        costs what it costs alone.
        """
        cache = self._entry.setdefault("int8_fusable", {})
        key, hit = self._cached(cache, inventory, example_input)
        if hit is not None:
            return list(hit)
        if model is None or example_input is None or key is None:
            return []
        cache[key] = int8_fusable_layers(model, inventory, example_input, self.target.threads)
        self._dirty = True
        return list(cache[key])

    def _reference_shapes(self, inventory: LayerInventory) -> list[LayerShape]:
        """The uncompressed layers' shapes: once per model, not per prediction."""
        references = self._references.get(inventory.sha256)
        if references is None:
            references = compressed_shapes(CompressionPolicy(layers={}), inventory)
            self._references[inventory.sha256] = references
        return references

    def _shapes_ms(self, shapes: list[LayerShape], inventory: LayerInventory) -> dict[str, float]:
        """:meth:`layers_ms` of already computed ``compressed_shapes``."""
        references = self._reference_shapes(inventory)
        self.measure_missing(shapes, references)
        return {s.fqn: self.layer_ms(s, r) for s, r in zip(shapes, references, strict=True)}

    def layer_table(self, inventory: LayerInventory) -> list[dict[str, Any]]:
        """The uncompressed model's layers: fqn, kind, MACs, params, measured ms and share of the sum."""
        ms = self.layers_ms(None, inventory)
        total = sum(ms.values()) or 1.0
        batch = self.target.require_batch()
        scale = batch / max(inventory.layers[0].input_shape[0], 1) if len(inventory) else 1
        return [
            {"fqn": info.fqn, "kind": info.kind, "macs": int(info.macs * scale),
             "params": info.params, "latency_ms": ms[info.fqn], "share": ms[info.fqn] / total}
            for info in inventory
        ]

    # ---- whole model ---------------------------------------------------------------
    @staticmethod
    def model_key(inventory: LayerInventory, example_input: ModelInput) -> str:
        return f"v{FIT_VERSION}|{inventory.sha256[:16]}|x={inputs.signature_key(example_input)}"

    def whole_model_fit(
        self, inventory: LayerInventory, model: nn.Module | None, example_input: ModelInput | None
    ) -> dict[str, Any]:
        """The model's whole-model fit (see the module docstring), measured once per target.

        Keys: ``model_ms``/``layers_ms``/``remainder_ms`` of the uncompressed model; on
        ``ort`` also ``excess_ms``, each layer's kernel time inside the model over its entry.
        """
        key, hit = self._cached(self._entry["models"], inventory, example_input)
        if hit is not None:
            return hit
        if model is None or example_input is None or key is None:
            raise TargetError(
                f"the latency table has no whole-model measurement of this model on "
                f"{self.target.name}; pass the model and its example input to measure it once"
            )
        if self.frozen:
            raise TargetError(self._frozen_miss("the whole-model measurement of this model"))
        if self.progress:
            self.progress("whole model")
        entries = self.layers_ms(None, inventory, model, example_input)
        layers_ms = sum(entries.values())
        model_ms = self._measure_models([model], example_input)[0]
        fit: dict[str, Any] = {"model_ms": model_ms, "layers_ms": layers_ms,
                               "remainder_ms": model_ms - layers_ms}
        if self.target.runtime == "ort":
            # What each layer costs inside the model over its lone entry (see predict_breakdown).
            in_model = in_model_layer_ms(model, example_input, self.target, list(entries),
                                         runs=self.model_runs)
            fit["excess_ms"] = {f: in_model[f] - entries[f] for f in in_model}
        self._entry["models"][key] = fit
        self._dirty = True
        self.save()
        return fit

    def _cached(self, section: dict[str, Any], inventory: LayerInventory,
                example_input: ModelInput | None) -> tuple[str | None, Any]:
        """``(key, cached value or None)`` of this model in a per-model section of the table.

        Without ``example_input`` the key is unknown (None) and an entry of the same model
        at any input shape is taken.
        """
        if example_input is not None:
            key = self.model_key(inventory, example_input)
            return key, section.get(key)
        prefix = f"v{FIT_VERSION}|{inventory.sha256[:16]}"
        return None, next((v for k, v in section.items() if k.startswith(prefix)), None)

    def _measure_models(self, models: list[nn.Module], example_input: ModelInput) -> list[float]:
        """Each model's ``stable_ms`` on the target, timed in interleaved rounds."""
        with timing_lock():
            stats = measure_models_interleaved(models, example_input, self.target,
                                               runs=self.model_runs, blocks=MODEL_BLOCKS)
        self.model_measurements += len(models)
        return [st.stable_ms for st in stats]

    def forget_model_if_stale(
        self, inventory: LayerInventory, example_input: ModelInput, model_ms: float,
        tolerance: float = STALE_TOLERANCE,
    ) -> bool:
        """Drop the cached whole-model fit when a fresh measurement of the model disagrees.

        The fit is measured once and shared across runs; one taken while another job
        loaded the machine would skew every later prediction. A caller that has just
        measured the uncompressed model (the search does, once per study) passes that
        time; if it differs from the cached ``model_ms`` by more than ``tolerance``
        (relative), the machine was not in the state the table describes: the fit and
        this target's layer entries are forgotten and re-measured on next use (layers
        timed in the same noisy period would keep skewing predictions). Returns True then.
        """
        if self.frozen:  # measured on the target; this machine's time says nothing of it
            return False
        key = self.model_key(inventory, example_input)
        fit = self._entry["models"].get(key)
        if fit is None or model_ms <= 0:
            return False
        if abs(float(fit["model_ms"]) - model_ms) <= tolerance * model_ms:
            return False
        self._entry["models"].clear()
        self._entry["layers"].clear()
        self._forgotten = True
        self._dirty = True
        return True

    def predict_breakdown(
        self,
        policy: CompressionPolicy | None,
        inventory: LayerInventory,
        model: nn.Module | None = None,
        example_input: ModelInput | None = None,
    ) -> Prediction:
        """Predicted latency of ``policy`` with its per-layer parts and the remainder."""
        fit = self.whole_model_fit(inventory, model, example_input)
        # The shapes once: a prediction is on the search's hot path (filling makes ~26 each).
        shapes = self.runtime_shapes(policy, inventory, model, example_input)
        layers = self._shapes_ms(shapes, inventory)
        rem = fit["remainder_ms"]
        excess: dict[str, float] = fit.get("excess_ms") or {}
        if excess:  # a layer's excess inside the model goes as its weights do
            for s, ref in zip(shapes, self._reference_shapes(inventory), strict=True):
                if s.fqn in excess:
                    layers[s.fqn] += excess[s.fqn] * s.mac_units / max(ref.mac_units, 1)
            rem -= sum(excess.values())
        total = sum(layers.values())
        if shapes_change_structure(shapes, inventory):
            rem *= activation_share(shapes, inventory)
        # Guard: a noisy fit must never predict (near) zero; half the layers' sum bounds it.
        rem = max(rem, -0.5 * total)
        return Prediction(latency_ms=total + rem, layers_ms=layers, remainder_ms=rem)

    def predict(
        self,
        policy: CompressionPolicy | None,
        inventory: LayerInventory,
        model: nn.Module | None = None,
        example_input: ModelInput | None = None,
    ) -> float:
        """Predicted latency (ms) of the model ``policy`` makes, on this LUT's target.

        ``model`` and ``example_input`` are needed once per model and target, to
        measure the whole-model remainder; later calls (even in other processes
        sharing the file) can leave them out.
        """
        return self.predict_breakdown(policy, inventory, model, example_input).latency_ms

    def costs(
        self,
        policy: CompressionPolicy | None,
        inventory: LayerInventory,
        model: nn.Module | None = None,
        example_input: ModelInput | None = None,
    ) -> Costs:
        """Analytic costs of ``policy`` with ``latency_ms`` predicted by this table."""
        return analytic_costs(policy, inventory).with_latency(
            self.predict(policy, inventory, model, example_input)
        )

    def baseline_costs(
        self,
        inventory: LayerInventory,
        model: nn.Module | None = None,
        example_input: ModelInput | None = None,
    ) -> Costs:
        """The uncompressed model's costs with its *measured* latency (what ``0.5x`` refers to).

        By construction the table predicts exactly this latency for the empty policy.
        """
        fit = self.whole_model_fit(inventory, model, example_input)
        return analytic_costs(None, inventory).with_latency(fit["model_ms"])


def activation_share(shapes: list[LayerShape], inventory: LayerInventory) -> float:
    """The activations ``shapes`` write per sample over those of the uncompressed layers.

    >>> import torch
    >>> from autocompress.inventory import build_inventory
    >>> from autocompress.models import DigitsMLP
    >>> from autocompress.policy import LayerPolicy
    >>> inv = build_inventory(DigitsMLP(), torch.zeros(1, 1, 8, 8))
    >>> half = CompressionPolicy(layers={"net.1": LayerPolicy(prune=0.5)})  # 512 of 1034 units
    >>> round(activation_share(compressed_shapes(half, inv), inv), 3)
    0.752
    >>> activation_share(compressed_shapes(CompressionPolicy(layers={"net.1": LayerPolicy(
    ...     act_bits=8)}), inv), inv)  # a faster layer writes what it wrote
    1.0
    """
    def per_sample(shape: tuple[int, ...]) -> int:
        return math.prod(int(d) for d in shape[1:])

    base = sum(per_sample(info.output_shape) for info in inventory)
    return sum(per_sample(s.output_shape) for s in shapes) / base if base else 1.0


def changes_structure(policy: CompressionPolicy | None, inventory: LayerInventory) -> bool:
    """True when ``policy`` changes the runtime graph: channels, a factorisation or 8-bit inputs.

    Weight bits and sparsity alone are baked into float weights: the graph stays the same.
    """
    return policy is not None and shapes_change_structure(compressed_shapes(policy, inventory),
                                                          inventory)


def shapes_change_structure(shapes: list[LayerShape], inventory: LayerInventory) -> bool:
    """:func:`changes_structure` of a policy's ``compressed_shapes``."""
    return any(s.in_channels != info.in_channels or s.out_channels != info.out_channels
               or s.rank is not None or s.act_bits == 8
               for info, s in zip(inventory, shapes, strict=True))


def activation_fraction(policy: CompressionPolicy | None, inventory: LayerInventory) -> float:
    """Output activations of all layers under ``policy`` over those of the uncompressed model."""
    shapes = compressed_shapes(policy or CompressionPolicy(layers={}), inventory)
    base = new = 0
    for info, s in zip(inventory, shapes, strict=True):
        per_channel = info.output_positions
        base += info.out_channels * per_channel
        new += s.out_channels * per_channel
    return new / base if base else 1.0


def macs_model_ms(
    policy: CompressionPolicy | None, inventory: LayerInventory, baseline_ms: float
) -> float:
    """The MACs-proportional latency model: ``baseline_ms * macs(policy) / macs(uncompressed)``."""
    base = analytic_costs(None, inventory, include_layers=False).macs
    return baseline_ms * analytic_costs(policy, inventory, include_layers=False).macs / max(base, 1)


