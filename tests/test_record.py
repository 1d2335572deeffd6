"""The typed trial record: it reads stores written before it existed, and it writes only its own fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep import record
from sweep.record import TrialRecord
from sweep.storage import count_finished

# A journal written by the code at b3b7a55, before the record existed: two complete trials, one skipped before
# training (no curve, no MLflow run), and one cut by its budget after one full epoch; none retried (no `retry_of`).
FIXTURE = Path(__file__).parent / "fixtures" / "b3b7a55.journal"


def test_a_store_written_before_the_record_loads(tmp_path):
    journal = tmp_path / "optuna.journal"
    shutil.copy(FIXTURE, journal)
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    trained, skipped = study.trials[:2], study.trials[2]
    for trial in trained:
        rec = TrialRecord.load(trial)
        assert rec.state == TrialState.COMPLETE and rec.number == trial.number and rec.seed == trial.number
        assert (rec.batch_size, rec.epochs, rec.epochs_run, rec.steady_epochs) == (64, 2, 2, 1)
        assert len(rec.curve) == 2 and rec.best_val_accuracy == max(a for _, a in rec.curve)
        assert [p.epoch for p in rec.points] == [1, 2] and rec.trained and not rec.skipped
        assert rec.mlflow_run_id and rec.host and rec.pid and rec.retry_of is None and rec.step_seconds is None
    rec = TrialRecord.load(skipped)
    assert rec.state == TrialState.PRUNED and rec.reason.startswith("skipped: predicted") and rec.predicted_seconds > 2
    assert rec.curve is None and rec.points == [] and not rec.trained and rec.skipped and rec.mlflow_run_id is None
    cut = TrialRecord.load(study.trials[3])
    assert cut.state == TrialState.PRUNED and cut.reason.startswith("over_budget") and cut.epochs_run == 2
    assert len(cut.curve) == 1 and [p.epoch for p in cut.points] == [1] and cut.trained and not cut.skipped
    assert count_finished(study) == 3  # as that code counted them: each has a full epoch


def test_what_is_saved_is_what_loads_and_nothing_else_can_be_saved():
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    record.save(trial, seed=7, curve=[(1.5, 0.8), (3.0, 0.9)], reason=None)
    assert trial.user_attrs["curve"] == [[1.5, 0.8], [3.0, 0.9]]  # JSON-friendly, as stores hold it
    with pytest.raises(KeyError, match="not a field"):
        record.save(trial, curves=[])
    study.tell(trial, [0.9, 3.0])
    rec = TrialRecord.load(study.trials[0])
    assert (rec.seed, rec.curve, rec.reason) == (7, ((1.5, 0.8), (3.0, 0.9)), None)
    assert [(p.epoch, p.seconds, p.val_accuracy) for p in rec.points] == [(1, 1.5, 0.8), (2, 3.0, 0.9)]
