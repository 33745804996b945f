"""Shared studies: many worker processes, on any machines, filling one Optuna study.

A study on an RDB (``postgresql://...``, ``mysql://...``, ``sqlite:///...``: any
SQLAlchemy URL Optuna's :class:`~optuna.storages.RDBStorage` accepts) is shared
by every process that opens it. Each running trial sends a heartbeat; a trial
whose heartbeat stops for ``grace_period`` seconds (its worker was killed, its
node preempted) is marked FAIL by the next worker that looks, and Optuna's
:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` (Optuna 5's name for
``RetryFailedTrialCallback``) enqueues a copy of it with the same parameters,
which the next free worker runs. :func:`run_worker` is the loop each worker
runs: trials until the study holds ``n_trials`` finished (COMPLETE or PRUNED)
trials, waiting (not starting extra trials) while the last ones are running
elsewhere, so a study ends with the requested number of trials.

A journal file (``results/RUN/study.log``) is shared too, by processes that see
the same file system (Optuna locks it), but it has no heartbeat: a trial of a
killed worker stays RUNNING there.

>>> is_rdb_url("postgresql://u:p@127.0.0.1:5432/db"), is_rdb_url("results/run/study.log")
(True, False)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
    fail_stale_trials,
)
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import ConfigError

log = logging.getLogger(__name__)

# A heartbeat every 10 s costs one UPDATE per running trial; 3 missed beats (30 s) before a
# trial counts as dead leaves room for a slow database without leaving a dead trial long.
DEFAULT_HEARTBEAT_S = 10
DEFAULT_GRACE_S = 30
DEFAULT_MAX_RETRY = 3
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# SQLAlchemy dialects Optuna's RDBStorage is known to work with.
RDB_SCHEMES = ("postgresql", "postgres", "mysql", "sqlite", "mariadb", "oracle", "mssql")


def is_rdb_url(storage: str | Path) -> bool:
    """True for a database URL (``postgresql://``, ``mysql+pymysql://``, ``sqlite:///``...).

    >>> is_rdb_url("mysql+pymysql://u@host/db"), is_rdb_url("study.log")
    (True, False)
    """
    text = str(storage)
    if "://" not in text:
        return False
    scheme = text.split("://", 1)[0].split("+", 1)[0].lower()
    return scheme in RDB_SCHEMES


def open_storage(
    storage: str | Path,
    *,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_S,
    grace_period: int | None = None,
    max_retry: int | None = DEFAULT_MAX_RETRY,
) -> BaseStorage:
    """Open an Optuna storage: an RDB URL (with heartbeat + retry of dead trials) or a journal file.

    ``heartbeat_interval`` (s, None = no heartbeat), ``grace_period`` (s without a beat
    before a running trial counts as dead; default 3 heartbeats), ``max_retry``
    (re-runs of one dead trial; None = unlimited). A path (or ``journal:PATH``) opens
    :class:`~optuna.storages.JournalStorage` on that file, creating its folder.

    Raises :class:`ConfigError` when the database cannot be reached or the URL is bad.

    >>> s = open_storage("sqlite:///:memory:", heartbeat_interval=2, grace_period=6)
    >>> s.get_heartbeat_interval()
    2
    """
    text = str(storage)
    if not is_rdb_url(text):
        if "://" in text and not text.startswith("journal:"):
            raise ConfigError(
                f"storage {_redact(text)!r} is not a database URL this version knows "
                f"({', '.join(s + '://' for s in RDB_SCHEMES)}) nor a journal file path; "
                f"give e.g. postgresql://user:pass@host:5432/db or results/run/study.log"
            )
        path = Path(text.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise ConfigError(
            f"heartbeat_interval must be a whole number of seconds >= 1, got {heartbeat_interval}"
        )
    grace = grace_period if grace_period is not None else (
        3 * heartbeat_interval if heartbeat_interval else None)
    callback = (RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                if heartbeat_interval else None)
    try:
        return RDBStorage(
            text,
            # pool_pre_ping: a worker that idles while others finish must not die on a
            # connection the server (or a proxy) closed meanwhile.
            engine_kwargs={"pool_pre_ping": True} if not text.startswith("sqlite") else None,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=callback,
        )
    except Exception as exc:  # SQLAlchemy / driver errors: say what failed, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot open storage {_redact(text)!r}: {first}; check that the database server "
            f"is running and the URL (user, password, host, port, database) is right"
        ) from None


def load_shared_study(storage: str | Path | BaseStorage, study_name: str, **storage_kw: Any) -> optuna.Study:
    """Load study ``study_name`` from ``storage`` (URL, path or an opened storage).

    Raises :class:`ConfigError` naming the studies the storage does hold.
    """
    st = storage if isinstance(storage, BaseStorage) else open_storage(storage, **storage_kw)
    try:
        return optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        where = _redact(str(storage)) if not isinstance(storage, BaseStorage) else "the storage"
        raise ConfigError(
            f"study {study_name!r} is not in {where}; it holds "
            f"{', '.join(repr(n) for n in names) if names else 'no studies'}; start it with "
            f"`autocompress search --storage URL --study-name NAME` or pass --config to create it"
        ) from None


@dataclass(frozen=True)
class Progress:
    """Trial counts of a study: finished (COMPLETE + PRUNED), running, waiting (enqueued), failed.

    >>> Progress(finished=3, running=1, waiting=0, failed=1).remaining(5)
    1
    """

    finished: int
    running: int
    waiting: int
    failed: int

    def remaining(self, n_trials: int) -> int:
        """Trials still to start so that ``n_trials`` finish (counting the running ones)."""
        return max(0, n_trials - self.finished - self.running)


def study_progress(study: optuna.Study) -> Progress:
    """Count the trials of ``study`` by state (one storage read)."""
    trials = study.get_trials(deepcopy=False)
    count = {s: 0 for s in TrialState}
    for t in trials:
        count[t.state] += 1
    return Progress(
        finished=count[TrialState.COMPLETE] + count[TrialState.PRUNED],
        running=count[TrialState.RUNNING],
        waiting=count[TrialState.WAITING],
        failed=count[TrialState.FAIL],
    )


@dataclass
class WorkerResult:
    """What one :func:`run_worker` call did: trials it ran, seconds, the study's final counts."""

    trials_run: int
    seconds: float
    progress: Progress


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
) -> WorkerResult:
    """Run trials of a shared study until it holds ``n_trials`` finished trials.

    Each loop first fails stale trials (a dead worker's; the storage's retry
    callback re-enqueues them), then runs one trial (an enqueued retry first:
    ``study.ask`` pops WAITING trials before sampling). When every trial still
    needed is already running elsewhere it waits ``poll_s`` instead of
    starting a surplus one: either they finish, or their worker died and the
    heartbeat turns them into retries this worker picks up. Without a heartbeat
    (journal files) there is nothing to wait for: a running trial is trusted to
    finish. ``max_trials`` caps the trials this worker runs (a SLURM task's
    share), ``timeout_s`` its wall time.

    >>> mem = open_storage("sqlite:///:memory:", heartbeat_interval=None)  # one thread: no beat
    >>> st = optuna.create_study(storage=mem)
    >>> run_worker(st, lambda t: t.suggest_float("x", 0, 1), 3).progress.finished
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
            fail_stale_trials(study)
        prog = study_progress(study)
        if prog.finished >= n_trials:
            break
        if prog.waiting == 0 and prog.remaining(n_trials) == 0:
            if not heartbeat:
                break
            time.sleep(poll_s)
            continue
        study.optimize(
            objective, n_trials=1, catch=catch, callbacks=list(callbacks or []),
            gc_after_trial=False, show_progress_bar=False,
        )
        ran += 1
    return WorkerResult(trials_run=ran, seconds=time.monotonic() - t0, progress=study_progress(study))


def retried_trials(study: optuna.Study) -> dict[int, int]:
    """``{trial number: number of the dead trial it re-runs}`` for every retry in the study."""
    out: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False):
        original = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
        if original is not None:
            out[t.number] = int(original)
    return out


def _redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for error messages and logs).

    >>> _redact("postgresql://me:secret@db:5432/x")
    'postgresql://me:***@db:5432/x'
    """
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"
