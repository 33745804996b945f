"""The study journal: one fsync per finished trial, same file format as Optuna's own backend."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autocompress.search.journal import TrialDurableJournal
from autocompress.search.optuna_backend import storage_for


def test_a_trial_costs_one_fsync_and_plain_optuna_reads_every_attribute(tmp_path):
    storage = storage_for(tmp_path)  # what `autocompress search` opens
    assert isinstance(storage, JournalStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    before = TrialDurableJournal.fsyncs
    trial = study.ask()
    for i in range(8):
        trial.suggest_float(f"p{i}", 0.0, 1.0)
    for i in range(20):
        trial.set_user_attr(f"k{i}", i)
    trial.report(0.5, step=1)
    assert TrialDurableJournal.fsyncs == before  # nothing durable until the trial ends
    study.tell(trial, 0.9)
    assert TrialDurableJournal.fsyncs == before + 1

    plain = optuna.load_study(study_name="s", storage=JournalStorage(
        JournalFileBackend(str(tmp_path / "study.log"))))
    (t,) = plain.trials
    assert t.state == TrialState.COMPLETE and t.value == 0.9
    assert t.user_attrs == {f"k{i}": i for i in range(20)}
    assert len(t.params) == 8 and t.intermediate_values == {1: 0.5}
