"""The budgeted trainer: results, budget stops (on a fake clock), NaN, hooks, seeds, memory."""

from __future__ import annotations

import gc
import itertools

import keras
import pytest

from mnist_core import trainer as train_module
from mnist_core.model import MLPConfig
from mnist_core.trainer import Budget, TrainConfig, train

SMALL = TrainConfig(MLPConfig(depth=2, width=32), epochs=3, batch_size=32, seed=0)


def test_small_model_learns_and_reports_timings(splits):
    result = train(SMALL, splits)
    assert result.outcome == "completed" and result.reason is None
    assert [e.epoch for e in result.epochs] == [1, 2, 3] and not any(e.partial for e in result.epochs)
    assert result.best_epoch.val_accuracy == max(e.val_accuracy for e in result.epochs)
    assert result.best_epoch.val_accuracy > 0.5  # ten shapes, chance is 0.1
    assert result.param_count == 784 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert result.epochs[0].examples == 540
    assert result.warmup_seconds > 0 and result.seconds_per_epoch > 0 and result.examples_per_second > 0
    assert result.seconds >= sum(e.seconds for e in result.epochs) * 0.99
    assert result.model is None


def test_same_seed_same_metrics_other_seed_differs(splits):
    first, again = train(SMALL, splits), train(SMALL, splits)
    other = train(TrainConfig(SMALL.model, epochs=3, batch_size=32, seed=1), splits)
    metrics = lambda r: [(e.loss, e.accuracy, e.val_loss, e.val_accuracy) for e in r.epochs]  # noqa: E731
    assert metrics(first) == metrics(again)
    assert metrics(first) != metrics(other)


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that advances 10 ms per training batch (whoever reads it, however often), so budget
    decisions depend on batches trained, not on machine speed."""
    batches = itertools.count()
    now = [0.0]
    real_batch_end = train_module._Monitor.on_train_batch_end

    def batch_end(self, batch, logs=None):
        now[0] = next(batches) * 0.01 + 0.01
        return real_batch_end(self, batch, logs)

    monkeypatch.setattr(train_module._Monitor, "on_train_batch_end", batch_end)
    monkeypatch.setattr(train_module, "clock", lambda: now[0])


def test_hopeless_run_is_stopped_early_as_over_budget(splits, fake_clock):
    # 17 steps x 10 epochs at 10 ms per step projects 1.7 s against a 0.5 s budget.
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32)
    result = train(config, splits, Budget(seconds=0.5))
    assert result.outcome == "stopped" and result.reason.startswith("over_budget")
    assert len(result.epochs) == 1 and result.epochs[0].partial
    assert result.epochs[0].examples == (1 + train_module.PROJECTION_BATCHES) * 32


def test_run_that_nearly_fits_is_stopped_at_its_deadline(splits, fake_clock):
    # Projection 1.7 s is within 1.5 x the 1.5 s budget, so it trains until the deadline: batch 150.
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32)
    result = train(config, splits, Budget(seconds=1.5))
    assert result.outcome == "stopped" and result.reason == "budget: 1.5 s spent at step 150/170"
    assert result.epochs[-1].partial and len(result.epochs) == 9  # 8 full epochs of 17 batches, then 14 batches
    assert [e.examples for e in result.epochs] == [540] * 8 + [14 * 32]


def test_nan_loss_fails_with_reason(splits):
    config = TrainConfig(MLPConfig(depth=2, width=32, optimizer="sgd", learning_rate=1e12), epochs=3, batch_size=32)
    result = train(config, splits)
    assert result.outcome == "failed" and result.reason.startswith("nan_loss")
    assert len(result.epochs) == 1


def test_hook_can_stop_training(splits):
    seen = []

    def hook(stats):
        seen.append(stats.epoch)
        return "pruned at epoch 2" if stats.epoch == 2 else None

    result = train(TrainConfig(SMALL.model, epochs=5, batch_size=32), splits, on_epoch=hook)
    assert seen == [1, 2] and result.outcome == "stopped" and result.reason == "pruned at epoch 2"


def test_keep_model_returns_the_trained_model(splits):
    from mnist_core.data import make_dataset

    result = train(SMALL, splits, keep_model=True)
    loss, accuracy = result.model.evaluate(make_dataset(splits.val, 32), verbose=0)
    last = result.epochs[-1]
    assert accuracy == pytest.approx(last.val_accuracy) and loss == pytest.approx(last.val_loss, rel=1e-5)
    assert accuracy > 0.5


def _live_models():
    gc.collect()
    return sum(isinstance(o, keras.Model) for o in gc.get_objects())


def test_models_are_released_between_runs(splits):
    config = TrainConfig(SMALL.model, epochs=1, batch_size=64)
    before = _live_models()
    for _ in range(3):
        train(config, splits)
    assert _live_models() == before
