"""The Pareto front of a study (metric vs cost) and the pick under the budget.

A trial is *feasible* when it is COMPLETE, has a metric, all its Optuna
constraints are <= 0 (``trial.set_constraint``; the search contract) and its
``feasible`` user attribute is not False. Infeasible trials carry the worst
metric as their objective value so that samplers learn from them; they are
never on the front and never picked.

- :func:`pareto_front`: in ``pareto`` mode (several objectives) Optuna's own
  :attr:`optuna.Study.best_trials` (which already drops infeasible trials);
  in ``constrained`` mode (one objective) the feasible trials not dominated on
  (metric, cost), where cost is the predicted latency, or the MACs when a
  study has no latency predictions.
- :func:`pick_best`: the best metric among feasible trials; ties go to the
  faster one (measured speed ratio, else predicted), then the lower MACs, then the
  earlier trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

COST_KEYS = ("predicted_latency_ms", "macs")


def trial_metric(trial: FrozenTrial) -> float | None:
    """The task metric of a trial: the ``metric`` user attribute, else its first objective value.

    >>> from optuna.trial import create_trial
    >>> trial_metric(create_trial(value=0.9, user_attrs={"metric": 0.91}))
    0.91
    """
    if "metric" in trial.user_attrs:
        value = trial.user_attrs["metric"]
        return None if value is None else float(value)
    if trial.values:
        return float(trial.values[0])
    return None


def is_feasible(trial: FrozenTrial) -> bool:
    """True for a COMPLETE trial with a metric that meets every budget clause.

    >>> from optuna.trial import create_trial
    >>> is_feasible(create_trial(value=0.9, constraints={"latency": -0.1}))
    True
    >>> is_feasible(create_trial(value=0.0, constraints={"latency": 0.2}))
    False
    """
    if trial.state != TrialState.COMPLETE:
        return False
    if trial.user_attrs.get("feasible") is False:
        return False
    if any(v > 0.0 for v in trial.constraints.values()):
        return False
    metric = trial_metric(trial)
    return metric is not None and not math.isnan(metric)


def feasible_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible trials of ``trials`` (see :func:`is_feasible`), in trial order."""
    return [t for t in trials if is_feasible(t)]


def metric_direction(study: optuna.Study) -> StudyDirection:
    """The direction of the task metric: the study's first objective (the contract)."""
    return study.directions[0]


# Budget metric -> the trial user attribute that holds its cost (search contract).
BUDGET_COST_ATTRS = {
    "latency": "predicted_latency_ms", "macs": "macs", "bops": "bops", "params": "params",
    "size": "size_bytes",
}


def budget_cost_key(study: optuna.Study) -> str | None:
    """The cost the study's budget is about: latency when a clause limits it, else its first.

    That is the second objective of a ``pareto`` study (search contract);
    None when the study records no (valid) budget.
    """
    from autocompress.cost import parse_budget
    from autocompress.errors import BudgetError

    text = study.user_attrs.get("autocompress", {}).get("budget")
    if not text:
        return None
    try:
        budget = parse_budget(str(text))
    except BudgetError:
        return None
    metric = "latency" if budget.needs_latency else budget.metrics[0]
    return BUDGET_COST_ATTRS.get(metric)


def cost_key(trials: Sequence[FrozenTrial], preferred: str | None = None) -> str:
    """The cost the front is drawn against: ``preferred`` (the budget's cost) when every
    trial has it, else predicted latency when every trial has one, else MACs.

    >>> from optuna.trial import create_trial
    >>> cost_key([create_trial(value=1.0, user_attrs={"macs": 10, "predicted_latency_ms": None})])
    'macs'
    >>> cost_key([create_trial(value=1.0, user_attrs={"macs": 10, "size_bytes": 4})], "size_bytes")
    'size_bytes'
    """
    for key in ((preferred,) if preferred else ()) + COST_KEYS:
        if trials and all(as_number(t.user_attrs.get(key)) is not None for t in trials):
            return key
    return "macs"


def non_dominated(
    points: Sequence[Sequence[float]], directions: Sequence[StudyDirection | str]
) -> list[int]:
    """Indices of the points no other point dominates (duplicates all kept).

    A point dominates another when it is at least as good in every objective
    and strictly better in one; ``directions`` says per objective whether
    bigger ("maximize") or smaller ("minimize") is better.

    >>> non_dominated([(0.9, 2.0), (0.8, 1.0), (0.7, 3.0), (0.9, 2.0)], ["maximize", "minimize"])
    [0, 1, 3]
    """
    if len(points) == 0:
        return []
    signs = np.array([-1.0 if _is_max(d) else 1.0 for d in directions])
    # Turn every objective into "smaller is better" so one comparison covers both directions.
    loss = np.asarray(points, dtype=float) * signs
    keep = []
    for i, p in enumerate(loss):
        no_worse = np.all(loss <= p, axis=1)
        better = np.any(loss < p, axis=1)
        if not np.any(no_worse & better):
            keep.append(i)
    return keep


def pareto_front(
    study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """Feasible non-dominated trials, sorted by cost (cheapest first).

    Several objectives (``pareto`` mode): Optuna's :attr:`~optuna.Study.best_trials`.
    One objective (``constrained`` mode): non-dominated on (metric, :func:`cost_key`), the
    cost being the one the budget limits (latency first).
    """
    all_trials = list(study.get_trials(deepcopy=False)) if trials is None else list(trials)
    missed = missed_on_target(study)
    feasible = [t for t in feasible_trials(all_trials) if t.number not in missed]
    if not feasible:
        return []
    key = cost_key(feasible, budget_cost_key(study))
    if len(study.directions) > 1 and trials is None:
        # Optuna's own front over the study's objectives; constraints already honoured.
        front = [t for t in study.best_trials if is_feasible(t) and t.number not in missed]
    else:
        points = [
            (float(trial_metric(t) or 0.0), as_number(t.user_attrs.get(key)) or 0.0)
            for t in feasible
        ]
        idx = non_dominated(points, [metric_direction(study), StudyDirection.MINIMIZE])
        front = [feasible[i] for i in idx]
    return sorted(front, key=lambda t: (as_number(t.user_attrs.get(key)) or 0.0, t.number))


# Study attribute with the latency table's own time of the uncompressed model (ms): what
# predicted speed ratios are relative to (written by autocompress.engine.session.prepare_run).
BUDGET_BASELINE_ATTR = "budget_baseline_latency_ms"


def budget_baseline_ms(study: optuna.Study) -> float | None:
    """The latency predicted speed ratios were relative to in the search (see above).

    Studies written before the attribute existed judged against their ``baseline``.
    """
    value = as_number(study.user_attrs.get(BUDGET_BASELINE_ATTR))
    if value is not None:
        return value
    return as_number((study.user_attrs.get("baseline") or {}).get("latency_ms"))


# Study attribute written by ``autocompress verify`` (autocompress.export.verify): trials of a
# search run away from the target, timed on the target afterwards ({str(number): {...,
# "meets"}}); a trial that missed there is no longer feasible.
VERIFIED_ATTR = "verified_on_target"


def missed_on_target(study: optuna.Study) -> set[int]:
    """Trials that ``autocompress verify`` timed on the target and found over the budget.

    >>> s = optuna.create_study()
    >>> s.set_user_attr(VERIFIED_ATTR, {"trials": {"0": {"meets": False}, "1": {"meets": True}}})
    >>> missed_on_target(s)
    {0}
    """
    verified = (study.user_attrs.get(VERIFIED_ATTR) or {}).get("trials") or {}
    return {int(n) for n, v in verified.items() if isinstance(v, dict) and v.get("meets") is False}


def pick_best(
    study: optuna.Study, trials: Sequence[FrozenTrial] | None = None
) -> FrozenTrial | None:
    """The best feasible trial, or None when no trial met the budget.

    Best metric first (in the study's direction); ties go to the lower speed ratio
    (measured on the target, else predicted), then the lower MACs, then the earlier trial. The best
    metric is always on the front, so this is also the pick in ``pareto`` mode.
    A trial timed on the target and found over the budget (in the search, or later by
    ``autocompress verify``) is infeasible, whatever the table predicted.
    """
    all_trials = list(study.get_trials(deepcopy=False)) if trials is None else list(trials)
    missed = missed_on_target(study)
    feasible = [t for t in feasible_trials(all_trials) if t.number not in missed]
    if not feasible:
        return None
    sign = -1.0 if _is_max(metric_direction(study)) else 1.0

    def rank(t: FrozenTrial) -> tuple[float, float, float, int]:
        macs = as_number(t.user_attrs.get("macs"))
        return (
            sign * float(trial_metric(t) or 0.0),
            speed_ratio(t.user_attrs),
            math.inf if macs is None else macs,
            t.number,
        )

    return min(feasible, key=rank)


def speed_ratio(attrs: Mapping[str, Any]) -> float:
    """What breaks a tie in metric between two trials (the lower wins): the speed ratio,
    measured when the trial was timed on the target, else predicted (inf when neither).

    >>> speed_ratio({"measured_ratio": 0.4, "predicted_ratio": 0.3}), speed_ratio({})
    (0.4, inf)
    """
    lat = as_number(attrs.get("measured_ratio"),
                    as_number(attrs.get("predicted_ratio"),
                              as_number(attrs.get("predicted_latency_ms"))))
    return math.inf if lat is None else lat


def _is_max(direction: StudyDirection | str) -> bool:
    if isinstance(direction, StudyDirection):
        return direction == StudyDirection.MAXIMIZE
    return str(direction).lower() in ("maximize", "max")


def as_number(value: Any, default: float | None = None) -> float | None:
    """``value`` as a float, or ``default`` for None, bools, NaN and non-numbers.

    >>> as_number("0.5"), as_number(None), as_number(float("nan"), 0.0), as_number(True)
    (0.5, None, 0.0, None)
    """
    if value is None or isinstance(value, bool):
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f
