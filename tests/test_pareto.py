"""Pareto front and best pick on real Optuna studies stored in a journal file."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from autocompress.pareto import (
    budget_cost_key,
    cost_key,
    feasible_trials,
    is_feasible,
    non_dominated,
    pareto_front,
    pick_best,
    trial_metric,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(tmp_path: Path, directions: list[str]) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    return optuna.create_study(study_name="autocompress", storage=storage, directions=directions)


def _add(study: optuna.Study, metric: float | None, lat: float | None, macs: int,
         over: float = -0.1, state: TrialState = TrialState.COMPLETE) -> None:
    """One trial as the search writes it: metric, costs, feasibility and a constraint."""
    feasible = over <= 0
    value = metric if feasible and metric is not None else 0.0
    values = [value] if len(study.directions) == 1 else [value, lat if lat is not None else 0.0]
    study.add_trial(create_trial(
        state=state,
        values=values if state == TrialState.COMPLETE else None,
        user_attrs={"metric": metric if feasible else None, "predicted_latency_ms": lat,
                    "macs": macs, "feasible": feasible},
        constraints={"latency": over},
    ))


# (metric, predicted latency ms, MACs, constraint) - hand-made so the answer is known:
#  0: 0.90 @ 2.0  front      1: 0.80 @ 1.0  front     2: 0.85 @ 2.5  dominated by 0
#  3: 0.95 @ 5.0  infeasible 4: 0.90 @ 2.0 more MACs (tie with 0, on the front too)
#  5: 0.70 @ 0.5  front      6: 0.99 @ 0.1  PRUNED (never counted)
HAND = [
    (0.90, 2.0, 100, -0.1), (0.80, 1.0, 50, -0.5), (0.85, 2.5, 120, -0.01),
    (0.95, 5.0, 300, 0.4), (0.90, 2.0, 110, -0.1), (0.70, 0.5, 20, -0.9),
]


def test_non_dominated_both_directions():
    pts = [(1.0, 1.0), (2.0, 2.0), (0.5, 3.0)]
    assert non_dominated(pts, ["maximize", "minimize"]) == [0, 1]
    assert non_dominated(pts, ["minimize", "minimize"]) == [0, 2]
    assert non_dominated([], ["maximize", "minimize"]) == []


def test_constrained_front_and_pick(tmp_path: Path):
    study = _study(tmp_path, ["maximize"])
    for m, lat, macs, over in HAND:
        _add(study, m, lat, macs, over)
    _add(study, 0.99, 0.1, 5, state=TrialState.PRUNED)
    trials = study.trials
    assert [t.number for t in feasible_trials(trials)] == [0, 1, 2, 4, 5]
    assert not is_feasible(trials[3]) and not is_feasible(trials[6])
    assert trial_metric(trials[3]) is None
    assert cost_key(trials) == "predicted_latency_ms"
    front = pareto_front(study)
    assert [t.number for t in front] == [5, 1, 0, 4]  # cheapest first
    best = pick_best(study)
    assert best is not None and best.number == 0  # ties 0.90 @ 2.0: fewer MACs wins


def test_pick_ties_break_on_the_measured_speed_ratio_before_the_predicted_one(tmp_path: Path):
    study = _study(tmp_path, ["maximize"])
    for measured in (0.45, 0.40):  # predicted alike, timed apart on the target
        study.add_trial(create_trial(
            value=0.9, constraints={"latency": -0.05},
            user_attrs={"metric": 0.9, "feasible": True, "predicted_latency_ms": 1.0,
                        "predicted_ratio": 0.3, "measured_ratio": measured, "macs": 10}))
    best = pick_best(study)
    assert best is not None and best.number == 1


def test_pick_ties_break_on_latency_then_macs(tmp_path: Path):
    study = _study(tmp_path, ["maximize"])
    _add(study, 0.9, 3.0, 10)
    _add(study, 0.9, 2.0, 50)
    _add(study, 0.9, 2.0, 40)
    best = pick_best(study)
    assert best is not None and best.number == 2


def test_minimized_metric_and_macs_cost(tmp_path: Path):
    """A loss-like metric (lower is better) and no latency predictions: front on MACs."""
    study = _study(tmp_path, ["minimize"])
    _add(study, 0.3, None, 100)
    _add(study, 0.2, None, 200)
    _add(study, 0.4, None, 150)  # dominated by 0 (worse loss, more MACs)
    assert cost_key(study.trials) == "macs"
    assert [t.number for t in pareto_front(study)] == [0, 1]
    best = pick_best(study)
    assert best is not None and best.number == 1


def test_pareto_mode_uses_optuna_best_trials(tmp_path: Path):
    study = _study(tmp_path, ["maximize", "minimize"])
    for m, lat, macs, over in HAND:
        _add(study, m, lat, macs, over)
    front = {t.number for t in pareto_front(study)}
    assert front == {t.number for t in study.best_trials}
    assert front == {0, 1, 4, 5}  # the infeasible 0.95 @ 5.0 is left out
    best = pick_best(study)
    assert best is not None and best.number == 0


def test_no_feasible_trial(tmp_path: Path):
    study = _study(tmp_path, ["maximize"])
    _add(study, 0.9, 2.0, 100, over=0.5)
    assert pareto_front(study) == []
    assert pick_best(study) is None


def test_front_survives_reload_from_journal(tmp_path: Path):
    study = _study(tmp_path, ["maximize"])
    for m, lat, macs, over in HAND:
        _add(study, m, lat, macs, over)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    again = optuna.load_study(study_name="autocompress", storage=storage)
    assert [t.number for t in pareto_front(again)] == [5, 1, 0, 4]


def test_front_is_on_the_cost_the_budget_limits(tmp_path: Path):
    """A size budget: the front is metric vs size, even when latency predictions exist."""
    study = _study(tmp_path, ["maximize"])
    study.set_user_attr("autocompress", {"budget": "size<=50%"})
    for m, lat, size in [(0.9, 1.0, 300), (0.8, 2.0, 100), (0.7, 0.5, 200)]:
        study.add_trial(create_trial(value=m, user_attrs={
            "metric": m, "predicted_latency_ms": lat, "macs": 10, "size_bytes": size,
            "feasible": True}, constraints={"size": -0.1}))
    assert budget_cost_key(study) == "size_bytes"
    assert [t.number for t in pareto_front(study)] == [1, 0]  # 0.7 @ 200 B is dominated
    study.set_user_attr("autocompress", {"budget": "size<=50%,latency<=2ms"})
    assert budget_cost_key(study) == "predicted_latency_ms"  # latency first
    assert [t.number for t in pareto_front(study)] == [2, 0]
