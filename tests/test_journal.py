"""The study journal: one fsync per finished trial, same file format as Optuna's own backend."""

from __future__ import annotations

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from autocompress.engine.journal import BatchJournalStorage, TrialDurableJournal, set_user_attrs
from autocompress.engine.storage import storage_for


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


class CountingJournal(TrialDurableJournal):
    appends = 0

    def append_logs(self, logs):
        type(self).appends += 1
        super().append_logs(logs)


def test_set_user_attrs_is_one_append_that_plain_optuna_replays(tmp_path):
    path = str(tmp_path / "study.log")
    study = optuna.create_study(storage=BatchJournalStorage(CountingJournal(path)), study_name="s")
    trial = study.ask()
    attrs = {f"k{i}": {"v": i} for i in range(20)}
    before = CountingJournal.appends
    set_user_attrs(trial, attrs)
    assert CountingJournal.appends == before + 1
    assert trial.user_attrs == attrs  # the live trial sees them, as after set_user_attr
    study.tell(trial, 1.0)
    (t,) = optuna.load_study(study_name="s", storage=JournalStorage(
        JournalFileBackend(path))).trials
    assert t.user_attrs == attrs


def test_set_user_attrs_falls_back_to_one_call_each_elsewhere():
    study = optuna.create_study()  # in-memory storage
    trial = study.ask()
    set_user_attrs(trial, {"a": 1, "b": 2})
    study.tell(trial, 0.5)
    assert study.trials[0].user_attrs == {"a": 1, "b": 2}
