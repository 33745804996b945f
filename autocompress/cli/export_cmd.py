"""``autocompress export``: the results folder of a shared study (RDB or journal file).

``autocompress export --storage postgresql://... --study NAME --out results/RUN``
copies the study into ``results/RUN/study.log`` and writes what ``autocompress
search`` writes at its end: trials.csv, pareto.csv, best_policy.json,
policies/, model_best.pt/.onnx (+ .int8.onnx), report.html, summary.json.
"""

from __future__ import annotations

import typer

from autocompress.cli.app import app, console


@app.command()
def export(
    storage: str = typer.Option(
        ..., "--storage", help="Optuna storage URL (postgresql://...) or journal file"),
    study: str = typer.Option("autocompress", "--study", help="study name"),
    out: str = typer.Option(..., "--out", "-o", help="results folder to write"),
    measure: bool = typer.Option(
        True, "--measure/--no-measure",
        help="re-measure the exported best model's latency on this machine"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder on this machine"),
) -> None:
    """Write the results folder (best policy, model, report, summary) of a shared study.

    Exit codes: 0 a trial meets the budget, 3 none did, 2 bad input.
    """
    from autocompress.cli.common import check_out_folder, check_storage
    from autocompress.engine.workers import export_shared_study

    check_out_folder(out)  # before the study is read and the best model re-measured
    check_storage(storage)
    summary = export_shared_study(storage, study, out, measure=measure, data_dir=data_dir)
    d = summary.to_dict()
    best = d.get("best_metric")
    if best is None:
        console.print(f"no trial met the budget {d.get('budget')!r}; results in {out}",
                      highlight=False)
        raise typer.Exit(3)
    line = f"best trial {d.get('best_trial')}: metric {best:.4f}"
    if d.get("measured_latency_ms") is not None:
        line += f", latency {d['measured_latency_ms']:.4g} ms measured"
    if d.get("meets_budget") is False:
        line += " - MISSES the budget when re-measured"
    console.print(line, highlight=False)
    console.print(f"results in {out}", highlight=False)
