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

:func:`confirm_pick` is the step they share with every export that measures: before the
pick is rebuilt, it is timed on the target once more, and judged on that timing alone. In a
search on the target each trial was judged on one timing, and the pick is the most accurate
trial among those that met: near the limit, the trials whose timing came out low are the
ones picked (the winner's curse), and the timings repeat only to a few percent. A second
timing does not share the first one's luck. A pick that misses on it gives way to the
next best, which is confirmed in turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autocompress.export.summary import ExportSummary

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from autocompress.cost import Budget, Target
    from autocompress.engine.judge import Judgment
    from autocompress.inventory import LayerInventory
    from autocompress.tasks import Task

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
    from autocompress.errors import ConfigError
    from autocompress.export import export_results
    from autocompress.export.results import load_run_study
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
    timing = _PickTiming(study, task, inventory, tgt, budget, record={})
    candidates = {t.number: t for t in pareto_front(study)}
    best = pick_best(study)
    if best is not None:
        candidates.setdefault(best.number, best)
    todo = sorted(candidates.values(), key=lambda t: t.number)
    for i, trial in enumerate(todo):
        timing.time(trial)
        if progress:
            progress(i + 1, len(todo))
    study.set_user_attr(VERIFIED_ATTR, timing.record)
    # The export confirms the pick (confirm_pick): one the front's timings found over the
    # budget gives way to the next best, timed there in turn.
    lut = run / "latency_lut.json"
    return export_results(study, task, run, target=tgt, budget=budget,
                          lut_path=lut if lut.is_file() else None, measure=True)


def confirm_pick(study: optuna.Study, task: Task, inventory: LayerInventory, target: Target,
                 budget: Budget) -> list[str]:
    """Time the pick of ``study`` on ``target`` until a pick meets ``budget`` on that timing.

    Each trial is timed at most once here: its verdict is kept in the study
    (:data:`~autocompress.pareto.VERIFIED_ATTR`, with ``autocompress verify``'s), so
    :func:`~autocompress.pareto.pick_best` passes over a pick that missed, and exporting
    again times nothing new. Returns a note for each pick that missed. ``target``: the
    :class:`~autocompress.cost.Target` the export measures on; ``budget``: the parsed
    :class:`~autocompress.cost.Budget` (one without a latency clause confirms nothing).
    """
    from autocompress.pareto import VERIFIED_ATTR, pick_best

    if not budget.needs_latency:
        return []
    record = dict(study.user_attrs.get(VERIFIED_ATTR) or {})
    if record.get("target") != target.name:  # verdicts from another target do not count here
        record = {}
    timing = _PickTiming(study, task, inventory, target, budget, record)
    notes = []
    while (best := pick_best(study)) is not None and str(best.number) not in timing.record[
            "trials"]:
        verdict = timing.time(best)
        study.set_user_attr(VERIFIED_ATTR, timing.record)
        if not verdict.feasible:
            first = best.user_attrs.get("measured_ratio")
            was = f"timed {float(first):.3f}x in the search, " if first else ""
            notes.append(
                f"trial {best.number} ({was}{verdict.measured_ratio:.3f}x when timed again on "
                f"{target.name}) misses {budget.text!r} with the guard: the next best is picked")
    return notes


class _PickTiming:
    """Times trials' policies on the target next to the uncompressed model, judged as the
    search judges (:class:`~autocompress.engine.judge.Judge`, the same guard); ``record``
    collects the verdicts in the form :data:`~autocompress.pareto.VERIFIED_ATTR` keeps."""

    def __init__(self, study: optuna.Study, task: Task, inventory: LayerInventory,
                 target: Target, budget: Budget, record: dict[str, Any]) -> None:
        from autocompress.cost import analytic_costs
        from autocompress.engine.judge import Judge, PolicyTimer
        from autocompress.pareto import as_number

        self.study, self.inventory = study, inventory
        base_ms = as_number((study.user_attrs.get("baseline") or {}).get("latency_ms"))
        timer = PolicyTimer(task, inventory, target, reference_ms=base_ms)
        self.judge = Judge(budget, analytic_costs(None, inventory, include_layers=False),
                           measure=timer)
        self.record = {"target": target.name, "trials": {}, **record}

    def time(self, trial: FrozenTrial) -> Judgment:
        """Time ``trial``'s policy, keep its verdict in :attr:`record` and return it."""
        from autocompress.cost import analytic_costs
        from autocompress.export.results import trial_policy

        policy = trial_policy(trial, self.study)
        costs = analytic_costs(policy, self.inventory, include_layers=False)
        verdict = self.judge.time(policy, costs, str(trial.number),
                                  trial.user_attrs.get("predicted_ratio"))
        self.record["trials"][str(trial.number)] = {
            "measured_ms": verdict.measured_ms, "baseline_ms": verdict.baseline_ms,
            "measured_ratio": verdict.measured_ratio,
            "predicted_ratio": trial.user_attrs.get("predicted_ratio"),
            "meets": bool(verdict.feasible)}
        LOG.info("trial %d: measured ratio %.3f: %s", trial.number,
                 verdict.measured_ratio or float("nan"), "met" if verdict.feasible else "missed")
        return verdict
