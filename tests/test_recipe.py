"""The training recipe: schedules, augmentation (training only, seeded), weight decay, smoothing, and their study keys."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest

from mnist_core.augment import Augmentation, augment_batch
from mnist_core.data import make_dataset, scale_pixels
from mnist_core.model import MLPConfig
from mnist_core.network import LearningRate
from mnist_core.trainer import TrainConfig, train
from sweep.studyfile import load_study
from sweep.testing.stores import study_text

STRONG = Augmentation(translate=0.1, rotate=15.0, scale=0.1, elastic=10.0)
RECIPE = TrainConfig(
    MLPConfig(depth=1, width=32, optimizer="adamw", weight_decay=0.05, label_smoothing=0.1, input_dropout=0.1, dropout=0.1,
              lr_schedule="cosine", warmup_fraction=0.2, final_lr_fraction=0.05, learning_rate=1e-2),
    epochs=4, batch_size=64, seed=3, augmentation=STRONG,
)


@pytest.mark.parametrize("kind, final, expected_end", [("cosine", 0.1, 0.1), ("linear", 0.0, 0.0), ("constant", 0.5, 1.0)])
def test_each_schedule_reaches_its_end_value_in_a_real_run(splits, kind, final, expected_end):
    config = TrainConfig(MLPConfig(depth=1, width=16, learning_rate=0.01, lr_schedule=kind, warmup_fraction=0.25,
                                   final_lr_fraction=final), epochs=2, batch_size=100, seed=0)
    result = train(config, splits, keep_model=True)
    optimizer = result.model.optimizer
    assert int(optimizer.iterations) == 2 * 6  # 540 examples at batch 100: 6 steps an epoch
    assert float(optimizer.learning_rate) == pytest.approx(0.01 * expected_end, abs=1e-9)


def test_schedule_warms_up_to_its_peak_then_decays():
    schedule = LearningRate(1.0, total_steps=101, kind="cosine", warmup_steps=10, end=0.1)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0) and rates[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[100] == pytest.approx(0.1) and float(schedule(500)) == pytest.approx(0.1)


def test_augmentation_moves_training_images_only(splits):
    first_batch = lambda dataset: next(iter(dataset))[0].numpy()  # noqa: E731
    clean = first_batch(make_dataset(splits.train, 64, shuffle_seed=3))
    moved = first_batch(make_dataset(splits.train, 64, shuffle_seed=3, augmentation=STRONG))
    assert clean.shape == moved.shape and not np.allclose(clean, moved)
    # Zero-sized moves are the identity, to the last bit.
    still = augment_batch(clean, np.array([1, 2]), Augmentation())
    assert np.array_equal(still.numpy(), clean)
    # Evaluation pipelines are the scaled pixels as they are.
    evaluation = np.concatenate([x.numpy() for x, _ in make_dataset(splits.val, 64)])
    assert np.array_equal(evaluation, scale_pixels(splits.val.images).numpy())


def test_the_trainer_trains_on_moved_images(splits):
    """The trainer's own loop applies the augmentation (the same seed, the same clean run otherwise)."""
    still = dataclasses.replace(RECIPE, epochs=1, augmentation=Augmentation())
    clean, moved = train(still, splits), train(dataclasses.replace(still, augmentation=STRONG), splits)
    assert moved.epochs[0].loss != clean.epochs[0].loss and moved.epochs[0].loss > clean.epochs[0].loss


def test_validation_during_training_sees_clean_images(splits):
    """The recorded validation accuracy is the model's accuracy on the unmoved validation images."""
    result = train(RECIPE, splits, keep_model=True)
    _, clean = result.model.evaluate(make_dataset(splits.val, 64), verbose=0)
    _, moved = result.model.evaluate(make_dataset(splits.val, 64, shuffle_seed=0, augmentation=STRONG), verbose=0)
    assert result.epochs[-1].val_accuracy == pytest.approx(clean, abs=1e-6) and clean > 0.5
    assert moved != pytest.approx(clean, abs=1e-6)  # else this test could not see augmented validation


def test_seeded_retrain_with_augmentation_gives_the_same_validation_accuracy(splits):
    scores = lambda r: [(e.loss, e.val_accuracy, e.val_loss) for e in r.epochs]  # noqa: E731
    first, again = train(RECIPE, splits), train(RECIPE, splits)
    assert scores(first) == scores(again)
    assert scores(train(dataclasses.replace(RECIPE, seed=4), splits)) != scores(first)


def test_recipe_keys_become_the_config(tmp_path):
    path = tmp_path / "recipe.toml"
    recipe = 'optimizer = "adamw"\nweight_decay = 0.01\nlr_schedule = "cosine"\nwarmup_fraction = 0.1\n' \
             "label_smoothing = 0.1\ninput_dropout = 0.2\nelastic = 34\nrotate = 10\n"
    text = study_text("recipe").replace("[fixed]\n", "[fixed]\n" + recipe).replace("[nuisance]\n", "[nuisance]\ntranslate = { low = 0.0, high = 0.1 }\n")
    path.write_text(text)
    spec = load_study(path)
    config = spec.config_for(optuna.trial.FixedTrial({**{p.name: p.low for p in spec.params}, "translate": 0.05}), seed=1)
    assert (config.model.weight_decay, config.model.lr_schedule, config.model.label_smoothing, config.model.input_dropout) == (0.01, "cosine", 0.1, 0.2)
    assert config.augmentation == Augmentation(translate=0.05, rotate=10.0, elastic=34.0)
