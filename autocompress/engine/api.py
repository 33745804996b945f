"""``ac.search(...)``: the whole search run, the same function the CLI calls.

>>> import autocompress as ac
>>> result = ac.search("digits", budget="latency<=0.5x", trials=30,  # doctest: +SKIP
...                    out="results/digits")
>>> result.best_policy, result.trials.shape, result.exit_status  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from autocompress.engine.baselines import greedy_candidates, greedy_sensitivity, uniform_candidates
from autocompress.engine.config import SearchConfig
from autocompress.engine.objective import Objective, TrialOutcome
from autocompress.engine.optuna_backend import fail_dead_trials, n_done, n_finished, run_trials
from autocompress.engine.progress import BestSoFar, TrialBar, slow_step
from autocompress.engine.session import (
    LOOP_LUT_MEASURE_ATTR,
    LUT_FILE,
    UNIFORM_START_ATTR,
    Log,
    SearchResult,
    _share_lut,
    finish_run,
    prepare_run,
    uniform_start,
)
from autocompress.engine.trial import Repeat
from autocompress.space import ResolvedSpace
from autocompress.tasks import Task

__all__ = ["SearchResult", "run", "search"]

LOG = logging.getLogger("autocompress.engine")


def search(
    task: Task | str = "digits",
    space: str | Path | None = None,
    budget: str | None = None,
    target: str | None = None,
    trials: int | None = None,
    out: str | Path | None = None,
    *,
    strategy: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    finetune_steps: int | None = None,
    config: str | Path | None = None,
    progress: bool = False,
    log: Log | None = None,
    **settings: Any,
) -> SearchResult:
    """Search a per-layer compression policy for ``task`` under ``budget``.

    ``task`` is a :class:`Task` or a task name; arguments left ``None`` come
    from ``config`` (a YAML file) or the defaults of :class:`SearchConfig`;
    ``settings`` takes any other :class:`SearchConfig` key (``lr``,
    ``val_samples``, ``storage``, ``export``, ``device``, ...). Re-running with the same
    ``out`` resumes the study there.
    """
    overrides: dict[str, Any] = {
        "task": task if isinstance(task, str) else task.name,
        "space": str(space) if space is not None else None,
        "budget": budget, "target": target, "trials": trials,
        "out": str(out) if out is not None else None, "strategy": strategy, "mode": mode,
        "seed": seed, "finetune_steps": finetune_steps, **settings,
    }
    cfg = SearchConfig.build(config, overrides)
    return run(cfg, task=None if isinstance(task, str) else task, progress=progress, log=log)


def run(
    cfg: SearchConfig,
    task: Task | None = None,
    progress: bool = False,
    log: Log | None = None,
) -> SearchResult:
    """Run (or resume) the search ``cfg`` describes; see :func:`search`.

    Runs under ``torch.set_num_threads(cfg.threads)`` (restored after; latency
    measurements set their target's own thread count). ``cfg.backend == "ray"``
    runs the trials as Ray Tune trials (:mod:`autocompress.engine.ray_backend`).
    """
    if cfg.backend == "ray":
        from autocompress.engine.ray_backend import run_ray

        return run_ray(cfg, task, ray_address=cfg.ray_address, progress=progress, log=log)
    if cfg.threads > 0:
        from autocompress.cost.latency import torch_threads

        with torch_threads(cfg.threads):
            return _run(cfg, task, progress, log)
    return _run(cfg, task, progress, log)


def _run(cfg: SearchConfig, task: Task | None, progress: bool, log: Log | None) -> SearchResult:
    t_start = time.perf_counter()
    say: Log = log or LOG.warning
    prep = prepare_run(cfg, task, log=say, progress=progress)
    cfg, study, objective, task = prep.config, prep.study, prep.objective, prep.task
    lut, where, out = prep.lut, prep.where, prep.out

    planner = _planner(cfg, study, objective, prep.space, progress)
    failed = fail_dead_trials(study, requeue=planner is None)
    if failed:
        say(f"resuming: trial(s) {', '.join(map(str, failed))} of a killed run marked FAIL "
            "and run again")
    done_before = n_finished(study) if not prep.reachable else n_done(study)
    if done_before and not prep.created:
        say(f"resuming {where}: {done_before} of {cfg.trials} trials already finished")

    bar = _SearchBar(progress, cfg.trials, done_before, objective, count_skipped=not prep.reachable)
    filled0 = lut.measure_seconds if lut is not None else 0.0
    with bar:
        run_trials(study, objective, cfg.trials, planner=planner, on_trial=bar.update,
                   provenance={"backend": "optuna"}, count_skipped=not prep.reachable)
    if lut is not None:
        # Seconds the table spent timing new layer shapes between the first and the last trial:
        # inside trials (each trial's lut_measure_s) and in a baseline's planning, which
        # predicts candidates outside any trial. Summed over resumed runs.
        study.set_user_attr(LOOP_LUT_MEASURE_ATTR, float(study.user_attrs.get(LOOP_LUT_MEASURE_ATTR, 0.0))
                            + lut.measure_seconds - filled0)
        lut.save()
        if not lut.frozen:
            _share_lut(lut)
    lut_path = None if lut is None else (lut.path if lut.frozen else out / LUT_FILE)
    return finish_run(prep, t_start, lut_path=lut_path, progress=progress)


# ---------------------------------------------------------------- pieces of a run


def _planner(
    cfg: SearchConfig,
    study: optuna.Study,
    objective: Objective,
    resolved: ResolvedSpace,
    progress: bool,
) -> Callable[[], Any] | None:
    """The candidate generator of a baseline strategy (None for sampled strategies)."""
    if cfg.strategy == "uniform":
        # The start a sampled search gets, timed on the target: the baseline's first
        # candidate, kept with the study so a resumed run does not time it again.
        if UNIFORM_START_ATTR not in study.user_attrs:
            study.set_user_attr(UNIFORM_START_ATTR, uniform_start(objective, progress))
        first = study.user_attrs[UNIFORM_START_ATTR]
        return lambda: uniform_candidates(resolved, objective.feasible_params, first)
    if cfg.strategy != "greedy":
        return None
    table = study.user_attrs.get("greedy_sensitivity")
    if table is None:
        with slow_step(progress, "greedy: scoring each knob of each layer alone ..."):
            table = greedy_sensitivity(resolved, objective.untrained_metric)
        study.set_user_attr("greedy_sensitivity", table)
    return lambda: greedy_candidates(resolved, table, objective.feasible_params,
                                     objective.higher_is_better)


class _SearchBar:
    """The search progress bar (stderr): trials done / total, best feasible metric and its cost."""

    def __init__(self, enabled: bool, total: int, done: int, objective: Objective,
                 count_skipped: bool = False) -> None:
        self.bar = TrialBar("search", total, done, enabled)
        self.count_skipped = count_skipped
        self.done = done
        self.objective = objective
        self.best = BestSoFar(objective.higher_is_better, objective.cost_metric)
        self.infeasible = 0

    def __enter__(self) -> _SearchBar:
        self.bar.start(self._info())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def _info(self) -> str:
        best = self.best.text(self.objective.task.metric_name)
        if best is None:
            return f"no feasible trial yet ({self.infeasible} skipped over budget)"
        skipped = f"; {self.infeasible} skipped over budget" if self.infeasible else ""
        return f"{best}{skipped}"

    def update(self, frozen: Any, outcome: TrialOutcome | Repeat | None) -> None:
        if isinstance(outcome, TrialOutcome):
            if not outcome.feasible:  # skipped without fine-tuning: not a counted trial
                self.infeasible += 1
            if outcome.feasible or self.count_skipped:
                self.done += 1
            if outcome.feasible and outcome.metric is not None and not outcome.pruned:
                self.best.offer(outcome.metric, outcome.user_attrs)
        # A log gets a line per evaluated trial, not per repeat of a taken policy.
        self.bar.update(self.done, self._info(), line=isinstance(outcome, TrialOutcome))
