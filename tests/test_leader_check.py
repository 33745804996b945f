"""In-loop measurement of would-be leaders, on real searches with a torch latency target."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autocompress.search import SearchConfig, search
from autocompress.search.api import prepare_run
from autocompress.search.leader_check import MEASURED_GUARD, LeaderCheck

SETTINGS = dict(task="digits", budget="latency<=0.8x", target="torch-1t-b8", trials=4,
                finetune_steps=10, export=False, report_every=5, val_samples=200)


def _done(out):
    storage = JournalStorage(JournalFileBackend(str(out / "study.log")))
    study = optuna.load_study(study_name="autocompress", storage=storage)
    return study, sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def test_would_be_leaders_are_measured_and_judged_on_it(digits_task, tmp_path):
    out = tmp_path / "run"
    result = search(digits_task, out=out, **{k: v for k, v in SETTINGS.items() if k != "task"})
    study, trials = _done(out)
    checked = [t for t in trials if "latency_check" in t.user_attrs]
    assert checked  # the first candidate with a metric leads by definition
    best_met = None
    for t in trials:
        check = t.user_attrs.get("latency_check")
        metric = t.user_attrs["metric"]
        if check is None:  # not measured: it did not beat the best measured one that met
            assert metric is None or best_met is None or metric <= best_met
            continue
        assert check["measured_ms"] > 0 and check["baseline_ms"] > 0 and check["scale"] >= 1
        assert t.user_attrs["measure_s"] > 0
        over = t.constraints["latency"]
        # told to the sampler with the guard: met only MEASURED_GUARD under the limit
        assert over == pytest.approx(check["measured_ms"] / (0.8 * check["baseline_ms"]) - 1
                                     + MEASURED_GUARD)
        assert check["meets"] == (over <= 0) == t.user_attrs["feasible"]
        assert t.value == (metric if check["meets"] else 0.0)  # a miss is worth nothing
        if check["meets"]:
            best_met = metric
    # verify takes a pick's in-loop measurement; a pick never measured in the loop ties the
    # best leader that met (not measured: it did not beat it) and verify times it itself
    if result.best_trial is not None:
        entry = study.user_attrs["latency_checks"][str(result.best_trial)]
        pick = next(t for t in trials if t.number == result.best_trial)
        assert entry["meets"] is True
        if "latency_check" in pick.user_attrs:
            assert entry.get("in_loop") is True
        else:
            assert "in_loop" not in entry and pick.user_attrs["metric"] == best_met
    # a resumed run takes up the leader and the scale
    cfg = SearchConfig(out=str(out), **SETTINGS)
    again = prepare_run(cfg, digits_task)
    lc = again.objective.leader_check
    assert lc is not None and lc.leader == best_met and len(lc.ratios) == len(checked)


def test_a_measured_miss_is_not_feasible_and_scales_later_predictions(digits_task, tmp_path):
    """The judging, with the measurement given: a candidate timed 10x the uncompressed model
    misses ``0.8x`` whatever it was predicted at; the scale then grows later predictions."""
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SETTINGS, "finetune_steps": 2})
    prep = prepare_run(cfg, digits_task)
    objective = prep.objective
    policy = prep.space.policy_from_params(prep.space.uniform_params(prune=0.5, bits=32))
    before = objective.predict(policy).latency_ms
    slow = LeaderCheck(measure=lambda p: (10.0, 1.0))
    objective.leader_check = slow
    outcome = objective(policy)
    assert not outcome.feasible and outcome.values == [0.0] and outcome.metric is not None
    assert outcome.constraints["latency"] == pytest.approx(10.0 / 0.8 - 1 + MEASURED_GUARD)
    assert slow.leader is None and slow.scale > 1  # it did not take the lead
    assert objective.predict(policy).latency_ms == pytest.approx(before * slow.scale)
    fast = LeaderCheck(measure=lambda p: (0.01, 1.0))
    objective.leader_check = fast
    met = objective(policy)
    assert met.feasible and met.values == [met.metric] and fast.leader == met.metric
    assert fast.scale == 1.0  # ran faster than predicted: the budget is never loosened
    # a measurement 1% under the limit does not meet it: timings repeat only to a few percent
    close = LeaderCheck(measure=lambda p: (0.8 * 0.99, 1.0))
    objective.leader_check = close
    near = objective(policy)
    assert not near.feasible and near.values == [0.0] and close.leader is None
    assert near.constraints["latency"] == pytest.approx(-0.01 + MEASURED_GUARD)
    assert near.user_attrs["latency_check"]["measured_ms"] == pytest.approx(0.792)


def test_no_leader_checks_when_turned_off_or_without_a_latency_budget(digits_task, tmp_path):
    base = {k: v for k, v in SETTINGS.items() if k != "task"}
    search(digits_task, out=tmp_path / "off", **{**base, "measure_leaders": False, "trials": 2})
    search(digits_task, out=tmp_path / "macs", **{**base, "budget": "macs<=60%", "trials": 2})
    for name in ("off", "macs"):
        _, trials = _done(tmp_path / name)
        assert trials and not any("latency_check" in t.user_attrs for t in trials)


def test_a_run_ends_once_measurements_put_every_corner_over_the_budget(digits_task, tmp_path):
    """The first would-be leader runs 10x the uncompressed model: scaled by that, no corner of
    the space meets ``0.8x`` and no later candidate can, so the loop ends instead of skipping
    SKIPPED_PER_TRIAL candidates per trial."""
    from autocompress.search.optuna_backend import n_done, run_trials

    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SETTINGS, "finetune_steps": 2})
    prep = prepare_run(cfg, digits_task)
    objective = prep.objective
    assert not objective.out_of_reach()  # reachable as predicted
    objective.leader_check = LeaderCheck(measure=lambda p: (10.0, 1.0))
    run_trials(prep.study, objective, total=4)
    assert objective.out_of_reach() and objective.leader_check.scale > 5
    assert n_done(prep.study) == 0
    assert len(prep.study.trials) == 1  # the measured miss, and nothing after it


def test_fill_predictions_are_remembered_until_the_measured_scale_changes(digits_task, tmp_path):
    """The fill screens the same points trial after trial: a point is predicted once per
    scale, and a measured miss (a larger scale) makes it predicted again, scaled."""
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SETTINGS, "finetune_steps": 2})
    prep = prepare_run(cfg, digits_task)
    objective = prep.objective
    screened = []
    screen = objective.screen
    objective.screen = lambda policy: screened.append(policy) or screen(policy)  # type: ignore[method-assign]
    params = prep.space.uniform_params(prune=0.5, bits=32)
    feasible, constraints = objective._screen_params(params)
    assert objective._screen_params(dict(params)) == (feasible, constraints)
    assert len(screened) == 1
    objective.leader_check = LeaderCheck(measure=lambda p: (10.0, 1.0))
    objective(prep.space.policy_from_params(params))  # measured 10x the uncompressed model
    scale = objective.leader_check.scale
    assert scale > 1
    before = len(screened)
    _, scaled = objective._screen_params(params)
    assert len(screened) == before + 1
    assert scaled["latency"] + 1 == pytest.approx((constraints["latency"] + 1) * scale)


def test_before_a_run_ends_its_corner_is_measured_and_that_settles_it(digits_task, tmp_path):
    """One slow measurement scales every corner over ``0.8x``; the corner itself, timed,
    meets it, so the run is not out of reach, and the corner's ratio joins the scale."""
    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SETTINGS, "finetune_steps": 2})
    prep = prepare_run(cfg, digits_task)
    objective = prep.objective
    times = iter([(10.0, 1.0), (0.01, 1.0)])  # the trial, then the corner (then fast)
    timed = []
    objective.leader_check = LeaderCheck(
        measure=lambda p: timed.append(p) or next(times, (0.01, 1.0)))
    objective(prep.space.policy_from_params(prep.space.uniform_params(prune=0.5, bits=32)))
    assert objective.leader_check.scale > 5 and len(timed) == 1
    assert not objective.out_of_reach()  # measured, the corner meets the budget
    assert len(timed) == 2 and len(objective.leader_check.ratios) == 2
    assert objective.leader_check.leader is None  # the corner was timed, not trained
    assert not objective.out_of_reach() and len(timed) == 2  # settled: not timed again
    # the median of the slow trial and the fast corner is still > 5x, but the scale is
    # capped where the corner, which met when measured, is predicted to meet: candidates
    # at the corner are trained (and judged on their own measurements), not screened out
    assert 1.0 <= objective.leader_check.scale < 5
    assert objective.cheapest_corner()[0]
    from autocompress.search.optuna_backend import n_done, run_trials

    run_trials(prep.study, objective, total=2)
    # the corner, which met when timed, is trained as it is (budget filling moves proposals
    # toward the smallest policy, which on a latency target need not be the fastest corner)
    corner = [t for t in prep.study.trials if t.user_attrs.get("planned") == "measured corner"]
    assert len(corner) == 1 and corner[0].user_attrs["feasible"]
    assert "fill" not in corner[0].user_attrs["policy"]["provenance"]
    assert n_done(prep.study) >= 1  # without the cap and the queued corner: none trained


@pytest.mark.parametrize("corner_ms", [0.01, 10.0])
def test_a_budget_the_table_puts_out_of_reach_is_settled_by_timing_the_corner(
        digits_task, tmp_path, corner_ms):
    """Before any trial, the table predicts every corner over ``0.05x``. Timed, the cheapest
    corner settles it: when it meets, predictions are scaled down to where it is predicted to
    meet (a scale below 1) and it is trained first; when it misses, the run warns as before."""
    from autocompress.search.api import _check_reach
    from autocompress.search.optuna_backend import n_done, run_trials

    cfg = SearchConfig(out=str(tmp_path / "run"), **{**SETTINGS, "budget": "latency<=0.05x",
                                                      "finetune_steps": 2, "measure_leaders": False})
    prep = prepare_run(cfg, digits_task)
    objective = prep.objective
    assert not prep.reachable and not objective.cheapest_corner()[0]  # predicted out of reach
    timed = []
    objective.leader_check = LeaderCheck(
        measure=lambda p: timed.append(p) or (corner_ms, 1.0))
    said: list[str] = []
    reachable = _check_reach(objective, prep.budget, said.append)
    assert len(timed) == 1 and reachable == (corner_ms < 1)
    if not reachable:
        assert "timed, misses it too" in said[0] and objective.leader_check.cap is None
        return
    assert "timed, meets it" in said[0]
    assert objective.leader_check.scale < 1 and objective.cheapest_corner()[0]
    run_trials(prep.study, objective, total=2)
    corner = [t for t in prep.study.trials if t.user_attrs.get("planned") == "measured corner"]
    assert len(corner) == 1 and corner[0].user_attrs["feasible"]
    assert n_done(prep.study) == 2  # without the timing: every candidate screened out
