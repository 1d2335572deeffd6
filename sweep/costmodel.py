"""How long a trial will train, predicted before it runs from the study's own finished trials.

    seconds = warm-up + epochs x (batches per epoch x per_batch + parameters x examples x per_param_example
                                  + examples x per_augmented_example, if the run moves its training images)

Small nets pay per batch (a traced call, the input pipeline); big ones per parameter-example (the
arithmetic): batch size moves the first term, the net's size the second. Augmentation pays per image
(`mnist_core/augment.py`: a resampling and, for elastic distortion, a blur of each image), whatever the
net: for a small net it is most of the epoch. The coefficients are fitted to the steady epochs (the first,
which also pays for tracing, is left out) of trials that had at least one, minimising the relative error
with none negative, and refitted once without any trial the first fit misses by more than half: a short
or disturbed run cannot poison the model. A trial cut inside its first epoch still
timed its batches (`step_seconds`): that measures an epoch too. The warm-up is the median extra time of
the trials' first epochs. One trial scales the trainer's nominal rates; with none, those rates stand in
(they err low, so a trial is not skipped on a guess).

The model's own error on the trials it was fitted to sets how optimistic a prediction may be: `low` is
the factor by which it overestimated the trials it overestimated most (the 10th percentile of measured /
predicted). A trial is started when even that optimistic prediction fits the time left; the trainer's
projection from its measured batches then stops what still cannot.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import optuna

from mnist_core.model import param_count
from mnist_core.trainer import NOMINAL_RATE, STEP_OVERHEAD_SECONDS, TrainConfig
from sweep.record import FINISHED, TrialRecord, records

# A fitted trial whose relative residual exceeds this is left out of the refit.
OUTLIER = 0.5
# Fits whose errors differ by less than this fraction are a tie (the same residual, up to rounding).
TIE = 1e-9
# `low` is this quantile of measured / predicted over the fitted trials: optimistic, but not the one extreme.
LOW_QUANTILE = 0.1
# The prior's seconds to augment one training image, erring low as the trainer's nominal rates do
# (bench/results/coverage.md shows the fitted figure of real sweeps).
NOMINAL_AUGMENT_SECONDS = 2e-5


@dataclass(frozen=True)
class CostModel:
    per_batch: float
    per_param_example: float
    warmup: float
    trials: int  # how many trials it was fitted on (0: the nominal prior)
    low: float = 1.0  # measured / predicted at the optimistic end of this model's error (<= 1)
    per_augmented_example: float = 0.0

    @property
    def coefficients(self) -> np.ndarray:
        return np.array([self.per_batch, self.per_param_example, self.per_augmented_example])

    def per_epoch(self, n_params: int, examples: int, batch_size: int, augmented: bool = False) -> float:
        return float(_features(n_params, examples, batch_size, augmented) @ self.coefficients)

    def predict(self, config: TrainConfig, examples: int, epochs: int | None = None) -> float:
        """Seconds to train `config` on `examples` images for `epochs` (its own by default)."""
        per_epoch = self.per_epoch(param_count(config.model), examples, config.batch_size, config.augmentation.enabled)
        return self.warmup + (config.epochs if epochs is None else epochs) * per_epoch

    def least(self, config: TrainConfig, examples: int, epochs: int | None = None) -> float:
        """The optimistic end of `predict`: the least time the model's own error allows."""
        return self.low * self.predict(config, examples, epochs)


PRIOR = CostModel(per_batch=STEP_OVERHEAD_SECONDS, per_param_example=1 / NOMINAL_RATE, warmup=0.0, trials=0,
                  per_augmented_example=NOMINAL_AUGMENT_SECONDS)


def _features(n_params: int, examples: int, batch_size: int, augmented: bool) -> np.ndarray:
    """An epoch's work by term: batches, parameter-examples, augmented images."""
    return np.array([math.ceil(examples / batch_size), n_params * examples, examples if augmented else 0], dtype=float)


def _fit(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the relative error of features @ coefficients against seconds:
    the least-squares fit of the subset of terms (of three, seven subsets) that fits best with none negative."""
    weighted = features / seconds[:, None]
    target = np.ones(len(seconds))
    best, best_error = np.zeros(features.shape[1]), math.inf
    # Most terms first, so that a tie (trials too alike to tell the terms apart) keeps the least-norm split of
    # all of them rather than one term alone: a net ten times larger must not be predicted as cheap.
    for size in range(features.shape[1], 0, -1):
        for columns in itertools.combinations(range(features.shape[1]), size):
            found, *_ = np.linalg.lstsq(weighted[:, columns], target, rcond=None)
            if (found < 0).any():
                continue
            coefficients = np.zeros(features.shape[1])
            coefficients[list(columns)] = found
            error = float(np.sum((weighted @ coefficients - 1) ** 2))
            if error < best_error * (1 - TIE) - TIE:
                best, best_error = coefficients, error
    return best


def _row(rec: TrialRecord, examples: int) -> tuple[float, ...] | None:
    """(batches, parameter-examples and augmented images per epoch, seconds per epoch, first-epoch seconds or NaN)
    of one trial."""
    if not rec.batch_size or not rec.param_count:
        return None
    features = _features(rec.param_count, examples, rec.batch_size, bool(rec.augmented))
    if (rec.steady_epochs or 0) >= 1:
        return (*features, rec.seconds_per_epoch, rec.warmup_seconds)
    if rec.step_seconds:  # cut inside its first epoch: its timed batches are its epoch's pace
        return (*features, rec.step_seconds * features[0], math.nan)
    return None


def fit(study: optuna.Study, examples: int) -> CostModel:
    """The cost model of `study`'s finished trials that timed a steady epoch or their batches, on `examples`."""
    rows = [row for rec in records(study, FINISHED) if (row := _row(rec, examples)) is not None]
    if not rows:
        return PRIOR
    table = np.array(rows, dtype=float)
    features, seconds = table[:, :3], table[:, 3]
    if len(rows) == 1:  # one measurement scales the nominal rates; it cannot tell their terms apart
        coefficients = PRIOR.coefficients * seconds[0] / (features[0] @ PRIOR.coefficients)
    else:
        coefficients = _fit(features, seconds)
        keep = np.abs(features @ coefficients / seconds - 1) <= OUTLIER
        if 2 <= keep.sum() < len(keep):
            coefficients = _fit(features[keep], seconds[keep])
            table, features, seconds = table[keep], features[keep], seconds[keep]
    extra = table[:, 4] - seconds
    warmup = max(float(np.median(extra[np.isfinite(extra)])), 0.0) if np.isfinite(extra).any() else 0.0
    low = min(float(np.quantile(seconds / (features @ coefficients), LOW_QUANTILE)), 1.0)
    return CostModel(per_batch=float(coefficients[0]), per_param_example=float(coefficients[1]), warmup=warmup,
                     trials=len(table), low=low, per_augmented_example=float(coefficients[2]))
