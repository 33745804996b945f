"""Layer probes: one knob on one layer, measured inside the model against the table's entries.

The latency table times each layer alone; a policy's prediction scales the
uncompressed model's time by its layers' sum (:mod:`autocompress.cost.lut`). Where
random policies come out wrong (the fidelity benchmark's digits rows ran 6-9% slow
on ratios, up to +60% on single MLP policies with 8-bit inputs or low rank), this
says which layer and knob the error comes from: each probe is the uncompressed
model with a single change, built and timed next to the uncompressed model in
alternating blocks, so its measured ratio is that one change's effect in context.

Columns: ``measured`` ratio; ``proportional`` = the table's prediction (model time
x layers' sum / uncompressed layers' sum); ``additive`` = the uncompressed model's
time plus the change of that layer's entry (what the ratio would be if a lone
layer's time difference carried over to the model unchanged); ``entry_ratio`` =
the changed layer's entry over its uncompressed entry, ``in_context_ratio`` = what
that layer's in-model time must have been, relative, for the model to measure what
it did (the model's other parts held at their uncompressed times, so the layer's
uncompressed in-model time is its entry's share of the model time).

    .venv/bin/python benchmarks/layer_probes.py                 # digits, digits-mlp on ort-1t
    .venv/bin/python benchmarks/layer_probes.py --tasks digits-mlp --knobs rank act_bits

With ``--context`` it times each layer *inside* the uncompressed model instead, at the
default target (``ort``, the task's batch): the model is run under ONNX Runtime's
profiler, and each layer's kernel (with what ONNX Runtime fused into it: an activation,
a residual add) is set beside its table entry, the same layer timed alone. The rest of the
model's time is split into the kernels between layers (pooling, adds, attention's score
products, reorders) and what no kernel accounts for (plain run minus profiled kernels).
These rows are kept beside the probes in the same files.

    .venv/bin/python benchmarks/layer_probes.py --context --tasks digits torchvision:resnet18

Writes ``benchmarks/results/layer_probes.md`` and ``.json``; 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from report_files import write_result

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TASKS = ["digits", "digits-mlp"]
KNOBS = ["prune", "rank", "act_bits"]
TARGET = "ort-1t"
RUNS, BLOCKS = 60, 10


def probe_policies(inventory: Any, knobs: list[str]) -> list[tuple[str, str, Any]]:
    """``(layer, change, policy)`` for each layer and knob that applies to it."""
    from autocompress.policy import CompressionPolicy, LayerPolicy

    out = []
    for info in inventory:
        for knob in knobs:
            if knob == "prune" and info.prunable:
                changes = [("prune 0.5", LayerPolicy(prune=0.5))]
            elif knob == "rank" and info.max_rank > 1 and info.groups == 1:
                changes = [(f"rank {r}", LayerPolicy(rank=r)) for r in
                           sorted({max(1, info.max_rank // 8), max(1, info.max_rank // 4)})]
            elif knob == "act_bits":
                changes = [("act_bits 8", LayerPolicy(act_bits=8))]
            else:
                changes = []
            out += [(info.fqn, label, CompressionPolicy(layers={info.fqn: lp}))
                    for label, lp in changes]
            consumers = inventory.consumers(info.fqn)
            if knob == "act_bits" and consumers:
                # With its consumers at 8-bit inputs too, ONNX Runtime may fuse the layer into
                # an integer kernel (autocompress.cost.lut.with_int8_fusion).
                out.append((info.fqn, "act_bits 8 + consumers", CompressionPolicy(layers={
                    f: LayerPolicy(act_bits=8) for f in [info.fqn, *consumers]})))
    return out


def probe_task(task_name: str, knobs: list[str], lut_path: Path | None) -> list[dict[str, Any]]:
    from autocompress.cost import parse_target
    from autocompress.cost.latency import measure_models_interleaved
    from autocompress.cost.lut import LatencyLUT
    from autocompress.cost.lut_store import default_lut_path
    from autocompress.inventory import build_inventory
    from autocompress.methods import apply_policy
    from autocompress.tasks import load_task

    task = load_task(task_name)
    inv = build_inventory(task.model, task.example_input)
    target = parse_target(TARGET).with_batch(task.target_batch_size)
    lut = LatencyLUT(lut_path or default_lut_path(), target)
    fit = lut.whole_model_fit(inv, task.model, task.example_input)
    base_layers = lut.layers_ms(None, inv, task.model, task.example_input)
    base_sum = sum(base_layers.values())
    rows = []
    for fqn, change, policy in probe_policies(inv, knobs):
        layers = lut.layers_ms(policy, inv, task.model, task.example_input)
        model = apply_policy(task.model, policy, task.example_input, inventory=inv)
        mine, ref = measure_models_interleaved([model, task.model], task.example_input, target,
                                               runs=RUNS, blocks=BLOCKS)
        measured = mine.stable_ms / ref.stable_ms
        model_ms = float(fit["model_ms"])
        delta = sum(layers.values()) - base_sum
        share = base_layers[fqn] / base_sum * model_ms  # the layer's in-model ms, by its share
        # Every layer a change touches (pruning shrinks the next layer's input too).
        touched = [k for k in layers if abs(layers[k] - base_layers[k]) > 1e-12]
        rows.append({
            "task": task_name, "layer": fqn, "change": change, "touched": " ".join(touched),
            "measured": measured,
            "proportional": float(lut.predict(policy, inv, task.model, task.example_input))
            / model_ms,
            "additive": (model_ms + delta) / model_ms,
            "entry_ratio": layers[fqn] / base_layers[fqn],
            "in_context_ratio": (share + (measured - 1.0) * model_ms) / share
            if len(touched) == 1 else float("nan"),
            "layer_share": base_layers[fqn] / base_sum,
        })
        print(f"{task_name} {fqn} {change}: measured {measured:.3f} predicted "
              f"{rows[-1]['proportional']:.3f}", file=sys.stderr)
    lut.save()
    return rows


def context_task(task_name: str, lut_path: Path | None, rounds: int = 10) -> dict[str, Any]:
    """Each layer's kernel ms inside the uncompressed model against its table entry."""
    import os
    import tempfile

    import numpy as np

    from autocompress import inputs
    from autocompress.cost import parse_target
    from autocompress.cost.latency import layer_kernels, node_kernel_ms, profiled_session
    from autocompress.cost.lut import LatencyLUT
    from autocompress.cost.lut_store import default_lut_path
    from autocompress.cost.timing import timing_lock
    from autocompress.inventory import build_inventory
    from autocompress.runtime.onnx import export_onnx, ort_session
    from autocompress.tasks import load_task

    task = load_task(task_name)
    inv = build_inventory(task.model, task.example_input)
    target = parse_target("ort").with_batch(task.target_batch_size)
    lut = LatencyLUT(lut_path or default_lut_path(), target)
    fit = lut.whole_model_fit(inv, task.model, task.example_input)
    entries = lut.layers_ms(None, inv, task.model, task.example_input)
    x = inputs.batched(task.example_input, target.require_batch())
    with tempfile.TemporaryDirectory() as tmp, timing_lock():
        plain = ort_session(export_onnx(task.model.eval(), inputs.take(x, 1)), target.threads)
        profiled, graph = profiled_session(task.model, x, target.threads,
                                           os.path.join(tmp, "profile"))
        feed = inputs.ort_feed(plain, x)
        runs = max(10, int(2500 / max(float(fit["model_ms"]), 0.05) / rounds))
        warm = 5
        for _ in range(warm):
            plain.run(None, feed)
            profiled.run(None, feed)
        plain_ms = []
        for _ in range(rounds):  # plain and profiled runs alternate, so drift moves both
            for _ in range(runs):
                t = time.perf_counter()
                plain.run(None, feed)
                plain_ms.append((time.perf_counter() - t) * 1e3)
            for _ in range(runs):
                profiled.run(None, feed)
        with open(profiled.end_profiling()) as fh:
            events = json.load(fh)
    kernel = node_kernel_ms(events, skip=warm)
    nodes = layer_kernels(graph, list(entries))
    layers = [{"task": task_name, "layer": f, "entry_ms": entries[f],
               "in_model_ms": kernel.get(nodes.get(f, ""), float("nan"))} for f in entries]
    in_layers = sum(kernel.get(n, 0.0) for n in nodes.values())
    plain_med = float(np.median(plain_ms))
    return {"task": task_name, "target": target.name, "plain_ms": plain_med,
            "entries_ms": sum(entries.values()), "layer_kernels_ms": in_layers,
            "between_kernels_ms": sum(kernel.values()) - in_layers,
            "unaccounted_ms": plain_med - sum(kernel.values()), "layers": layers}


def render_context(result: dict[str, Any]) -> list[str]:
    """The ``--context`` tables: per model, then the layers whose time moved most in context."""
    models = result["context"]
    summary = pd.DataFrame([{k: v for k, v in m.items() if k != "layers"} for m in models])
    summary["in_context_excess_%"] = 100 * (summary["layer_kernels_ms"] / summary["entries_ms"]
                                            - 1)
    layers = pd.DataFrame([r for m in models for r in m["layers"]])
    layers["excess_%"] = 100 * (layers["in_model_ms"] / layers["entry_ms"] - 1)
    top = (layers.assign(excess_ms=layers["in_model_ms"] - layers["entry_ms"])
           .sort_values(["task", "excess_ms"], ascending=[True, False]).groupby("task").head(6))
    return [
        "## Layers in context (`--context`)", "",
        f"Measured {result['context_date']} on {result['context_cpu']}. "
        "The uncompressed model at the default target, run plain and under ONNX Runtime's "
        "profiler in alternating rounds. `entries_ms`: the table's layers, each timed alone; "
        "`layer_kernels_ms`: the same layers' kernels inside the model; `between_kernels_ms`: "
        "the other kernels; `unaccounted_ms`: the plain run minus every profiled kernel.", "",
        summary.to_markdown(index=False, floatfmt=".3f"), "",
        "The six layers per model that cost the most over their entry inside the model:", "",
        top.to_markdown(index=False, floatfmt=".3f"), "",
    ]


def render(result: dict[str, Any]) -> str:
    df = pd.DataFrame(result["rows"])
    df["error_%"] = 100 * (df["proportional"] / df["measured"] - 1)
    df["additive_error_%"] = 100 * (df["additive"] / df["measured"] - 1)
    return "\n".join([
        "# Layer probes (generated by benchmarks/layer_probes.py)", "",
        f"Measured {result['date']}, target {TARGET}, {RUNS} runs in {BLOCKS} blocks per "
        f"model alternating with the uncompressed model; {result['wall_s']:.0f} s in all.", "",
        "Ratios to the uncompressed model. `error_%` = the table's (proportional) prediction "
        "over measured; `additive_error_%` = the same for the additive rule. "
        "`in_context_ratio` = the changed layer's in-model time relative to its uncompressed "
        "time, inferred from the measurement (only where the change touches one layer's "
        "entry).", "",
        df.to_markdown(index=False, floatfmt=".3f"), "",
        *(render_context(result) if result.get("context") else []),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--knobs", nargs="+", default=KNOBS, choices=KNOBS)
    p.add_argument("--lut", type=Path, default=None, help="latency table (default: the cache)")
    p.add_argument("--out", type=Path, default=RESULTS / "layer_probes")
    p.add_argument("--context", action="store_true",
                   help="time each layer inside the uncompressed model (kept beside the probes)")
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    json_path = a.out.with_suffix(".json")
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if a.context:
        models = [context_task(task, a.lut) for task in a.tasks]
        kept = [m for m in old.get("context", []) if m["task"] not in a.tasks]
        from autocompress.cost.latency import cpu_description

        result = {**old, "context": kept + models,
                  "context_date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "context_cpu": cpu_description()["cpu"]}
    else:
        rows = [r for task in a.tasks for r in probe_task(task, a.knobs, a.lut)]
        result = {**old, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "target": TARGET, "wall_s": time.perf_counter() - t0, "rows": rows}
    print(write_result(a.out, result, render))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
