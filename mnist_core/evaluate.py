"""Test-set evaluation: called only after model selection (`sweep best`), never by the sweep."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnist_core.data import Source, make_dataset

if TYPE_CHECKING:
    import keras


def evaluate_test(model: keras.Model, source: Source, batch_size: int = 1000) -> dict[str, float]:
    """Loss and accuracy of `model` on the test split of `source`."""
    test = source.read("test")
    loss, accuracy = model.evaluate(make_dataset(test, batch_size), verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy), "test_examples": len(test)}
