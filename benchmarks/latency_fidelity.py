"""Latency-model fidelity: how well the per-layer table and the MACs model predict measured latency.

For each task and target: a fresh latency table is built (timed), N seeded
random policies are predicted with both models, built with ``apply_policy``
and measured; Kendall tau, MAPE and the share within +-10% are reported.

    .venv/bin/python benchmarks/latency_fidelity.py            # digits, resnet18, mobilenet_v2
    .venv/bin/python benchmarks/latency_fidelity.py --n 10 --tasks digits --targets ort
    .venv/bin/python benchmarks/latency_fidelity.py --rescore --out benchmarks/results/NAME
    .venv/bin/python benchmarks/latency_fidelity.py --retest --targets ort   # test-retest too
    .venv/bin/python benchmarks/latency_fidelity.py --rescore-runs results/a results/b  # searches

Writes ``benchmarks/results/latency_fidelity.md`` and ``.json``. Run it on a quiet
machine: the load average at the start and the end of each row is recorded, and
other processes' load shows up directly as measurement noise. With the
defaults it runs about 20-30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

TASKS = ["digits", "torchvision:resnet18", "torchvision:mobilenet_v2"]
TARGETS = ["ort", "torch"]


def run_one(task_name: str, target_text: str, n: int, seed: int, lut_dir: Path,
            sampler: str = "random", retest: bool = False, runs: int = 30) -> dict[str, Any]:
    from autocompress.cost import LatencyLUT, latency, parse_target
    from autocompress.cost.fidelity import validate
    from autocompress.cost.sampling import space_policies
    from autocompress.inventory import build_inventory
    from autocompress.space import default_space
    from autocompress.tasks import load_task

    gate = latency.QUIET
    waited0, gave_up0 = gate.waited_s, gate.gave_up
    task = load_task(task_name)
    inventory = build_inventory(task.model, task.example_input)
    target = parse_target(target_text).with_batch(task.target_batch_size)
    load_start = os.getloadavg()
    lut = LatencyLUT(lut_dir / f"{task_name.replace(':', '_')}-{target.name}.json", target)
    t0 = time.perf_counter()
    lut.whole_model_fit(inventory, task.model, task.example_input)  # full-size layers + the model
    base_build_s = time.perf_counter() - t0
    base_entries = lut.measured

    def progress(i: int, total: int) -> None:
        print(f"\r  {task_name} {target.name}: {i}/{total} policies", end="", file=sys.stderr)

    policies = None
    if sampler == "space":  # what a search visits: the task's default space, levels at random
        policies = space_policies(default_space(task_name).resolve(inventory), n, seed=seed)
    report = validate(task.model, task.example_input, inventory, lut, n, seed=seed,
                      progress=progress, policies=policies, retest=retest, runs=runs)
    print(file=sys.stderr)
    fit = lut.whole_model_fit(inventory, None, task.example_input)
    return {
        "task": task_name,
        "target": target.name,
        "fingerprint": lut.key,
        "layers": len(inventory),
        "policies": n,
        "sampler": sampler,
        "runs": runs,
        "lut": report.lut,
        "macs": report.macs,
        "lut_relative": report.lut_relative,
        "macs_relative": report.macs_relative,
        "retest": report.retest,
        "retest_relative": report.retest_relative,
        "baseline_ms": report.baseline_ms,
        "remainder": fit,
        "lut_base_build_s": base_build_s,
        "lut_base_entries": base_entries,
        "lut_total_measure_s": lut.measure_seconds,
        "lut_total_entries": lut.measured,
        "lut_s_per_entry": lut.measure_seconds / max(lut.measured, 1),
        "row_wall_s": report.validate_s + base_build_s,
        "load_start": list(load_start),
        "load_end": list(os.getloadavg()),
        "quiet_wait_s": gate.waited_s - waited0,
        "quiet_gave_up": gate.gave_up - gave_up0,
        "rows": report.rows,
    }


def diagnostics(r: dict[str, Any]) -> dict[str, float]:
    """What limits a row: measurement noise, and the best any calibration of the table could do.

    ``noise``: mean (p90 - p10 spread) / median of the policies' own measurements, in
    percent. ``ceiling``: the scores of the best affine map ``a * sum(layers) + b`` fitted
    to the measurements themselves (in hindsight): no calibration of these per-layer
    entries can beat it, so a gap between LUT and ceiling is the calibration's fault, a
    low ceiling the entries' (or the machine's).
    """
    import numpy as np

    from autocompress.cost.fidelity import scores

    rows = r["rows"]
    measured = np.array([x["measured_ms"] for x in rows])
    layers = np.array([x["lut_layers_ms"] for x in rows])
    design = np.c_[layers, np.ones_like(layers)]
    coef = np.linalg.lstsq(design, measured, rcond=None)[0]
    best = scores(list(design @ coef), list(measured))
    noise = np.mean([x["measured_spread_ms"] / x["measured_median_ms"] for x in rows]) * 100
    return {"noise_pct": float(noise), "ceiling_tau": best["kendall_tau"],
            "ceiling_within_10pct": best["within_10pct"]}


def score_cells(lut: dict[str, float], macs: dict[str, float]) -> str:
    """The table cells ``LUT tau | MAPE | within 10% | MACs tau | MAPE | within 10% | beats``."""
    beats = lut["mape"] < macs["mape"] and lut["kendall_tau"] >= macs["kendall_tau"]
    return (f"{lut['kendall_tau']:.3f} | {lut['mape']:.1f} | {lut['within_10pct']:.0f} "
            f"| {macs['kendall_tau']:.3f} | {macs['mape']:.1f} | {macs['within_10pct']:.0f} "
            f"| {'yes' if beats else 'no'}")


def _row_key(r: dict[str, Any]) -> tuple[str, str, str]:
    return r["task"], r["target"], r.get("cpu", "")


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cpus = {r["cpu"] for r in results if "cpu" in r}
    # Rows from several CPUs name theirs: one target name is another machine on each.
    if len(cpus) > 1:
        results = sorted(results, key=lambda r: r.get("cpu", ""))

    def key(r: dict[str, Any]) -> str:
        cpu = f" | {r.get('cpu', meta['cpu'])}" if len(cpus) > 1 else ""
        return f"| {r['task']} | {r['target']}{cpu} "

    key_header = "| task | target " + ("| cpu " if len(cpus) > 1 else "")
    key_rule = "|---|---|" + ("---|" if len(cpus) > 1 else "")
    lines = [
        "# Latency-model fidelity",
        "",
        f"Measured {meta['date']} on {' and '.join(sorted(cpus)) or meta['cpu']} "
        f"({meta['cores']} cores), torch {meta['torch']}, "
        f"onnxruntime {meta['onnxruntime']}; {meta['policies']} seeded random policies per row "
        f"(seed {meta['seed']}; "
        + ("levels of each task's default search space, as a random search draws them"
           if meta.get("sampler") == "space" else "every knob on random layers")
        + f"); total wall time {meta['wall_s'] / 60:.1f} min.",
        "",
        f"Measured latency = smallest of 10 block medians of {meta.get('runs', 30) // 10} runs each "
        "(`LatencyStats.stable_ms`).",
        "LUT = per-layer table + fitted remainder; MACs = baseline latency x MACs / baseline MACs.",
        "tau = Kendall tau; MAPE and within +-10% in percent. Load = 1-minute load average at",
        "start/end of the row (2 cores: anything near or above 1 means another process competed).",
        "",
        key_header + "| baseline ms | LUT tau | LUT MAPE | LUT within 10% | MACs tau | MACs MAPE "
        "| MACs within 10% | LUT beats MACs | ceiling tau / within 10% | noise % "
        "| LUT build (base) | LUT entries / s | load |",
        key_rule + "---:|---:|---:|---:|---:|---:|---:|:-:|---:|---:|---:|---:|---|",
    ]
    dates = sorted({r["date"] for r in results if "date" in r})
    if len(dates) > 1:
        lines[2] += f" Rows measured at {', '.join(dates)} (merged runs)."
    for r in results:
        diag = diagnostics(r)
        lines.append(
            key(r) + f"| {r['baseline_ms']:.3f} "
            f"| {score_cells(r['lut'], r['macs'])} "
            f"| {diag['ceiling_tau']:.3f} / {diag['ceiling_within_10pct']:.0f} "
            f"| {diag['noise_pct']:.1f} "
            f"| {r['lut_base_build_s']:.0f} s ({r['lut_base_entries']} entries) "
            f"| {r['lut_total_entries']} / {r['lut_total_measure_s']:.0f} s "
            f"| {r['load_start'][0]:.1f} -> {r['load_end'][0]:.1f} |"
        )
    relative = [r for r in results if r.get("lut_relative")]
    if relative:
        lines += [
            "",
            "**Relative to the uncompressed model** (what `latency<=0.5x` compares): each policy's",
            "model is timed in 10 blocks alternating with the uncompressed model's; measured = the",
            "ratio of each side's smallest block median, as the search judges a candidate (rows",
            "dated before 2026-12-07: the median block ratio); predicted = prediction / the model's",
            "prediction of the uncompressed",
            "model. Both sides of a ratio are timed seconds apart, so the machine's speed drifting",
            "over minutes cancels out; the table's entries still carry it.",
            "",
            key_header + "| LUT tau | LUT MAPE | LUT within 10% | MACs tau | MACs MAPE "
            "| MACs within 10% | LUT beats MACs |",
            key_rule + "---:|---:|---:|---:|---:|---:|:-:|",
        ]
        for r in relative:
            lines.append(key(r) + f"| {score_cells(r['lut_relative'], r['macs_relative'])} |")
    retested = [r for r in results if r.get("retest")]
    if retested:
        lines += [
            "",
            "**Test-retest** (`--retest`): every policy built and measured again after the first",
            "pass, the second measurement scored against the first as if it were a prediction.",
            "No latency model can agree with a measurement better than the measurement agrees",
            "with itself: a row whose retest misses tau 0.9 or 90% within 10% cannot meet those",
            "targets on this machine, whatever the model.",
            "",
            key_header + "| ms: tau | MAPE | within 10% | ratio: tau | MAPE | within 10% "
            "| LUT ratio: tau | within 10% |",
            key_rule + "---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in retested:
            a, b, lut = r["retest"], r["retest_relative"], r["lut_relative"]
            lines.append(
                key(r) + f"| {a['kendall_tau']:.3f} | {a['mape']:.1f} "
                f"| {a['within_10pct']:.0f} | {b['kendall_tau']:.3f} | {b['mape']:.1f} "
                f"| {b['within_10pct']:.0f} | {lut['kendall_tau']:.3f} "
                f"| {lut['within_10pct']:.0f} |")
    lines += [
        "",
        f"Quiet gate: before each timed block, up to {meta['quiet_wait_s']:.0f} s of waiting for",
        f"other processes to use < 0.3 cores (at most {meta['quiet_budget_s']:.0f} s per row); "
        "per row: "
        + ", ".join(f"{r['task']}/{r['target']} waited {r['quiet_wait_s']:.0f} s, gave up "
                    f"{r['quiet_gave_up']}x" for r in results) + ".",
        "",
        "LUT build (base): the full-size layers and one whole-model measurement of the",
        "uncompressed model (its remainder). LUT entries / s: every layer config measured for",
        "the row (base + the random policies' configs) and the time spent measuring.",
        "",
        "Ceiling: the scores of the best affine map `a * sum(layers) + b` fitted, in hindsight,",
        "to the row's own measurements: no calibration of these per-layer entries does better,",
        "so LUT close to ceiling means the calibration works and the remaining error is in the",
        "entries or the machine. Noise: mean (p90 - p10) / median of each policy's measurement.",
        "",
    ]
    return "\n".join(lines)


def rescore(saved: dict[str, Any]) -> str:
    """Markdown: the saved rows scored again under each rule for graph-changing policies.

    Needs no new measurement: each row holds its measured latency and speed ratio, the
    table's layer sum for the policy, and the table's whole-model fit. ``activations``
    (the table's rule) is ``layers + remainder * activation_share``; ``proportional`` (the
    rule before it) is ``model_ms * layers / layers_ms``; policies that leave the graph as
    it is get the uncompressed model's time.
    """
    from autocompress.cost.analytic import compressed_shapes
    from autocompress.cost.fidelity import scores
    from autocompress.cost.lut import activation_share, changes_structure
    from autocompress.inventory import build_inventory
    from autocompress.policy import CompressionPolicy, LayerPolicy
    from autocompress.tasks import load_task

    lines = ["| task | target | rule | tau | MAPE | within 10% | relative: tau | MAPE | within 10% |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    inventories: dict[str, Any] = {}
    for r in saved["results"]:
        if r["task"] not in inventories:
            task = load_task(r["task"])
            inventories[r["task"]] = build_inventory(task.model, task.example_input)
        inv, fit = inventories[r["task"]], r["remainder"]
        m1, l1 = fit["model_ms"], fit["layers_ms"]
        for name in ("activations", "proportional"):
            pred = []
            for x in r["rows"]:
                policy = CompressionPolicy(layers={k: LayerPolicy(**v)
                                                   for k, v in x["layers"].items()})
                lay = x["lut_layers_ms"]
                if not changes_structure(policy, inv):
                    pred.append(m1)
                    continue
                if name == "proportional":
                    rest = (m1 / l1 - 1.0) * lay
                else:
                    rest = (m1 - l1) * activation_share(compressed_shapes(policy, inv), inv)
                pred.append(lay + max(rest, -0.5 * lay))
            ms_s = scores(pred, [x["measured_ms"] for x in r["rows"]])
            rel = scores([p / m1 for p in pred], [x["measured_ratio"] for x in r["rows"]])
            lines.append(f"| {r['task']} | {r['target']} | {name} | {ms_s['kendall_tau']:.3f} "
                         f"| {ms_s['mape']:.1f} | {ms_s['within_10pct']:.0f} "
                         f"| {rel['kendall_tau']:.3f} | {rel['mape']:.1f} "
                         f"| {rel['within_10pct']:.0f} |")
    return "\n".join(lines) + "\n"


def rescore_runs(runs: list[Path]) -> str:
    """Markdown: each rule scored on the candidates searches timed on their target.

    A search run (``autocompress search --out RUN``) keeps every timed candidate's policy
    and measured speed ratio in its study, and its latency table in ``RUN/latency_lut.json``;
    each policy is predicted again from that table (frozen: nothing is timed) under both
    rules. Runs of one task and target are pooled.
    """
    import optuna
    import yaml

    from autocompress.cost import LatencyLUT, parse_target
    from autocompress.cost.fidelity import scores
    from autocompress.cost.lut import activation_share, shapes_change_structure
    from autocompress.engine.storage import storage_for
    from autocompress.inventory import build_inventory
    from autocompress.policy import CompressionPolicy
    from autocompress.tasks import load_task

    pooled: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
        task = load_task(cfg["task"], data_dir=cfg.get("data_dir"))
        inv = build_inventory(task.model, task.example_input)
        lut = LatencyLUT(run / "latency_lut.json", parse_target(cfg["target"]), frozen=True)
        fit = lut.whole_model_fit(inv, task.model, task.example_input)
        m1, l1 = fit["model_ms"], fit["layers_ms"]
        study = optuna.load_study(study_name=cfg["study_name"],
                                  storage=storage_for(run, cfg.get("storage")))
        cell = pooled.setdefault((cfg["task"], cfg["target"]),
                                 {"measured": [], "activations": [], "proportional": []})
        for t in study.trials:
            a = t.user_attrs
            if a.get("latency_basis") != "measured" or not a.get("measured_ratio"):
                continue
            policy = CompressionPolicy.model_validate(a["policy"])
            shapes = lut.runtime_shapes(policy, inv)
            lay = sum(lut._shapes_ms(shapes, inv).values())
            changed = shapes_change_structure(shapes, inv)
            for name, rest in (("proportional", (m1 / l1 - 1.0) * lay),
                               ("activations", (m1 - l1) * activation_share(shapes, inv))):
                cell[name].append((lay + max(rest, -0.5 * lay) if changed else m1) / m1)
            cell["measured"].append(float(a["measured_ratio"]))
    lines = ["| task | target | timed candidates | rule | tau | MAPE | within 10% |",
             "|---|---|---:|---|---:|---:|---:|"]
    for (task_name, target), cell in pooled.items():
        for name in ("activations", "proportional"):
            s = scores(cell[name], cell["measured"])
            lines.append(f"| {task_name} | {target} | {len(cell['measured'])} | {name} "
                         f"| {s['kendall_tau']:.3f} | {s['mape']:.1f} | {s['within_10pct']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--n", type=int, default=30, help="random policies per task and target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", choices=["random", "space"], default="random",
                        help="random: every knob of every layer (cost.sampling.random_policies); "
                        "space: levels of the task's default search space, as a random search "
                        "draws them")
    parser.add_argument("--out", type=Path, default=RESULTS / "latency_fidelity")
    parser.add_argument("--quiet-wait", type=float, default=0.5,
                        help="wait up to this many seconds before each timed block for other "
                        "processes to use < 0.3 cores (0: off)")
    parser.add_argument("--quiet-budget", type=float, default=30.0,
                        help="total seconds of such waiting per task and target")
    parser.add_argument("--retest", action="store_true",
                        help="measure every policy a second time and score the two passes "
                        "against each other (what the machine allows; doubles the time)")
    parser.add_argument("--runs", type=int, default=30,
                        help="timed runs of each policy's model and of its reference, split "
                        "into 10 alternating blocks")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --out's JSON for other tasks and targets (each "
                        "row carries the date it was measured)")
    parser.add_argument("--table", action="store_true",
                        help="only re-render the markdown from the JSON of --out")
    parser.add_argument("--rescore", action="store_true",
                        help="score the saved rows of --out again under each prediction rule "
                        "(no measurement); writes <out>_rescore.md")
    parser.add_argument("--rescore-runs", nargs="+", type=Path, metavar="RUN",
                        help="score each rule on the candidates these search runs timed on "
                        "their target (their own tables, nothing timed); prints markdown")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.rescore_runs:
        print(rescore_runs(args.rescore_runs))
        return 0
    if args.rescore:
        text = rescore(json.loads(args.out.with_suffix(".json").read_text()))
        args.out.with_name(args.out.name + "_rescore.md").write_text(text)
        print(text)
        return 0
    if args.table:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        args.out.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        print(markdown(saved["results"], saved["meta"]))
        return 0

    from autocompress.cost import latency

    latency.QUIET.max_wait_s = args.quiet_wait
    budget_per_row = args.quiet_budget

    import onnxruntime
    import torch

    from autocompress.cost.latency import cpu_description

    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:  # fresh tables: build times are honest
        for task in args.tasks:
            for target in args.targets:
                latency.QUIET.budget_s = latency.QUIET.waited_s + budget_per_row
                results.append(run_one(task, target, args.n, args.seed, Path(tmp),
                                       sampler=args.sampler, retest=args.retest,
                                       runs=args.runs))
                r = results[-1]
                r["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                print(f"{task} {r['target']}: LUT {r['lut']} MACs {r['macs']} "
                      f"base build {r['lut_base_build_s']:.0f}s", file=sys.stderr)
    cpu = cpu_description()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu["cpu"], "cores": cpu["cores"], "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
        "policies": args.n, "seed": args.seed, "wall_s": time.perf_counter() - t0,
        "sampler": args.sampler, "runs": args.runs,
        "quiet_wait_s": args.quiet_wait, "quiet_budget_s": args.quiet_budget,
    }
    results = [{"cpu": cpu["cpu"], **r} for r in results]
    saved_json = args.out.with_suffix(".json")
    if args.merge and saved_json.is_file():
        saved = json.loads(saved_json.read_text())
        # The default target resolves per machine (`ort` is `ort-cpu-1t` on 2 cores), so a
        # row measured on another CPU is kept beside this one's, not replaced.
        new = {_row_key(r) for r in results}
        kept = [{"date": saved["meta"]["date"], "cpu": saved["meta"]["cpu"], **r}
                for r in saved["results"]
                if _row_key({"cpu": saved["meta"]["cpu"], **r}) not in new]
        results = kept + results
        meta["wall_s"] += float(saved["meta"].get("wall_s", 0.0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results},
                                                        indent=1))
    args.out.with_suffix(".md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
