"""Shared studies: many worker processes, on any machines, filling one Optuna study.

Every process that opens a study on a database (:mod:`autocompress.engine.storage`) shares
it. Each running trial sends a heartbeat; a trial whose heartbeat stops for
``grace_period`` seconds (its worker was killed, its node preempted) is marked FAIL by
the next worker that looks, and Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues a copy of it with the
same parameters, which the next free worker runs. :func:`run_worker` is the loop each
worker runs: trials until the study holds ``n_trials`` finished (COMPLETE or PRUNED)
trials, waiting (not starting extra trials) while the last ones are running elsewhere,
so a study ends with the requested number of trials. Each trial is
:func:`autocompress.engine.trial.run_trial` (:func:`optuna_objective`).

>>> StudyCounts(finished=3, running=1, waiting=0, failed=1).remaining(5)
1
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import (
    BaseStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from autocompress.engine import session
from autocompress.engine.journal import journal_storage
from autocompress.engine.optuna_backend import (
    SKIPPED_PER_TRIAL,
    evaluated,
    record_outcome,
    record_repeat,
    worker_id,
)
from autocompress.engine.record import DONE
from autocompress.engine.session import PreparedRun
from autocompress.engine.storage import STUDY_FILE, load_shared_study, open_storage
from autocompress.engine.taken import TakenPolicies
from autocompress.engine.trial import Proposals, Repeat, run_trial
from autocompress.errors import ConfigError

if TYPE_CHECKING:
    from autocompress.engine.config import SearchConfig
    from autocompress.engine.objective import Objective
    from autocompress.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyCounts:
    """Trial counts of a study: finished (COMPLETE + PRUNED and evaluated), running, waiting
    (enqueued), failed, and skipped (finished but predicted over the budget, never
    fine-tuned; they do not count toward ``n_trials``, see ``optuna_backend``).

    >>> StudyCounts(finished=3, running=1, waiting=0, failed=1).remaining(5)
    1
    """

    finished: int
    running: int
    waiting: int
    failed: int
    skipped: int = 0

    def remaining(self, n_trials: int) -> int:
        """Trials still to start so that ``n_trials`` finish (counting the running ones)."""
        return max(0, n_trials - self.finished - self.running)


def study_counts(study: optuna.Study) -> StudyCounts:
    """Count the trials of ``study`` by state (one storage read)."""
    trials = study.get_trials(deepcopy=False)
    count = {s: 0 for s in TrialState}
    skipped = 0
    for t in trials:
        count[t.state] += 1
        skipped += t.state in DONE and not evaluated(t)
    return StudyCounts(
        finished=count[TrialState.COMPLETE] + count[TrialState.PRUNED] - skipped,
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL],
        skipped=skipped,
    )


@dataclass
class WorkerResult:
    """What one :func:`run_worker` call did: trials it ran, seconds, the study's final counts."""

    trials_run: int
    seconds: float
    counts: StudyCounts


def run_worker(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    *,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
    max_trials: int | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] | None = None,
    catch: tuple[type[Exception], ...] = (),
    count_skipped: bool = False,
) -> WorkerResult:
    """Run trials of a shared study until it holds ``n_trials`` finished trials.

    Each loop first fails stale trials (a dead worker's; the storage's retry
    callback re-enqueues them), then runs one trial (an enqueued retry first:
    ``study.ask`` pops WAITING trials before sampling). When every trial still
    needed is already running elsewhere it waits ``poll_s`` instead of
    starting a surplus one: either they finish, or their worker died and the
    heartbeat turns them into retries this worker picks up. Without a heartbeat
    (journal files) there is nothing to wait for: a running trial is trusted to
    finish. Once the study holds ``n_trials``, a worker with a heartbeat still
    waits for the trials running elsewhere and runs the retry of a dead one,
    so no trial is left RUNNING or WAITING; when two workers took the last
    slot at once, the study ends with one more trial. ``max_trials`` caps the
    trials this worker runs (a SLURM task's share), ``timeout_s`` its wall
    time. Candidates predicted over the budget
    do not count (see :class:`StudyCounts`) unless ``count_skipped``.

    >>> mem = open_storage("sqlite:///:memory:", heartbeat_interval=None)  # one thread: no beat
    >>> st = optuna.create_study(storage=mem)
    >>> run_worker(st, lambda t: t.suggest_float("x", 0, 1), 3).counts.finished
    3
    """
    t0 = time.monotonic()
    heartbeat = is_heartbeat_enabled(study._storage)
    ran = 0
    while True:
        if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
            break
        if max_trials is not None and ran >= max_trials:
            break
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        prog = study_counts(study)
        if count_skipped:
            prog = replace(prog, finished=prog.finished + prog.skipped, skipped=0)
        done = prog.finished >= n_trials
        # With a heartbeat, a trial still running elsewhere may be a dead worker's: leaving
        # now would strand it RUNNING, so wait until it finishes or turns into a retry.
        if done and not (heartbeat and (prog.running or prog.waiting)):
            break
        if prog.skipped >= SKIPPED_PER_TRIAL * n_trials:
            log.warning("stopped: %d candidates of this study were predicted over the budget "
                        "(%d of %d trials evaluated); loosen the budget or widen the space",
                        prog.skipped, prog.finished, n_trials)
            break
        if prog.waiting == 0 and prog.remaining(n_trials) == 0:
            if not heartbeat:
                break
            time.sleep(poll_s)
            continue
        last: list[FrozenTrial] = []

        def remember(_study: optuna.Study, trial: FrozenTrial, seen: list[FrozenTrial] = last) -> None:
            seen.append(trial)

        study.optimize(
            objective, n_trials=1, catch=catch, callbacks=[*(callbacks or []), remember],
            gc_after_trial=False, show_progress_bar=False,
        )
        ran += count_skipped or not last or evaluated(last[-1])  # a skipped candidate is not a trial of the share
    return WorkerResult(trials_run=ran, seconds=time.monotonic() - t0, counts=study_counts(study))


def retried_trials(study: optuna.Study) -> dict[int, int]:
    """``{trial number: number of the dead trial it re-runs}`` for every retry in the study."""
    out: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            original = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if original is not None:
            out[t.number] = int(original)
    return out


# ---------------------------------------------------------------- one run's fixed parts
def prepare_run(
    cfg: SearchConfig,
    task: Task | None = None,
    storage: BaseStorage | str | None = None,
    log_fn: Callable[[str], None] | None = None,
    sampler_seed: int | None = None,
) -> PreparedRun:
    """:func:`autocompress.engine.session.prepare_run` for a worker (its log defaults to this module's).

    Build a run's study, objective and latency table exactly as ``autocompress
    search`` does. ``storage``: an opened storage (e.g. :func:`open_storage`
    with a heartbeat), a URL, or None for ``cfg.storage`` / the journal file.
    ``sampler_seed`` replaces ``cfg.seed`` for the sampler only (see :func:`worker_seed`).
    """
    return session.prepare_run(cfg, task, storage, log=log_fn or log.warning,
                           sampler_seed=sampler_seed)


def worker_seed(seed: int, worker: str | None = None) -> int:
    """A sampler seed for one worker of a shared study: ``seed`` mixed with the worker's id.

    Workers sampling with the same seed would propose the same candidates
    (every random start-up trial twice); mixing in ``host:pid`` keeps runs
    seeded yet different per worker.

    >>> worker_seed(0, "a:1") != worker_seed(0, "a:2")
    True
    """
    import hashlib

    digest = hashlib.sha256(f"{seed}:{worker or worker_id()}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def optuna_objective(
    objective: Objective, provenance: dict[str, Any] | None = None
) -> Callable[[optuna.Trial], list[float]]:
    """:func:`~autocompress.engine.trial.run_trial` as a ``study.optimize`` function.

    Records what ``autocompress search`` records on a trial (the contract's
    :class:`~autocompress.engine.record.TrialRecord`, one ``set_constraint`` per budget
    clause, intermediate metrics for the pruner) and raises :class:`optuna.TrialPruned` for
    a pruned fine-tune. Proposals are filled and walked as in the search loop, against the
    policies every worker of the study took; a proposal with nowhere new to walk is told the
    earlier trial's outcome (``repeat_of``, not counted).
    """
    proposals: Proposals | None = None

    def fn(trial: optuna.Trial) -> list[float]:
        nonlocal proposals
        if proposals is None:
            proposals = Proposals(objective, TakenPolicies(trial.study))
        trial.set_user_attr("worker", worker_id())
        drawn = objective.space.suggest_params(trial)

        def report(step: int, metric: float) -> bool:
            trial.report(metric, step)
            return trial.should_prune()

        prov = {"study": trial.study.study_name, "trial": trial.number, "backend": "optuna",
                **(provenance or {})}
        result = run_trial(proposals, str(trial.number), drawn,
                           planned="warm_start" in trial.user_attrs, report=report,
                           provenance=prov, trial=trial)
        if isinstance(result, Repeat):
            record_repeat(trial, result)
            if result.pruned:
                raise optuna.TrialPruned()
            return list(result.earlier.values)
        record_outcome(trial, result)
        if result.pruned:
            raise optuna.TrialPruned()
        return list(result.values)

    return fn


# ---------------------------------------------------------------- configuration and export
MACHINE_KEYS = ("device",)  # settings of the machine a worker runs on, not of the study


def config_from_study(
    study: optuna.Study,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> SearchConfig:
    """The run configuration for a worker: the study's stored one, else ``config_file``.

    The study remembers the configuration it was created with (its ``autocompress``
    user attribute), so ``autocompress worker --storage URL --study NAME`` needs no
    config file to join it; ``config_file`` and ``overrides`` (flags) come on top.
    """
    from autocompress.engine.config import SearchConfig

    stored = dict(study.user_attrs.get("autocompress") or {})
    # The device is this machine's (--device), not the one that created the study.
    base = {k: v for k, v in stored.items()
            if k in SearchConfig.model_fields and k not in MACHINE_KEYS}
    if config_file is None and not base:
        raise ConfigError(
            f"study {study.study_name!r} stores no search configuration; give --config C.yaml "
            "(the settings of `autocompress search`)"
        )
    from autocompress.engine.config import load_config_file

    data = {**base, **(load_config_file(config_file) if config_file is not None else {})}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return SearchConfig.build(None, data)


def export_shared_study(
    storage: str | Path,
    study_name: str,
    out: str | Path,
    *,
    measure: bool = True,
    data_dir: str | None = None,
    task: Task | None = None,
) -> Any:
    """Write the results folder of a (shared) study: the export of ``autocompress search``.

    The study is copied into ``<out>/study.log`` first (a journal file, so
    ``autocompress report OUT`` works on the folder), then
    :func:`autocompress.export.export_results` writes the tables, the best
    policy and model, ``report.html`` and ``summary.json`` from it. Returns
    the :class:`~autocompress.export.ExportSummary`.
    """
    from autocompress.engine.optuna_backend import quiet_optuna
    from autocompress.export import export_results
    from autocompress.tasks import load_task

    quiet_optuna()
    src = open_storage(storage, heartbeat_interval=None)
    study = load_shared_study(src, study_name)
    cfg: dict[str, Any] = dict(study.user_attrs.get("autocompress") or {})
    if not cfg.get("task") and task is None:
        raise ConfigError(
            f"study {study_name!r} stores no search configuration (no task); it was not made by "
            "`autocompress search` or `autocompress worker`"
        )
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / STUDY_FILE
    if str(Path(str(storage)).resolve()) != str(log_path.resolve()):
        if log_path.exists():
            log_path.unlink()  # a fresh copy: the shared study is the truth
        dst = journal_storage(log_path)
        optuna.copy_study(from_study_name=study_name, from_storage=src, to_storage=dst,
                          to_study_name=study_name)
        study = optuna.load_study(study_name=study_name, storage=dst)
    if task is None:
        task = load_task(cfg["task"], data_dir=data_dir or cfg.get("data_dir"),
                         checkpoint=cfg.get("checkpoint"))
    if not (out_dir / "config.resolved.yaml").is_file():
        # The workers wrote their run files into their own folders: the results folder gets
        # the study's stored settings and this machine, where the best model is measured.
        from autocompress import __version__
        from autocompress.cost import parse_target

        target = parse_target(cfg.get("target", "ort")).with_batch(task.target_batch_size)
        session._write_run_files(out_dir, {"version": __version__, **cfg}, target)
    lut = out_dir / "latency_lut.json"
    return export_results(
        study, task, out_dir, target=cfg.get("target", "ort"), budget=cfg["budget"],
        lut_path=lut if lut.is_file() else None, measure=measure,
    )
