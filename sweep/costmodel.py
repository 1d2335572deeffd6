"""How long a trial will train, predicted before it runs from the study's own finished trials.

    seconds = warm-up + epochs x (batches per epoch x per_batch + parameters x examples x per_param_example)

Small nets pay per batch (a traced call, the input pipeline); big ones per parameter-example (the
arithmetic): batch size moves the first term, the net's size the second. Both coefficients are fitted
to the steady epochs (the first, which also pays for tracing, is left out) of trials that had at least
one, minimising the relative error, and refitted once without any trial the first fit misses by more
than half: a short or disturbed run cannot poison the model. The warm-up is the median extra time of
those trials' first epochs. Until two trials have a steady epoch, the trainer's nominal rates stand in
(they err low, so a trial is not skipped on a guess).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna

from mnist_core.trainer import NOMINAL_RATE, STEP_OVERHEAD_SECONDS
from sweep.oracle import FINISHED

# A fitted trial whose relative residual exceeds this is left out of the refit.
OUTLIER = 0.5


@dataclass(frozen=True)
class CostModel:
    per_batch: float
    per_param_example: float
    warmup: float
    trials: int  # how many trials it was fitted on (0: the nominal prior)

    def predict(self, n_params: int, examples: int, batch_size: int, epochs: int) -> float:
        per_epoch = math.ceil(examples / batch_size) * self.per_batch + n_params * examples * self.per_param_example
        return self.warmup + epochs * per_epoch


PRIOR = CostModel(per_batch=STEP_OVERHEAD_SECONDS, per_param_example=1 / NOMINAL_RATE, warmup=0.0, trials=0)


def _fit(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the relative error of features @ coefficients against seconds."""
    weighted = features / seconds[:, None]
    coefficients, *_ = np.linalg.lstsq(weighted, np.ones(len(seconds)), rcond=None)
    if (coefficients >= 0).all():
        return coefficients
    # One term alone explains the data better than a negative mix: keep the better single-term fit.
    best, best_error = np.zeros(2), math.inf
    for column in range(2):
        single = np.zeros(2)
        x = weighted[:, column]
        single[column] = max(x.sum() / (x @ x), 0.0) if x @ x > 0 else 0.0
        error = np.sum((weighted @ single - 1) ** 2)
        if error < best_error:
            best, best_error = single, error
    return best


def fit(study: optuna.Study, examples: int) -> CostModel:
    """The cost model of `study`'s finished trials that trained at least one steady epoch on `examples`."""
    rows = []
    for trial in study.get_trials(deepcopy=False, states=FINISHED):
        attrs = trial.user_attrs
        if attrs.get("steady_epochs", 0) >= 1 and attrs.get("batch_size"):
            rows.append((math.ceil(examples / attrs["batch_size"]), attrs["param_count"] * examples,
                         attrs["seconds_per_epoch"], attrs["warmup_seconds"]))
    if len(rows) < 2:
        return PRIOR
    table = np.array(rows, dtype=float)
    features, seconds = table[:, :2], table[:, 2]
    coefficients = _fit(features, seconds)
    keep = np.abs(features @ coefficients / seconds - 1) <= OUTLIER
    if 2 <= keep.sum() < len(keep):
        coefficients = _fit(features[keep], seconds[keep])
        table = table[keep]
    warmup = max(float(np.median(table[:, 3] - table[:, 2])), 0.0)
    return CostModel(per_batch=float(coefficients[0]), per_param_example=float(coefficients[1]), warmup=warmup, trials=len(table))
