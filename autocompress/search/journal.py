"""The study's journal file, made durable once per finished trial instead of once per write.

Optuna's ``JournalFileBackend`` calls ``fsync`` after every log line, and one
trial writes about 40 of them (creation, one per parameter, one per user
attribute, intermediate values, the final state). On this machine an fsync
costs about 0.3 ms, so a short trial spent more time making its bookkeeping
crash-proof than Optuna spent sampling it.

:class:`TrialDurableJournal` writes and flushes every line as Optuna does (so
other processes reading the file, and a process killed with SIGKILL, lose
nothing: the data is in the operating system's page cache), but calls
``fsync`` only for lines that end a trial or change the study. A power loss can
then lose at most the lines of the trial that was running, which a resumed
search fails and re-runs anyway; every finished trial is on disk with all its
attributes, because one ``fsync`` flushes everything written before it.

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

from optuna.storages.journal import JournalFileBackend

# Optuna's journal op codes (optuna.storages.journal._storage.JournalOperation; stable
# across 3.x-5.x): study changes and trial state changes are made durable at once.
CREATE_STUDY, DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR = 0, 1, 2, 3
SET_TRIAL_STATE_VALUES = 6
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
