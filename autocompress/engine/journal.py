"""The study's journal file: durable once per finished trial, attributes written in one go.

Optuna's ``JournalFileBackend`` calls ``fsync`` after every log line, and one
trial writes about 40 of them (creation, one per parameter, one per user
attribute, intermediate values, the final state). An fsync costs a fraction of a
millisecond, so a short trial could spend more time making its bookkeeping
crash-proof than Optuna spends sampling it.

:class:`TrialDurableJournal` writes and flushes every line as Optuna does (so
other processes reading the file, and a process killed with SIGKILL, lose
nothing: the data is in the operating system's page cache), but calls
``fsync`` only for lines that end a trial or change the study. A power loss can
then lose at most the lines of the trial that was running, which a resumed
search fails and re-runs anyway; every finished trial is on disk with all its
attributes, because one ``fsync`` flushes everything written before it.

Each storage call also costs a lock, an append and a read-back of the file; a trial records about 20 user attributes, so
:class:`BatchJournalStorage` writes them as one append of one line each (the
same lines, readable by any Optuna) and reads back once. Use
:func:`set_user_attrs`, which falls back to one call per attribute on other
storages.

>>> import optuna, tempfile, os
>>> from optuna.storages import JournalStorage
>>> path = os.path.join(tempfile.mkdtemp(), "study.log")
>>> study = optuna.create_study(storage=JournalStorage(TrialDurableJournal(path)))
>>> study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
>>> len(optuna.load_study(study_name=study.study_name,
...                       storage=JournalStorage(TrialDurableJournal(path))).trials)
2
"""

from __future__ import annotations

import json
import os
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

# Optuna's journal op codes (optuna.storages.journal._storage.JournalOperation; stable
# across 3.x-5.x): study changes and trial state changes are made durable at once.
CREATE_STUDY, DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR = 0, 1, 2, 3
SET_TRIAL_STATE_VALUES, SET_TRIAL_USER_ATTR = 6, 8
DURABLE_OPS = frozenset(
    {CREATE_STUDY, DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR, SET_TRIAL_STATE_VALUES}
)


class TrialDurableJournal(JournalFileBackend):
    """A ``JournalFileBackend`` that fsyncs on study changes and trial state changes only.

    Same file format, same lock, same readers (``optuna-dashboard`` and plain
    ``JournalFileBackend`` open it); see the module docstring for what is durable when.
    """

    fsyncs = 0  # counted per process, for tests and benchmarks

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        durable = any(log.get("op_code") in DURABLE_OPS for log in logs)
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        # The parent's lock object (symlink lock by default) keeps concurrent writers apart.
        self._lock.acquire()
        try:
            with open(self._file_path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                if durable:
                    os.fsync(f.fileno())
                    type(self).fsyncs += 1
        finally:
            self._lock.release()


class BatchJournalStorage(JournalStorage):
    """A ``JournalStorage`` that can set many user attributes of a trial in one append.

    The file holds one ``SET_TRIAL_USER_ATTR`` line per attribute, exactly what
    ``set_trial_user_attr`` writes, so any Optuna reader replays it unchanged.
    """

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set every ``attrs`` item on trial ``trial_id``: one lock, one append, one read-back."""
        if not attrs:
            return
        with self._thread_lock:
            worker = self._replay_result.worker_id
            self._backend.append_logs([
                {"op_code": SET_TRIAL_USER_ATTR, "worker_id": worker, "trial_id": trial_id,
                 "user_attr": {key: value}}
                for key, value in attrs.items()
            ])
            self._sync_with_backend()


def journal_storage(path: str | os.PathLike[str]) -> BatchJournalStorage:
    """The storage of a study journal file: :class:`BatchJournalStorage` on :class:`TrialDurableJournal`."""
    return BatchJournalStorage(TrialDurableJournal(str(path)))


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """``trial.set_user_attr`` for every item, in one storage write on a :class:`BatchJournalStorage`.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "study.log")
    >>> study = optuna.create_study(storage=journal_storage(path))
    >>> trial = study.ask()
    >>> set_user_attrs(trial, {"a": 1, "b": [2, 3]})
    >>> trial.user_attrs, study.trials[0].user_attrs
    ({'a': 1, 'b': [2, 3]}, {'a': 1, 'b': [2, 3]})
    """
    storage = trial.storage
    if not isinstance(storage, BatchJournalStorage):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    storage.set_trial_user_attrs(trial._trial_id, attrs)  # noqa: SLF001 - the trial's own id
    # What Trial.set_user_attr does after its storage write: samplers read this copy.
    trial._cached_frozen_trial.user_attrs.update(attrs)  # noqa: SLF001
