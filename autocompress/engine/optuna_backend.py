"""The Optuna controller: a resumable study in a journal file, samplers, pruner, trial loop.

The study lives in ``<out>/study.log`` (:func:`~autocompress.engine.journal.journal_storage`:
fsynced once per finished trial, a trial's attributes written in one append)
unless a storage URL is given. Re-running the same command
after a kill loads it: finished trials are kept, trials left RUNNING by a dead
process on this host are marked FAIL (and their parameters queued again), and
trials are run until ``trials`` are finished (COMPLETE + PRUNED) *and evaluated*.

Each trial is :func:`autocompress.engine.trial.run_trial`. A candidate screened out as
over the budget, or timed on the target and found over it, is recorded (the constrained
samplers learn the budget's edge from it) but never fine-tuned: it costs milliseconds
or a timing, not a fine-tune, so it does not count toward ``trials``. Without this a
sampler that explores lost most of its evaluations at a tight budget, while a baseline
that only proposes candidates under the budget fine-tuned all of them. At most
``SKIPPED_PER_TRIAL`` such skips per counted trial are allowed, so a budget the space
can hardly meet ends the run instead of looping. A filled proposal with nowhere new to
walk is told the earlier trial's outcome (``repeat_of``) and does not count either.
A different configuration for an existing study is a :class:`ConfigError`.

Baselines (``uniform``, ``greedy``) enqueue their candidates
(``study.enqueue_trial``) and go through the same ask/tell loop and trial.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autocompress.engine.baselines import params_key
from autocompress.engine.config import RESUME_KEYS, SearchConfig
from autocompress.engine.journal import set_user_attrs
from autocompress.engine.objective import Objective, Screening, TrialOutcome
from autocompress.engine.record import DONE
from autocompress.engine.taken import TakenPolicies
from autocompress.engine.trial import Proposals, Repeat, run_trial
from autocompress.errors import ConfigError, MethodError
from autocompress.space import ResolvedSpace

LOG = logging.getLogger(__name__)
MAX_FAILURES_IN_A_ROW = 3
SKIPPED_PER_TRIAL = 20  # candidates judged over the budget allowed per counted trial

Planner = Callable[[], Iterator[dict[str, Any]]]
OnTrial = Callable[[FrozenTrial | None, TrialOutcome | Repeat | None], None]


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental options; the CLI has a bar."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_sampler(strategy: str, mode: str, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """The sampler of a strategy. Constraints come from ``trial.set_constraint`` (Optuna 5).

    Baselines enqueue fixed parameters; their sampler (random) only fills
    parameters a candidate leaves out, which ours never do.
    """
    if strategy == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=min(10, max(3, trials // 3)),
        )
    if strategy == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 3)))
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(kind: str, mode: str, strategy: str, report_every: int) -> optuna.pruners.BasePruner:
    """Median pruning of fine-tunes in constrained mode for sampled strategies, else none.

    Baselines are not pruned: each of their few candidates is a planned point.
    """
    if kind == "none" or mode != "constrained" or strategy in ("uniform", "greedy"):
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(report_every, 1))


def open_study(
    storage: str | BaseStorage,
    study_name: str,
    directions: list[str],
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    config: dict[str, Any],
    where: str,
) -> tuple[optuna.Study, bool]:
    """Load the study (checking it was made by the same configuration) or create it.

    Returns ``(study, created)``. ``config`` is stored as the ``autocompress``
    user attribute on creation.
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                    pruner=pruner, directions=directions,  # type: ignore[arg-type]
                                    load_if_exists=True)
    stored = study.user_attrs.get("autocompress")
    if stored is None:
        if study.trials:
            raise ConfigError(
                f"study {study_name!r} in {where} was not made by autocompress search "
                "(no configuration stored); use a new --out or --study-name"
            )
        study.set_user_attr("autocompress", config)
        return study, True
    diff = [k for k in RESUME_KEYS if _stored_setting(stored, k) != config.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{where} already holds a study made with {k}={_stored_setting(stored, k)!r}, not "
            f"{config.get(k)!r}; "
            "re-run with the same settings to resume it, or use a new --out for a new search"
        )
    return study, False


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: optuna.Study, requeue: bool = True) -> list[int]:
    """Mark RUNNING trials of dead processes on this host FAIL; queue their params again.

    A trial records ``worker = host:pid`` when it starts; a RUNNING trial
    whose process no longer exists was killed and would never finish.
    Returns the trial numbers marked FAIL.
    """
    host = socket.gethostname()
    failed: list[int] = []
    storage = study._storage  # noqa: SLF001 - Optuna's public storage API lives there
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        w_host, _, w_pid = worker.rpartition(":")
        if w_host != host or not w_pid.isdigit() or _alive(int(w_pid)):
            continue
        storage.set_trial_user_attr(t._trial_id, "error", "process died (resumed run)")  # noqa: SLF001
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
        failed.append(t.number)
        if requeue and t.params and len(t.params) == len(t.distributions):
            study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
    return failed


def evaluated(trial: FrozenTrial) -> bool:
    """Whether a finished trial was evaluated (fine-tuned and scored): what ``--trials`` counts.

    A trial with ``feasible == False`` was predicted over the budget and skipped.
    """
    return trial.state in DONE and trial.user_attrs.get("feasible") is not False


def record_repeat(trial: optuna.Trial, repeat: Repeat) -> None:
    """Record on ``trial`` the earlier trial's outcome (:meth:`Repeat.record`).

    The trial takes the earlier one's constraints, so the sampler learns what the proposal
    leads to; ``feasible`` is False so the repeat is neither counted nor picked.
    """
    for key, value in repeat.earlier.constraints.items():
        trial.set_constraint(key, float(value))
    set_user_attrs(trial, repeat.record())


def tell_repeat(study: optuna.Study, trial: optuna.Trial, repeat: Repeat) -> FrozenTrial:
    """Finish ``trial`` as a repeat of the earlier trial (:func:`record_repeat`, then ``tell``)."""
    record_repeat(trial, repeat)
    if repeat.pruned:
        return study.tell(trial, state=TrialState.PRUNED)
    return study.tell(trial, repeat.earlier.values)


def n_done(study: optuna.Study) -> int:
    """Finished, evaluated trials (what ``--trials`` counts; see :func:`evaluated`)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=DONE) if evaluated(t))


def n_skipped(study: optuna.Study) -> int:
    """Finished trials skipped because the cost model put them over the budget."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=DONE) if not evaluated(t))


def n_finished(study: optuna.Study) -> int:
    """Every finished trial, skipped or not (Ray Tune counts its samples this way)."""
    return len(study.get_trials(deepcopy=False, states=DONE))


def _stored_setting(stored: dict[str, Any], key: str) -> Any:
    """A study's stored setting; one a study made before the setting existed counts as its
    default (a study from before ``precision`` was fp32)."""
    if key in stored or key not in SearchConfig.model_fields:
        return stored.get(key)
    return SearchConfig.model_fields[key].default


def record_outcome(trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """What a trial records of its outcome (the search <-> export contract).

    One ``set_constraint`` per budget clause (the constrained samplers read them),
    then the :class:`~autocompress.engine.record.TrialRecord`, in one storage write on a
    journal file (:func:`~autocompress.engine.journal.set_user_attrs`).
    """
    for key, value in outcome.constraints.items():
        trial.set_constraint(key, float(value))
    set_user_attrs(trial, outcome.user_attrs)


def add_skipped(study: optuna.Study, space: ResolvedSpace, params: dict[str, Any],
                outcome: TrialOutcome) -> None:
    """Record a candidate screened out before a trial was created: one finished trial, one write.

    It holds what a skipped trial run through ``ask``/``tell`` holds (values,
    constraints, the contract's user attributes), plus ``screened: True``.
    """
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=space.distributions, values=outcome.values,
        constraints=outcome.constraints,
        user_attrs={"worker": worker_id(), **outcome.user_attrs, "screened": True},
    ))


def run_trials(
    study: optuna.Study,
    objective: Objective,
    total: int,
    planner: Planner | None = None,
    on_trial: OnTrial | None = None,
    provenance: dict[str, Any] | None = None,
    count_skipped: bool = False,
) -> int:
    """Run trials until ``total`` are finished and evaluated; returns how many were evaluated now.

    ``planner`` (baselines) yields parameter dicts to enqueue; when it runs
    dry the loop stops early. Candidates judged over the budget are told to
    Optuna and do not count (see the module docstring); after
    ``SKIPPED_PER_TRIAL * total`` of them the loop stops with a warning.
    ``count_skipped``: count them like any trial (for a budget no corner of the
    space meets, where nothing is left to hunt for). A trial whose evaluation raises is marked FAIL
    with its error and the loop goes on; three failures in a row stop the run
    with a :class:`MethodError`.
    """
    space = objective.space
    plan = planner() if planner is not None else None
    done_keys = {params_key(t.params) for t in study.get_trials(deepcopy=False, states=DONE)}
    # A random search learns nothing from what it was told, so its candidates are drawn and
    # screened before a trial exists: one over the budget is recorded in one journal line
    # instead of ~35 storage calls (most of a skipped candidate's cost). Seeded by the run's
    # seed and the trials so far, so a resumed run draws new candidates.
    screen_rng = (random.Random(f"{objective.settings.seed}:{len(study.get_trials(deepcopy=False))}")
                  if plan is None and isinstance(study.sampler, optuna.samplers.RandomSampler)
                  else None)
    ran = 0
    failures = 0
    proposals = Proposals(objective, TakenPolicies(study))
    skipped, max_skipped = n_skipped(study), SKIPPED_PER_TRIAL * total
    counted = n_finished if count_skipped else n_done
    while counted(study) < total:
        if skipped >= max_skipped:
            LOG.warning(
                "stopped after %d candidates judged over the budget (%d of %d trials "
                "evaluated): the budget is hard to meet in this search space; loosen it "
                "or widen the space's ranges", skipped, n_done(study), total)
            break
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if plan is not None and not waiting:
            nxt = next((p for p in plan if params_key(p) not in done_keys), None)
            if nxt is None:
                LOG.info("the %s baseline has no more candidates", objective.strategy)
                break
            study.enqueue_trial(nxt)
        frozen: FrozenTrial | None = None
        screening: Screening | None = None  # of the candidate enqueued below, if screened
        screened = None
        if screen_rng is not None and not waiting:
            params = space.draw_params(screen_rng)
            screened = space.policy_from_params(params)
            screening = objective.screen(screened)
            if not screening.feasible:
                prov = {"study": study.study_name, "trial": len(study.get_trials(deepcopy=False)),
                        **(provenance or {})}
                outcome = objective(screened, provenance=prov, screening=screening)
                add_skipped(study, space, params, outcome)
                skipped += not count_skipped
                ran += count_skipped
                if on_trial:
                    on_trial(None, outcome)
                continue
            study.enqueue_trial(params)  # evaluated in the trial below, without predicting again
        trial = study.ask()
        trial.set_user_attr("worker", worker_id())
        try:
            drawn = space.suggest_params(trial)

            def report(step: int, metric: float, trial: optuna.Trial = trial) -> bool:
                trial.report(metric, step)
                return trial.should_prune()

            prov = {"study": study.study_name, "trial": trial.number, **(provenance or {})}
            result = run_trial(
                proposals, str(trial.number), drawn, planned=_planned(trial), report=report,
                provenance=prov, screening=screening, trial=trial,
                policy=screened if screening is not None else None)
            if isinstance(result, Repeat):
                frozen = tell_repeat(study, trial, result)
                if on_trial:
                    on_trial(frozen, result)
                continue
            outcome = result
            record_outcome(trial, outcome)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, the search goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            study.tell(trial, state=TrialState.FAIL)
            failures += 1
            if on_trial:
                on_trial(None, None)
            if failures >= MAX_FAILURES_IN_A_ROW:
                raise MethodError(
                    f"{failures} trials in a row failed; the last one (trial {trial.number}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            continue
        failures = 0
        if outcome.pruned:
            frozen = study.tell(trial, state=TrialState.PRUNED)
        else:
            frozen = study.tell(trial, outcome.values)
        done_keys.add(params_key(frozen.params))
        proposals.finished(frozen)
        if outcome.feasible or count_skipped:
            ran += 1
        else:
            skipped += 1
        if on_trial:
            on_trial(frozen, outcome)
    return ran


def _planned(trial: optuna.Trial) -> bool:
    """A trial whose parameters are evaluated as they are (the warm start, a requeued one)."""
    return "warm_start" in trial.user_attrs
