"""The budgeted trainer: results, budget stops (on a fake clock), NaN, hooks, seeds, memory."""

from __future__ import annotations

import dataclasses
import gc
import logging

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


def test_hopeless_run_is_stopped_early_as_over_budget(splits, fake_clock):
    # 17 steps x 10 epochs at 10 ms per step projects 1.7 s against a 0.5 s budget.
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=1)
    result = train(config, splits, Budget(seconds=0.5))
    assert result.outcome == "stopped" and result.reason.startswith("over_budget")
    assert len(result.epochs) == 1 and result.epochs[0].partial
    assert result.epochs[0].examples == (1 + train_module.PROJECTION_BATCHES) * 32


def test_run_projected_just_over_its_budget_is_stopped_early_not_at_the_deadline(splits, fake_clock):
    # 170 batches at 10 ms project 1.7 s against a 1.6 s budget: stopped after the timed batches, not at 1.6 s.
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=1)
    result = train(config, splits, Budget(seconds=1.6))
    assert result.outcome == "stopped" and result.reason.startswith("over_budget: projected 1.7 s > budget 1.6 s")
    assert sum(e.examples for e in result.epochs) == (1 + train_module.PROJECTION_BATCHES) * 32


def test_run_that_fits_until_it_stalls_is_stopped_at_its_deadline(splits, fake_clock):
    # Projected at 1.7 s against a 1.8 s budget, it trains; a 0.5 s stall after batch 140 then crosses the deadline.
    fake_clock.stall = (140, 0.5)
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=1)
    result = train(config, splits, Budget(seconds=1.8))
    assert result.outcome == "stopped" and result.reason == "budget: 1.8 s spent at step 141/170"
    assert result.epochs[-1].partial and len(result.epochs) == 9  # 8 full epochs of 17 batches, then 5 batches
    assert [e.examples for e in result.epochs] == [540] * 8 + [5 * 32]


def test_several_batches_per_execution_keep_the_deadline_within_one_execution(splits, fake_clock):
    # 5 batches per traced call: epochs of 17 batches run as 5 + 5 + 5 + 2. A stall after batch 146 crosses
    # the 1.8 s deadline; it is seen at the end of that execution: batch 151, within one execution.
    fake_clock.stall = (146, 0.5)
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=5)
    result = train(config, splits, Budget(seconds=1.8))
    assert result.reason == "budget: 1.8 s spent at step 151/170"
    assert [e.examples for e in result.epochs] == [540] * 8 + [15 * 32]


def test_a_run_whose_needed_epochs_fit_runs_to_its_deadline_and_keeps_them(splits, fake_clock):
    # 10 epochs of 17 batches (1.7 s) do not fit 0.5 s, but the 2 epochs it needs (0.34 s) do: not cut after a
    # few batches for epochs it was never going to reach, it trains until the deadline, its 2 full epochs kept.
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=1)
    result = train(config, splits, Budget(seconds=0.5, min_epochs=2))
    assert result.outcome == "stopped" and result.reason == "budget: 0.5 s spent at step 50/170"
    assert [e.examples for e in result.epochs] == [540, 540, 16 * 32] and result.epochs[-1].partial
    assert result.step_seconds == pytest.approx(0.01)  # its measured pace, which the cost model learns from


def test_a_run_projected_to_miss_its_needed_epochs_is_stopped_early(splits, fake_clock):
    config = TrainConfig(SMALL.model, epochs=10, batch_size=32, steps_per_execution=1)
    result = train(config, splits, Budget(seconds=0.3, min_epochs=2))  # 2 epochs need 0.34 s
    assert result.reason == "over_budget: projected 0.34 s > budget 0.3 s for 2 epoch(s)"
    assert sum(e.examples for e in result.epochs) == (1 + train_module.PROJECTION_BATCHES) * 32
    with pytest.raises(ValueError, match="min_epochs"):
        Budget(seconds=1.0, min_epochs=0)


def test_batches_per_execution_change_no_result(splits):
    one = train(TrainConfig(SMALL.model, epochs=2, batch_size=32, steps_per_execution=1), splits)
    several = train(TrainConfig(SMALL.model, epochs=2, batch_size=32, steps_per_execution=6), splits)
    automatic = train(TrainConfig(SMALL.model, epochs=2, batch_size=32), splits)
    metrics = lambda r: [(e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.examples) for e in r.epochs]  # noqa: E731
    assert metrics(one) == metrics(several) == metrics(automatic)


def test_at_a_constant_rate_the_first_epochs_of_a_long_run_are_the_short_run(splits):
    """What lets the sampler learn from every epoch (sweep/views.py): epoch k of K is the k-epoch run."""
    model = dataclasses.replace(SMALL.model, dropout=0.2, jit_compile=False)
    metrics = lambda r: [(e.loss, e.accuracy, e.val_loss, e.val_accuracy) for e in r.epochs]  # noqa: E731
    short, long = (train(TrainConfig(model, epochs=n, batch_size=32), splits) for n in (2, 3))
    assert TrainConfig(model).epochs_are_runs and metrics(long)[:2] == metrics(short)
    decaying = dataclasses.replace(model, lr_schedule="linear")
    short, long = (train(TrainConfig(decaying, epochs=n, batch_size=32), splits) for n in (2, 3))
    assert not TrainConfig(decaying).epochs_are_runs and metrics(long)[:2] != metrics(short)


SEED_MODEL = TrainConfig(MLPConfig(depth=5, width=2000), batch_size=100)


def test_execution_steps_are_about_a_quarter_second_on_this_machine_and_at_most_an_epoch():
    from mnist_core.machine import current
    from mnist_core.trainer import execution_steps

    profile = current()  # the pinned profile (tests/fixtures/machine.json)
    seed = SEED_MODEL.work(54_000)
    assert execution_steps(seed, profile) == int(0.25 / profile.step_seconds(seed)) == 1  # ~0.15 s of work a batch
    faster = dataclasses.replace(profile, gflops=10 * profile.gflops, gbps=10 * profile.gbps)
    assert execution_steps(seed, faster) == int(0.25 / faster.step_seconds(seed)) > 1
    tiny = TrainConfig(MLPConfig(depth=1, width=64), batch_size=512).work(54_000)
    assert execution_steps(tiny, profile) == tiny.steps_per_epoch == 106  # the whole epoch in one call


def test_xla_is_chosen_for_long_runs_on_this_machine_and_recorded_in_the_result(splits):
    from mnist_core.machine import current
    from mnist_core.trainer import use_xla

    profile = current()
    tiny = TrainConfig(MLPConfig(depth=1, width=64), batch_size=512).work(54_000)
    assert not use_xla(tiny, 3, profile) and use_xla(SEED_MODEL.work(54_000), 10, profile)
    # Compiling repays itself by the machine's arithmetic: on one 100 times faster the seed model's is short.
    assert not use_xla(SEED_MODEL.work(54_000), 10, dataclasses.replace(profile, gflops=100 * profile.gflops))
    result = train(TrainConfig(MLPConfig(depth=1, width=8), epochs=1, batch_size=64), splits)
    assert result.config.model.jit_compile is False  # decided, not left open
    forced = train(TrainConfig(MLPConfig(depth=1, width=8, jit_compile=True), epochs=1, batch_size=64), splits)
    assert forced.config.model.jit_compile is True


def test_xla_and_plain_tensorflow_are_each_reproducible(splits):
    for jit_compile in (True, False):
        config = TrainConfig(MLPConfig(depth=2, width=32, dropout=0.2, jit_compile=jit_compile), epochs=2, batch_size=32)
        first, again = train(config, splits), train(config, splits)
        assert [e.val_accuracy for e in first.epochs] == [e.val_accuracy for e in again.epochs]
        assert [e.loss for e in first.epochs] == [e.loss for e in again.epochs]


def test_a_sweep_of_short_runs_in_one_process_is_not_warned_of_retracing(splits):
    # Each run traces its own functions once; TensorFlow must not count a sweep's runs as one function retraced.
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for jit_compile in (True, False) * 4:
            train(TrainConfig(MLPConfig(depth=1, width=8, jit_compile=jit_compile), epochs=1, batch_size=256), splits)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [message for message in seen if "retracing" in message]


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


def test_a_hook_that_returns_an_empty_reason_does_not_stop_training(splits):
    result = train(TrainConfig(SMALL.model, epochs=3, batch_size=32), splits, on_epoch=lambda stats: "")
    assert result.outcome == "completed" and result.reason is None
    assert [e.examples for e in result.epochs] == [540] * 3 and not any(e.partial for e in result.epochs)


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
