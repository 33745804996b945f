"""The Optuna controller: a resumable study in a journal file, samplers, pruner, trial loop.

The study lives in ``<out>/study.log`` (:func:`~autocompress.search.journal.journal_storage`:
fsynced once per finished trial, a trial's attributes written in one append)
unless a storage URL is given. Re-running the same command
after a kill loads it: finished trials are kept, trials left RUNNING by a dead
process on this host are marked FAIL (and their parameters queued again), and
trials are run until ``trials`` are finished (COMPLETE + PRUNED) *and evaluated*.

A candidate the cost model puts over the budget is recorded (the constrained
samplers learn the budget's edge from it) but never fine-tuned: it costs
milliseconds, not a fine-tune, so it does not count toward ``trials``. Without
this a sampler that explores lost most of its evaluations at a tight budget
(at ``latency<=0.25x`` on digits, TPE fine-tuned 1-10 of 30 trials while the
uniform baseline, which only proposes candidates under the budget, fine-tuned
all 30). At most ``SKIPPED_PER_TRIAL`` such skips per counted trial are allowed,
so a budget the space can hardly meet ends the run instead of looping. When the in-loop
measurements (:mod:`autocompress.search.leader_check`) scale the predictions so far that no
corner of the space meets the budget, and the cheapest corner, timed, misses it too, no later
candidate can meet it, and the run ends.
Filling (``fill_budget``) maps many proposals to one edge point: before stop 13, TPE
fine-tuned 9-14 distinct policies in 20 trials on the digits CNN and 1-2 on the MLP. A
proposal filled onto a policy an earlier trial evaluated (or, in a study other processes
share, one that another trial claimed: :mod:`autocompress.search.taken`) is moved to a
neighbour of it on the budget's edge that no trial has taken (:mod:`autocompress.search.fill`). When
there is none, it is not fine-tuned again: it is told that trial's outcome (``repeat_of``)
and does not count either. After ``MAX_REPEATS_IN_A_ROW`` such repeats in a row the
budget's edge is taken as exhausted: filling stops for the rest of the run and proposals
are evaluated as drawn.
A different configuration for an existing study is a :class:`ConfigError`.

Baselines (``uniform``, ``greedy``) enqueue their candidates
(``study.enqueue_trial``) and go through the same ask/tell loop and objective.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import ConfigError, MethodError
from autocompress.policy import CompressionPolicy
from autocompress.search.baselines import params_key
from autocompress.search.config import RESUME_KEYS
from autocompress.search.journal import journal_storage, set_user_attrs
from autocompress.search.objective import Objective, Screening, TrialOutcome
from autocompress.search.taken import REPEAT_ATTR, TakenPolicies
from autocompress.space import ResolvedSpace

LOG = logging.getLogger(__name__)
STUDY_FILE = "study.log"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILURES_IN_A_ROW = 3
SKIPPED_PER_TRIAL = 20  # candidates predicted over the budget allowed per counted trial
# Filled proposals landing on evaluated policies in a row before filling stops for the run (a
# small space can hold fewer edge points than trials: the MLP's has a handful).
MAX_REPEATS_IN_A_ROW = 5

Planner = Callable[[], Iterator[dict[str, Any]]]
OnTrial = Callable[[FrozenTrial | None, TrialOutcome | None], None]


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns about experimental options; the CLI has a bar."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_for(out_dir: Path, url: str | None = None) -> str | BaseStorage:
    """``url`` opened, or a journal file ``<out_dir>/study.log``.

    ``url`` (a database URL or a journal file path) is opened by
    :func:`autocompress.search.workers.open_storage` (a driver SQLAlchemy can import,
    heartbeat settings shared with ``autocompress worker``, one-line errors for an
    unreachable database or an unknown URL scheme).
    """
    if url:
        from autocompress.search.workers import open_storage

        return open_storage(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    return journal_storage(out_dir / STUDY_FILE)


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
    diff = [k for k in RESUME_KEYS if stored.get(k) != config.get(k)]
    if diff:
        k = diff[0]
        raise ConfigError(
            f"{where} already holds a study made with {k}={stored.get(k)!r}, not {config.get(k)!r}; "
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


def record_repeat(trial: optuna.Trial, earlier: FrozenTrial, fill: dict[str, Any] | None) -> None:
    """Record on ``trial`` that its proposal was filled onto ``earlier``'s policy.

    The trial takes ``earlier``'s constraints and metric, so the sampler learns what the
    proposal leads to; ``feasible`` is False so the repeat is neither counted nor picked
    (the earlier trial is), and ``repeat_of`` says why.
    """
    for key, value in earlier.constraints.items():
        trial.set_constraint(key, float(value))
    set_user_attrs(trial, {
        REPEAT_ATTR: earlier.number, "feasible": False, "pruned": earlier.state == TrialState.PRUNED,
        "policy": earlier.user_attrs.get("policy"), "metric": earlier.user_attrs.get("metric"),
        "violations": earlier.user_attrs.get("violations", {}),
        "strategy": earlier.user_attrs.get("strategy"), "fill": fill,
        "cost_s": float((fill or {}).get("fill_s", 0.0)),
    })


def tell_repeat(study: optuna.Study, trial: optuna.Trial, earlier: FrozenTrial,
                fill: dict[str, Any] | None) -> FrozenTrial:
    """Finish ``trial`` with ``earlier``'s outcome (:func:`record_repeat`, then ``tell``)."""
    record_repeat(trial, earlier, fill)
    if earlier.state == TrialState.PRUNED or earlier.values is None:
        return study.tell(trial, state=TrialState.PRUNED)
    return study.tell(trial, earlier.values)


@dataclass
class Proposals:
    """What a trial trains for the parameters its sampler drew: filled, walked, claimed.

    With filling on (:meth:`Objective.candidate`), the proposal moves to the budget's edge;
    an edge point some trial of the study trained or claimed, in any process
    (:class:`~autocompress.search.taken.TakenPolicies`, read again before each fill), walks
    to one none did. When the walk finds none, the trial is to be told the earlier trial's
    outcome, a repeat; after ``MAX_REPEATS_IN_A_ROW`` of them in a row, filling stops for
    the rest of this process's run and proposals are trained as drawn. The trained policy
    is claimed in the storage before its fine-tune. Shared by the search loop
    (:func:`run_trials`) and ``autocompress worker`` (:func:`~autocompress.search.workers.optuna_objective`).
    """

    objective: Objective
    taken: TakenPolicies | None = None
    repeats_in_a_row: int = 0
    #: Seconds the latency table spent timing new layer shapes while the last proposal was
    #: filled: recorded on its trial (``fill_lut_s``, :meth:`record`), so the one-off
    #: measurements are told apart from the controller's time even in a killed run.
    fill_lut_s: float = 0.0

    def policy_for(self, trial: optuna.Trial, drawn: dict[str, Any]
                   ) -> tuple[CompressionPolicy, dict[str, Any] | None, FrozenTrial | None]:
        """``(policy, fill, earlier)``: ``earlier`` set means tell ``trial`` a repeat of it."""
        objective = self.objective
        if self.taken is None:
            self.taken = TakenPolicies(trial.study)
        elif objective.fill:
            self.taken.refresh()
        taken = self.taken
        measured0 = objective.measure_seconds()
        policy, fill = objective.candidate(
            drawn, planned="warm_start" in trial.user_attrs,
            is_new=lambda p: taken.is_new(p.to_dict()),
            rng=random.Random(f"{objective.settings.seed}:{trial.number}"))
        self.fill_lut_s = objective.measure_seconds() - measured0
        earlier = taken.earlier(policy.to_dict()) if fill is not None else None
        if earlier is not None and self.repeats_in_a_row < MAX_REPEATS_IN_A_ROW:
            self.repeats_in_a_row += 1
            return policy, fill, earlier
        if earlier is not None:  # filling keeps repeating itself: explore as drawn
            LOG.info("%d filled proposals in a row landed on evaluated policies; "
                     "proposals are evaluated as drawn from here", self.repeats_in_a_row)
            objective.fill = False
            policy, fill = objective.space.policy_from_params(drawn), None
        self.repeats_in_a_row = 0
        if fill is not None:
            taken.claim(trial, policy.to_dict())
        return policy, fill, None

    def record(self, trial: optuna.Trial, outcome: TrialOutcome) -> None:
        """:func:`record_outcome`, with the table's seconds spent filling this trial's proposal."""
        record_outcome(trial, replace(outcome, user_attrs={**outcome.user_attrs,
                                                           "fill_lut_s": self.fill_lut_s}))

    def finished(self, trial: FrozenTrial) -> None:
        """A trial this process finished: its policy is taken without reading the study again."""
        if self.taken is not None:
            self.taken.add(trial)


def n_done(study: optuna.Study) -> int:
    """Finished, evaluated trials (what ``--trials`` counts; see :func:`evaluated`)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=DONE) if evaluated(t))


def n_skipped(study: optuna.Study) -> int:
    """Finished trials skipped because the cost model put them over the budget."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=DONE) if not evaluated(t))


def n_finished(study: optuna.Study) -> int:
    """Every finished trial, skipped or not (Ray Tune counts its samples this way)."""
    return len(study.get_trials(deepcopy=False, states=DONE))


def record_outcome(trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """What a trial records of its outcome (the search <-> export contract).

    One ``set_constraint`` per budget clause (the constrained samplers read them),
    then the outcome's user attributes and ``pruned``, in one storage write on a
    journal file (:func:`~autocompress.search.journal.set_user_attrs`).
    """
    for key, value in outcome.constraints.items():
        trial.set_constraint(key, float(value))
    set_user_attrs(trial, {**outcome.user_attrs, "pruned": outcome.pruned})


def add_skipped(study: optuna.Study, space: ResolvedSpace, params: dict[str, Any],
                outcome: TrialOutcome) -> None:
    """Record a candidate screened out before a trial was created: one finished trial, one write.

    It holds what a skipped trial run through ``ask``/``tell`` holds (values,
    constraints, the contract's user attributes), plus ``screened: True``.
    """
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=space.distributions, values=outcome.values,
        constraints=outcome.constraints,
        user_attrs={"worker": worker_id(), **outcome.user_attrs, "pruned": outcome.pruned,
                    "screened": True},
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
    dry the loop stops early. Candidates predicted over the budget are told to
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
    proposals = Proposals(objective)
    skipped, max_skipped = n_skipped(study), SKIPPED_PER_TRIAL * total
    counted = n_finished if count_skipped else n_done
    while counted(study) < total:
        if skipped >= max_skipped:
            LOG.warning(
                "stopped after %d candidates predicted over the budget (%d of %d trials "
                "evaluated): the budget is hard to meet in this search space; loosen it "
                "or widen the space's ranges", skipped, n_done(study), total)
            break
        if objective.to_try:  # a measured corner that met the budget (Objective.out_of_reach)
            study.enqueue_trial(objective.to_try.pop(0), user_attrs={"planned": "measured corner"})
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        screening: Screening | None = None  # of the candidate enqueued below, if screened
        if plan is not None and not waiting:
            nxt = next((p for p in plan if params_key(p) not in done_keys), None)
            if nxt is None:
                LOG.info("the %s baseline has no more candidates", objective.strategy)
                break
            study.enqueue_trial(nxt)
        frozen: FrozenTrial | None = None
        outcome: TrialOutcome | None = None
        if screen_rng is not None and not waiting:
            params = space.draw_params(screen_rng)
            policy = space.policy_from_params(params)
            screening = objective.screen(policy)
            if screening.feasible:  # evaluated in the trial below, without predicting again
                study.enqueue_trial(params)
            else:
                prov = {"study": study.study_name, "trial": len(study.get_trials(deepcopy=False)),
                        **(provenance or {})}
                outcome = objective(policy, provenance=prov, screening=screening)
                add_skipped(study, space, params, outcome)
        if outcome is None:
            trial = study.ask()
            trial.set_user_attr("worker", worker_id())
            try:
                drawn = space.suggest_params(trial)
                policy, fill, earlier = proposals.policy_for(trial, drawn)
                if earlier is not None:
                    frozen = tell_repeat(study, trial, earlier, fill)
                    if on_trial:
                        on_trial(frozen, None)
                    continue

                def report(step: int, metric: float, trial: optuna.Trial = trial) -> bool:
                    trial.report(metric, step)
                    return trial.should_prune()

                prov = {"study": study.study_name, "trial": trial.number, **(provenance or {})}
                if fill is not None:
                    prov["fill"] = fill
                outcome = objective(policy, report=report, provenance=prov, screening=screening)
                proposals.record(trial, outcome)
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
        if not outcome.feasible and not count_skipped and objective.out_of_reach():
            assert objective.leader_check is not None  # out of reach only by its scale
            LOG.warning(
                "stopped after %d of %d trials: the candidates measured in the loop ran %.3fx "
                "their predicted times, at that no corner of the search space meets the budget, "
                "and the cheapest corner, timed, missed it too, so no later candidate can; "
                "loosen the budget or widen the space",
                n_done(study), total, objective.leader_check.scale)
            break
    return ran


def best_feasible(study: optuna.Study, higher_is_better: bool) -> FrozenTrial | None:
    """The COMPLETE trial with the best metric among those meeting the budget."""
    best: FrozenTrial | None = None
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if not t.user_attrs.get("feasible") or t.user_attrs.get("metric") is None:
            continue
        m = float(t.user_attrs["metric"])
        if best is None:
            best = t
            continue
        b = float(best.user_attrs["metric"])
        if (m > b) if higher_is_better else (m < b):
            best = t
    return best
