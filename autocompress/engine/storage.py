"""Where a study lives: a journal file, or a database many workers share.

A study on an RDB (``postgresql://...``, ``mysql://...``, ``sqlite:///...``: any
SQLAlchemy URL Optuna's :class:`~optuna.storages.RDBStorage` accepts) is shared
by every process that opens it, with a heartbeat per running trial, so that a dead
worker's trial is retried. A journal file (``results/RUN/study.log``) is shared too,
by processes that see the same file system (Optuna locks it), but it has no heartbeat.

>>> is_rdb_url("postgresql://u:p@127.0.0.1:5432/db"), is_rdb_url("results/run/study.log")
(True, False)
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback

from autocompress.engine.journal import journal_storage
from autocompress.errors import ConfigError

STUDY_FILE = "study.log"


def storage_for(out_dir: Path, url: str | None = None) -> str | BaseStorage:
    """``url`` opened, or a journal file ``<out_dir>/study.log``.

    ``url`` (a database URL or a journal file path) is opened by
    :func:`open_storage` (a driver SQLAlchemy can import,
    heartbeat settings shared with ``autocompress worker``, one-line errors for an
    unreachable database or an unknown URL scheme).
    """
    if url:
        return open_storage(url)
    out_dir.mkdir(parents=True, exist_ok=True)
    return journal_storage(out_dir / STUDY_FILE)


# A heartbeat every 10 s costs one UPDATE per running trial; 3 missed beats (30 s) before a
# trial counts as dead leaves room for a slow database without leaving a dead trial long.
DEFAULT_HEARTBEAT_S = 10


DEFAULT_GRACE_S = 30


DEFAULT_MAX_RETRY = 3


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


def normalize_url(url: str) -> str:
    """``url`` with a PostgreSQL driver SQLAlchemy can import.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3; autocompress depends
    on psycopg2, so a bare URL gets ``+psycopg2`` when psycopg 3 is not installed
    (``postgres://``, as Heroku-style URLs spell it, is accepted too).

    >>> normalize_url("sqlite:///x.db")
    'sqlite:///x.db'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


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
                f"storage {redact_url(text)!r} is not a database URL this version knows "
                f"({', '.join(s + '://' for s in RDB_SCHEMES)}) nor a journal file path; "
                f"give e.g. postgresql://user:pass@host:5432/db or results/run/study.log"
            )
        path = Path(text.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return journal_storage(path)
    if heartbeat_interval is not None and heartbeat_interval < 1:
        raise ConfigError(
            f"heartbeat_interval must be a whole number of seconds >= 1, got {heartbeat_interval}"
        )
    grace = grace_period if grace_period is not None else (
        3 * heartbeat_interval if heartbeat_interval else None)
    try:
        with warnings.catch_warnings():  # heartbeat "experimental since 2.8": stable for years
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            callback = (RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
                        if heartbeat_interval else None)
            return RDBStorage(
                normalize_url(text),
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
            f"cannot open storage {redact_url(text)!r}: {first}; check that the database server "
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
        where = redact_url(str(storage)) if not isinstance(storage, BaseStorage) else "the storage"
        raise ConfigError(
            f"study {study_name!r} is not in {where}; it holds "
            f"{', '.join(repr(n) for n in names) if names else 'no studies'}; start it with "
            f"`autocompress search --storage URL --study-name NAME` or pass --config to create it"
        ) from None


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for error messages and logs).

    >>> redact_url("postgresql://me:secret@db:5432/x")
    'postgresql://me:***@db:5432/x'
    """
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


