"""Budget filling across processes: workers of one study share the policies they take.

Two workers are two prepared runs (each its own Objective and storage connection, as two
processes have) on one real SQLite study, taking turns trial by trial, so that each fills
while the other's trials are in the study: what one trained, the other must not train again.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autocompress.engine.config import SearchConfig
from autocompress.engine.optuna_backend import evaluated
from autocompress.engine.storage import open_storage
from autocompress.engine.taken import CLAIM_ATTR, REPEAT_ATTR, TakenPolicies, policy_digest
from autocompress.engine.workers import optuna_objective, prepare_run, run_worker

TRIALS = 8


@pytest.fixture(scope="module")
def shared_study(digits_mlp_task, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    url = f"sqlite:///{tmp / 'study.db'}"
    cfg = SearchConfig.build(None, {
        "task": "digits-mlp", "budget": "macs<=40%", "target": "torch-1t", "trials": TRIALS,
        "finetune_steps": 5, "report_every": 5, "val_samples": 100, "strategy": "tpe",
        "seed": 0, "storage": url, "study_name": "mlp", "out": str(tmp / "run"),
        "export": False,
    })
    workers = []
    for name in ("a:1", "b:2"):  # what `autocompress worker` builds, once per process
        prep = prepare_run(cfg, task=digits_mlp_task,
                           storage=open_storage(url, heartbeat_interval=None))
        workers.append((prep.study, optuna_objective(prep.objective, {"worker": name})))
    turns = 0
    while sum(evaluated(t) for t in workers[0][0].get_trials(deepcopy=False)) < TRIALS:
        study, fn = workers[turns % 2]
        run_worker(study, fn, TRIALS, max_trials=1)
        turns += 1
        assert turns < 4 * TRIALS, "the workers stopped making progress"
    return optuna.load_study(study_name="mlp", storage=url).get_trials()


def test_workers_fill_their_proposals_to_the_budget_edge(shared_study):
    trained = [t for t in shared_study if evaluated(t)]
    assert len(trained) == TRIALS
    workers = {t.user_attrs["policy"]["provenance"]["worker"] for t in trained}
    assert workers == {"a:1", "b:2"}
    sampled = [t for t in trained if "warm_start" not in t.user_attrs]
    fills = [t.user_attrs["policy"]["provenance"].get("fill") for t in sampled]
    assert sampled and all(fills), "a worker trained a TPE proposal as drawn, not filled"


def test_no_two_workers_train_the_same_policy(shared_study):
    """The MLP's edge under macs<=40% holds few policies: without shared claims the second
    worker trains the edge points the first one trained."""
    trained = [t for t in shared_study if t.user_attrs.get("metric") is not None
               and REPEAT_ATTR not in t.user_attrs]
    digests = [policy_digest(t.user_attrs["policy"]) for t in trained]
    assert len(digests) == len(set(digests))
    # each trained policy (filled or, as the warm start, planned) was claimed, under its own
    # digest, before its fine-tune
    assert any(t.user_attrs["policy"]["provenance"].get("fill") for t in trained)
    for t in trained:
        assert t.user_attrs[CLAIM_ATTR] == policy_digest(t.user_attrs["policy"])
    # proposals walked off policies taken by the other worker, not only by their own
    walked = [t for t in trained if "neighbour" in (t.user_attrs["policy"]["provenance"].get("fill") or {})]
    assert walked


def test_a_claim_lapses_when_its_trial_fails():
    """A dead worker's failed trial does not keep its policy from the retry that re-runs it."""
    study = optuna.create_study()
    policy = {"layers": {"net.1": {"rank": 0.25}}}
    trial = study.ask()
    TakenPolicies(study).claim(policy, trial)
    assert not TakenPolicies(study).is_new(policy)  # running elsewhere: taken
    study.tell(trial, state=TrialState.FAIL)
    assert TakenPolicies(study).is_new(policy)
    # a finished trial that trained it keeps it, and is the one a repeat is told about
    done = study.ask()
    done.set_user_attr("metric", 0.9)
    done.set_user_attr("policy", policy)
    study.tell(done, 0.9)
    taken = TakenPolicies(study)
    assert not taken.is_new(policy) and taken.earlier(policy).number == done.number


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the dead trial is asked by hand
def test_a_worker_leaves_no_dead_workers_trial_running(tmp_path):
    """The study already holds its trials when a worker looks, but another worker died
    mid-trial: the dead trial is failed once stale and its retry run, not left RUNNING."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=1,
                           grace_period=2)
    study = optuna.create_study(storage=storage)
    dead = study.ask()
    x = dead.suggest_float("x", 0, 1)
    storage.record_heartbeat(dead._trial_id)  # one beat, then its worker was killed
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = run_worker(study, lambda t: t.suggest_float("x", 0, 1), 2, poll_s=0.2)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states[dead.number] == TrialState.FAIL
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert result.trials_run == 1 and study.trials[-1].params == {"x": x}
