"""``autocompress worker``: one of any number of processes filling a shared Optuna study.

Start as many as you like, on any machines that reach the database::

    autocompress worker --config search.yaml --storage postgresql://u:p@db/ac --study digits

Each trial sends a heartbeat; a trial whose worker died (killed, preempted) is
marked FAIL after the grace period and re-run by another worker with the same
parameters (Optuna's RetryHeartbeatStaleTrialCallback). Workers stop when the
study holds ``--trials`` finished trials. ``autocompress export`` then writes
the results folder.
"""

from __future__ import annotations

import typer

from autocompress.cli.app import app, console, err_console


@app.command()
def worker(
    storage: str = typer.Option(
        ..., "--storage",
        help="Optuna storage URL shared by all workers, e.g. postgresql://user:pass@host:5432/db"),
    study: str = typer.Option("autocompress", "--study", help="study name"),
    config: str = typer.Option(
        None, "--config", "-c",
        help="search settings YAML (as for `autocompress search`); needed to create the study, "
             "optional to join it (the study stores its configuration)"),
    trials: int = typer.Option(
        None, "--trials", "-n", help="total finished trials the study should hold (default: the config's trials)"),
    max_trials: int = typer.Option(
        None, "--max-trials", help="stop after this worker ran this many trials"),
    out: str = typer.Option(
        None, "--out", "-o",
        help="local folder for this worker's run files and latency table (default: the config's out)"),
    data_dir: str = typer.Option(None, "--data-dir", help="dataset folder on this machine"),
    device: str = typer.Option(
        None, "--device", help="auto|cpu|cuda|cuda:N: where this worker fine-tunes (one worker "
        "per GPU: cuda:0, cuda:1, ...); latency is timed on the CPU target (default: cpu)"),
    heartbeat: int = typer.Option(10, "--heartbeat", help="seconds between trial heartbeats"),
    grace: int = typer.Option(
        None, "--grace", help="seconds without a heartbeat before a trial counts as dead "
        "(default: 3 heartbeats)"),
    max_retry: int = typer.Option(3, "--max-retry", help="re-runs of one dead trial"),
    poll: float = typer.Option(
        2.0, "--poll", help="seconds between looks while the last trials run elsewhere"),
    init_only: bool = typer.Option(
        False, "--init-only",
        help="create the study (configuration, baseline latency) and exit; run this once "
             "before starting many workers at the same moment"),
) -> None:
    """Run trials of a shared study (RDB storage) until it holds --trials finished trials."""
    import optuna
    from optuna.trial import FrozenTrial

    from autocompress.cli.common import check_out_folder, check_storage
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.optuna_backend import worker_id
    from autocompress.engine.storage import is_rdb_url, load_shared_study, open_storage
    from autocompress.engine.workers import (
        config_from_study,
        optuna_objective,
        prepare_run,
        run_worker,
        worker_seed,
    )
    from autocompress.errors import ConfigError

    check_storage(storage)
    if device is not None:  # a machine without that GPU fails before any storage or model work
        from autocompress.device import resolve_device

        resolve_device(device)
    st = open_storage(storage, heartbeat_interval=heartbeat, grace_period=grace,
                      max_retry=max_retry)
    if not is_rdb_url(storage):  # warned after opening: a bad URL gets its error line alone
        err_console.print(
            "warning: a journal-file storage has no heartbeat: a trial of a killed worker "
            "stays RUNNING and is not retried", highlight=False)
    overrides = {"storage": storage, "study_name": study, "trials": trials, "out": out,
                 "data_dir": data_dir, "export": False, "device": device}
    try:
        existing = load_shared_study(st, study)
    except ConfigError:  # not there yet: this worker creates it from --config
        existing = None
    if existing is not None:
        cfg = config_from_study(existing, config, overrides)
    elif config is None:
        raise ConfigError(
            f"study {study!r} does not exist yet and no --config was given; pass --config "
            "C.yaml (search settings) so this worker can create it"
        )
    else:
        cfg = SearchConfig.build(config, overrides)
    if cfg.strategy in ("uniform", "greedy"):
        raise ConfigError(
            f"strategy {cfg.strategy!r} is a baseline that plans its candidates in one process; "
            "run it with `autocompress search`, or give workers tpe, nsga2 or random"
        )
    # The run creates its folder only after loading (maybe training) the task.
    check_out_folder(cfg.out_dir, "--out" if out is not None else "out")

    def say(msg: str) -> None:
        err_console.print(msg, highlight=False, soft_wrap=True, markup=False)

    me = worker_id()
    prep = prepare_run(cfg, storage=st, log_fn=say, sampler_seed=worker_seed(cfg.seed, me))
    if init_only:
        console.print(f"study {study!r} ready ({'created' if prep.created else 'exists'}); "
                      f"{len(prep.study.trials)} trials so far", highlight=False)
        return
    say(f"worker {me}: study {study!r}, {cfg.trials} trials wanted")

    def done(_study: optuna.Study, trial: FrozenTrial) -> None:
        say(f"worker {me}: trial {trial.number} {trial.state.name} values {trial.values}")

    result = run_worker(
        prep.study, optuna_objective(prep.objective, {"worker": me}), cfg.trials,
        poll_s=poll, max_trials=max_trials, callbacks=[done], count_skipped=not prep.reachable,
    )
    p = result.counts
    skipped = f", {p.skipped} skipped over budget" if p.skipped else ""
    console.print(
        f"worker {me}: ran {result.trials_run} trials in {result.seconds:.0f} s; study "
        f"{study!r} has {p.finished} finished, {p.running} running, {p.failed} failed{skipped}",
        highlight=False,
    )
