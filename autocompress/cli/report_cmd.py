"""``autocompress report RUN``: regenerate report.html, trials.csv and pareto.csv from study.log.

Reads the Optuna journal of a results folder; no trial is re-run and no
model is rebuilt. The summary numbers of ``summary.json`` (re-measured
latency) are shown when the folder has one.
"""

from __future__ import annotations

from pathlib import Path

import typer

from autocompress.cli.app import app, console


@app.command()
def report(
    run: Path = typer.Argument(
        ..., help="results folder of 'autocompress search' (holds study.log)"
    ),
    study: str = typer.Option(
        None, "--study", help="study name in the journal (default: the only one)"
    ),
) -> None:
    """Regenerate report.html, trials.csv and pareto.csv of a results folder from its study.log."""
    from autocompress.export.results import load_run_study, write_tables
    from autocompress.export.summary import ExportSummary
    from autocompress.report import write_report

    the_study = load_run_study(run, study)
    summary = None
    summary_path = run / "summary.json"
    if summary_path.is_file():
        try:
            summary = ExportSummary.read(summary_path)
        except Exception:  # a stale or hand-edited summary must not stop the report
            console.print(f"[yellow]warning:[/] {summary_path} is unreadable; report without it")
    trials_csv, pareto_csv = write_tables(the_study, run)
    html = write_report(the_study, run / "report.html", summary)
    n = len(the_study.trials)
    console.print(
        f"study {the_study.study_name!r}: {n} trials; wrote {html}, {trials_csv}, {pareto_csv}",
        highlight=False,
    )
