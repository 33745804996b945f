"""``autocompress verify RUN``: measure a run searched away from the target, on the target."""

from __future__ import annotations

import typer

from autocompress.cli.app import app, console, err_console


@app.command()
def verify(
    run: str = typer.Argument(..., help="results folder of `autocompress search` (holds study.log)"),
    target: str = typer.Option(None, "--target", help="target to time on (default: the run's)"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder on this machine"),
) -> None:
    """Time the Pareto candidates and the pick of RUN on this machine (the target), drop those
    over the budget, and rewrite summary.json and report.html on those measurements.

    Exit codes: 0 a candidate meets the budget when measured, 3 none did, 2 bad input.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from autocompress.cost import parse_target
    from autocompress.export.verify import verify_run

    if target is not None:
        parse_target(target)  # a typo fails before the task loads
    with Progress(TextColumn("timing candidates on the target"), BarColumn(),
                  MofNCompleteColumn(), console=err_console, transient=True) as bar:
        job = bar.add_task("verify", total=None)
        summary = verify_run(run, target, data_dir=data_dir,
                             progress=lambda i, n: bar.update(job, completed=i, total=n))
    d = summary.to_dict()
    if d.get("best_trial") is None:
        console.print(f"no candidate met the budget {d.get('budget')!r} when measured on "
                      f"{d.get('target')}; results in {run}", highlight=False)
        raise typer.Exit(3)
    console.print(f"best trial {d['best_trial']}: metric {d['best_metric']:.4f}, latency "
                  f"{d['measured_latency_ms']:.4g} ms measured on {d['target']} "
                  f"({'meets' if d['meets_budget'] else 'MISSES'} the budget); results in {run}",
                  highlight=False)
