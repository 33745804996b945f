"""``autocompress profile``: per-layer costs and measured latency; ``--validate`` scores the LUT."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autocompress.cli.app import TASK_HELP, OutputFormat, app, console, err_console
from autocompress.cli.common import check_out_file, task_and_inventory
from autocompress.cost.latency import measure_latency
from autocompress.cost.lut import LatencyLUT
from autocompress.cost.lut_store import default_lut_path
from autocompress.cost.target import parse_target
from autocompress.cost.timing import MODEL_BLOCKS
from autocompress.errors import ConfigError

TARGET_HELP = 'runtime[-cpu][-<N>t][-b<B>]: "ort", "torch", "ort-cpu-2t-b64"'


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, transient=True,
    )


@app.command()
def profile(
    task: str = typer.Option("digits", "--task", "-t", help=TASK_HELP),
    target: str = typer.Option("ort", "--target", help=TARGET_HELP),
    validate: int = typer.Option(
        0, "--validate", min=0, help="sample N random policies; predict and measure each"
    ),
    format: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
    lut_path: str = typer.Option(
        None, "--lut", help=f"latency table file (default: $AUTOCOMPRESS_CACHE/{default_lut_path().name})"
    ),
    out: str = typer.Option(
        None, "--out", "-o", help="write a table for searches on other machines to this file "
        "(`search --lut FILE`): every layer shape of --space is measured here, on the target"),
    space: str = typer.Option(
        None, "--space", help="search space whose every layer shape is measured (with --out: "
        "default the task's own space)"),
    batch: int = typer.Option(None, "--batch", min=1, help="batch size (default: the task's)"),
    threads: int = typer.Option(None, "--threads", min=1, help="intra-op threads"),
    seed: int = typer.Option(0, "--seed", help="seed of the random policies"),
    runs: int = typer.Option(30, "--runs", min=5, help="timed runs per whole-model measurement"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder (CIFAR tasks)"),
    checkpoint: str = typer.Option(None, "--checkpoint", help="state dict to load"),
) -> None:
    """Per-layer MACs, params and measured latency on a target; with --validate N, how well
    the latency table and the MACs model predict N measured random policies."""
    # Parse the target (and the space) before loading anything, so a typo fails in milliseconds.
    tgt = parse_target(target, threads=threads, batch=batch)
    if out and lut_path:
        raise ConfigError(f"--out {out!r} and --lut {lut_path!r} both name the table file; "
                          "give one (--out for a table to search with on other machines)")
    if out:
        check_out_file(out)
    from autocompress.space import SearchSpace, default_space

    spec = SearchSpace.load(space) if space else None
    task_obj, inventory = task_and_inventory(task, data_dir, checkpoint)
    tgt = tgt.with_batch(task_obj.target_batch_size)
    path = Path(out or lut_path) if (out or lut_path) else default_lut_path()
    if out and spec is None:
        spec = default_space(task_obj.name, inventory)

    with _progress() as bar:
        job = bar.add_task(f"latency table on {tgt.name}", total=None)
        lut = LatencyLUT(path, tgt, model_runs=runs,
                         progress=lambda msg: bar.update(job, description=f"measuring {msg}"))
        # A cached table from a noisy period is redone rather than trusted (see the LUT).
        bar.update(job, description="measuring the whole model")
        fresh = measure_latency(task_obj.model, task_obj.example_input, tgt, runs=runs,
                                blocks=MODEL_BLOCKS).stable_ms
        if lut.forget_model_if_stale(inventory, task_obj.example_input, fresh):
            err_console.print("the cached latency table disagrees with a fresh measurement of "
                              "the model by more than 30%; re-measuring it", highlight=False)
        layers = lut.layer_table(inventory)
        fit = lut.whole_model_fit(inventory, task_obj.model, task_obj.example_input)
        bar.update(job, description="done", total=1, completed=1)
        covered = None
        if spec is not None:
            from autocompress.cost.coverage import space_policies

            policies = list(space_policies(spec.resolve(inventory)))
            sjob = bar.add_task(f"every layer shape of {spec.source}", total=len(policies))
            before = lut.measured
            for i, policy in enumerate(policies):
                lut.layers_ms(policy, inventory, task_obj.model, task_obj.example_input)
                bar.update(sjob, completed=i + 1)
            covered = {"space": spec.source, "policies": len(policies),
                       "layers_measured": lut.measured - before, "entries": len(lut.entries)}
        report = None
        if validate:
            from autocompress.cost.fidelity import validate as run_validation

            vjob = bar.add_task(f"validating {validate} random policies", total=validate)
            report = run_validation(
                task_obj.model, task_obj.example_input, inventory, lut, validate, seed=seed,
                runs=runs, progress=lambda i, n: bar.update(vjob, completed=i),
            )

    result: dict[str, Any] = {}
    if report is not None:
        result["lut"] = report.lut
        result["macs"] = report.macs
        result["lut_relative"] = report.lut_relative  # speed ratios to the uncompressed model
        result["macs_relative"] = report.macs_relative
    if covered is not None:
        result["space_coverage"] = covered
    result.update({
        "task": task_obj.name,
        "target": tgt.name,
        "fingerprint": lut.key,
        "lut_path": str(path),
        "model": {k: fit.get(k, 0.0) for k in ("model_ms", "layers_ms", "remainder_ms")},
        "layers": layers,
        "load_average": list(os.getloadavg()),
    })
    if report is not None:
        result["policies"] = report.rows
        result["validate_s"] = report.validate_s
        result["lut_measurements"] = report.lut_measurements

    if format == OutputFormat.json:
        print(json.dumps(result, indent=2))
        return
    _print_tables(result, len(inventory), validate)


def _print_tables(result: dict[str, Any], n_layers: int, validate: int) -> None:
    table = Table(
        title=f"{result['task']} on {result['target']} (fingerprint {result['fingerprint']}): "
        f"{n_layers} compressible layers, each measured alone",
        title_justify="left",
    )
    for col in ("fqn", "kind", "MACs", "params", "latency ms", "share"):
        table.add_column(col, justify="left" if col in ("fqn", "kind") else "right")
    for row in result["layers"]:
        table.add_row(
            row["fqn"], row["kind"], f"{row['macs']:,}", f"{row['params']:,}",
            f"{row['latency_ms']:.4f}", f"{100 * row['share']:.1f}%",
        )
    console.print(table)
    m = result["model"]
    console.print(
        f"whole model {m['model_ms']:.4f} ms measured = layers {m['layers_ms']:.4f} ms + "
        f"remainder {m['remainder_ms']:.4f} ms; compressed graphs: layers x "
        f"{m['model_ms'] / max(m['layers_ms'], 1e-12):.3f}; table: {result['lut_path']}"
    )
    if "space_coverage" in result:
        c = result["space_coverage"]
        console.print(f"every layer shape of {c['space']}: {c['policies']} policies, "
                      f"{c['layers_measured']} new layer entries, {c['entries']} in all; search "
                      f"elsewhere with `autocompress search --lut {result['lut_path']}`")
    if not validate:
        return
    scores = Table(title=f"latency prediction on {validate} random policies", title_justify="left")
    for col in ("model", "Kendall tau", "MAPE", "within +-10%"):
        scores.add_column(col, justify="left" if col == "model" else "right")
    for name, label in (("lut", "per-layer table"), ("macs", "MACs-proportional"),
                        ("lut_relative", "per-layer table, ratio to uncompressed"),
                        ("macs_relative", "MACs-proportional, ratio to uncompressed")):
        s = result[name]
        scores.add_row(label, f"{s['kendall_tau']:.3f}", f"{s['mape']:.1f}%",
                       f"{s['within_10pct']:.0f}%")
    console.print(scores)
    console.print("ratio rows: predicted speed ratio to the uncompressed model against the ratio "
                  "measured in blocks alternating with it (what a budget like latency<=0.5x "
                  "compares; immune to the machine's speed drifting between measurements)")
