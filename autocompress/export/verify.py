"""``autocompress verify RUN``: a search run away from the target, measured on the target.

A search with ``--lut`` (a table profiled on the deployment machine, used on other
machines) judges latency on predictions only. On the target, this times each Pareto
candidate and the pick, built without fine-tuning (weights do not change the run time),
next to the uncompressed model in alternating blocks, and judges them as a search on the
target judges its trials (:class:`~autocompress.engine.judge.Judge`, the same guard). The
verdicts go to the study (:data:`~autocompress.pareto.VERIFIED_ATTR`); a candidate that
missed is no longer picked, and the results folder is exported again with the pick
re-measured: ``summary.json`` and the report then rest on measurements
(``meets_budget_basis: measured``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autocompress.export.summary import ExportSummary

LOG = logging.getLogger(__name__)


def verify_run(
    run_dir: str | Path,
    target: str | None = None,
    *,
    data_dir: str | None = None,
    task: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Time the Pareto candidates and the pick of ``run_dir`` on ``target`` and export again.

    ``target``: the target to time on (default: the run's own, with this machine's
    threads when the run named none). Returns the new summary.
    """
    from autocompress.cost import parse_budget, parse_target
    from autocompress.engine.judge import Judge, PolicyTimer
    from autocompress.errors import ConfigError
    from autocompress.export import export_results
    from autocompress.export.results import load_run_study, trial_policy
    from autocompress.inventory import build_inventory
    from autocompress.pareto import VERIFIED_ATTR, pareto_front, pick_best
    from autocompress.tasks import load_task

    run = Path(run_dir)
    study = load_run_study(run)
    cfg: dict[str, Any] = dict(study.user_attrs.get("autocompress") or {})
    if not cfg.get("task") and task is None:
        raise ConfigError(f"{str(run)!r} holds no search configuration; expected the --out "
                          "folder of `autocompress search`")
    budget = parse_budget(cfg["budget"])
    if task is None:
        task = load_task(cfg["task"], data_dir=data_dir or cfg.get("data_dir"),
                         checkpoint=cfg.get("checkpoint"))
    tgt = parse_target(target or cfg.get("target", "ort")).with_batch(task.target_batch_size)
    inventory = build_inventory(task.model, task.example_input)
    timer = PolicyTimer(task, inventory, tgt)
    from autocompress.cost import analytic_costs

    judge = Judge(budget, analytic_costs(None, inventory, include_layers=False), measure=timer)
    record: dict[str, Any] = {"target": tgt.name, "trials": {}}
    candidates = {t.number: t for t in pareto_front(study)}
    best = pick_best(study)
    if best is not None:
        candidates.setdefault(best.number, best)
    todo = sorted(candidates.values(), key=lambda t: t.number)

    def verify(trial: Any) -> None:
        policy = trial_policy(trial, study)
        costs = analytic_costs(policy, inventory, include_layers=False)
        verdict = judge.time(policy, costs, str(trial.number), trial.user_attrs.get(
            "predicted_ratio"))
        record["trials"][str(trial.number)] = {
            "measured_ms": verdict.measured_ms, "baseline_ms": verdict.baseline_ms,
            "measured_ratio": verdict.measured_ratio,
            "predicted_ratio": trial.user_attrs.get("predicted_ratio"),
            "meets": bool(verdict.feasible)}
        LOG.info("trial %d: measured ratio %.3f: %s", trial.number,
                 verdict.measured_ratio or float("nan"), "met" if verdict.feasible else "missed")

    for i, trial in enumerate(todo):
        verify(trial)
        if progress:
            progress(i + 1, len(todo))
    study.set_user_attr(VERIFIED_ATTR, record)
    # A pick that missed gives way to the next best, which need not be on the front (the
    # pick dominated it): it is timed too, until the pick is a trial that met on the target.
    while (best := pick_best(study)) is not None and str(best.number) not in record["trials"]:
        verify(best)
        study.set_user_attr(VERIFIED_ATTR, record)
    lut = run / "latency_lut.json"
    return export_results(study, task, run, target=tgt, budget=budget,
                          lut_path=lut if lut.is_file() else None, measure=True)
