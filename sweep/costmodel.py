"""How long a trial will train, predicted before it runs: the machine's profile, corrected by the study's trials.

    seconds = warm-up + epochs x (f_fixed x fixed + f_compute x compute + f_memory x memory + f_moves x moves)

where fixed, compute, memory and moves are an epoch's seconds by the terms of a machine's profile
(`mnist_core/machine.py`: traced calls, batches and layers; matrix products; the optimizer's stream over the
parameters; moving the images) for the run's work (`mnist_core/work.py`). With no trial to go on the profile
stands: every factor f is 1. Each trial records its own terms, on the machine that ran it, when it starts,
so trials from different machines teach the same factors: what the profile gets wrong about this trainer.

The factors are fitted to the steady epochs (the first, which also pays for tracing, is left out) of trials
that had at least one, minimising the relative error, none negative, and drawn towards one common factor (a
term the trials do not tell apart keeps the profile's word for it relative to the others: a net ten times
larger than any trial is still predicted about ten times slower); they are refitted once without any trial the first fit misses by more than half, so a
disturbed run cannot poison the model. A trial cut inside its first epoch still timed its batches
(`step_seconds`): that measures an epoch too. The warm-up is the median extra time of the trials' first
epochs.

The model's own error on the trials it was fitted to sets how optimistic a prediction may be: `low` is
the factor by which it overestimated the trials it overestimated most (the 10th percentile of measured /
predicted). A trial is started when even that optimistic prediction fits the time left; the trainer's
projection from its measured batches then stops what still cannot.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import optuna

from mnist_core.machine import MachineProfile, current
from mnist_core.trainer import TrainConfig, epoch_terms
from sweep.record import FINISHED, TrialRecord, records

# A fitted trial whose relative residual exceeds this is left out of the refit.
OUTLIER = 0.5
# How strongly the factors are drawn towards one common factor, against the squared relative errors of the trials.
PRIOR_WEIGHT = 1e-3
# Fits whose errors differ by less than this fraction are a tie (the same residual, up to rounding).
TIE = 1e-9
# `low` and `high` are these quantiles of measured / predicted over the fitted trials: not the one extreme.
LOW_QUANTILE, HIGH_QUANTILE = 0.1, 0.9
TERMS = ("fixed", "compute", "memory", "moves")


@dataclass(frozen=True)
class CostModel:
    """Seconds of a run on `profile`'s machine: its terms times `factors`, plus a warm-up."""

    profile: MachineProfile
    factors: tuple[float, ...] = (1.0,) * len(TERMS)
    warmup: float = 0.0
    trials: int = 0  # how many trials it was fitted on (0: the profile alone)
    low: float = 1.0  # measured / predicted at the optimistic end of this model's error (<= 1)
    high: float = 1.0  # ... and at its pessimistic end (>= 1)

    def per_epoch(self, config: TrainConfig, examples: int) -> float:
        return float(np.dot(epoch_terms(config, examples, self.profile), self.factors))

    def predict(self, config: TrainConfig, examples: int, epochs: int | None = None) -> float:
        """Seconds to train `config` on `examples` images for `epochs` (its own by default)."""
        return self.warmup + (config.epochs if epochs is None else epochs) * self.per_epoch(config, examples)

    def least(self, config: TrainConfig, examples: int, epochs: int | None = None) -> float:
        """The optimistic end of `predict`: the least time the model's own error allows."""
        return self.low * self.predict(config, examples, epochs)


def _fit(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative factors minimising the relative error of features @ factors against seconds, drawn
    towards one common factor (PRIOR_WEIGHT x their squared relative distance from it): the profile's word on
    how its terms compare, its level set by the trials. The fit of the subset of terms (the others 0) that
    does best with none negative."""
    n_terms = features.shape[1]
    weighted = features / seconds[:, None]
    totals = weighted.sum(axis=1)
    common = float(totals.sum() / (totals @ totals))  # the one factor that fits the trials best
    rows = np.vstack([common * weighted, math.sqrt(PRIOR_WEIGHT) * np.eye(n_terms)])
    target = np.concatenate([np.ones(len(seconds)), math.sqrt(PRIOR_WEIGHT) * np.ones(n_terms)])
    best, best_error = np.ones(n_terms), math.inf
    # Most terms first, so that a tie keeps all of them rather than fewer.
    for size in range(n_terms, 0, -1):
        for columns in itertools.combinations(range(n_terms), size):
            found, *_ = np.linalg.lstsq(rows[:, columns], target, rcond=None)
            if (found < 0).any():
                continue
            relative = np.zeros(n_terms)
            relative[list(columns)] = found
            error = float(np.sum((rows @ relative - target) ** 2))
            if error < best_error * (1 - TIE) - TIE:
                best, best_error = relative, error
    return common * best


def _row(rec: TrialRecord, examples: int) -> tuple[float, ...] | None:
    """(an epoch's seconds by the profile's terms on the trial's machine, its measured seconds per epoch, its
    first epoch's seconds or NaN) of one trial; None for a trial without them (or stored before profiles)."""
    if not rec.epoch_terms or not rec.batch_size:
        return None
    if (rec.steady_epochs or 0) >= 1:
        return (*rec.epoch_terms, rec.seconds_per_epoch, rec.warmup_seconds)
    if rec.step_seconds:  # cut inside its first epoch: its timed batches are its epoch's pace
        return (*rec.epoch_terms, rec.step_seconds * math.ceil(examples / rec.batch_size), math.nan)
    return None


def fit(study: optuna.Study, examples: int, profile: MachineProfile | None = None) -> CostModel:
    """The cost model of `study`'s finished trials that timed a steady epoch or their batches, on `examples`,
    predicting for `profile`'s machine (this process's by default)."""
    profile = profile or current()
    rows = [row for rec in records(study, FINISHED) if (row := _row(rec, examples)) is not None]
    if not rows:
        return CostModel(profile)
    table = np.array(rows, dtype=float)
    n = len(TERMS)
    features, seconds = table[:, :n], table[:, n]
    factors = _fit(features, seconds)
    keep = np.abs(features @ factors / seconds - 1) <= OUTLIER
    if 1 <= keep.sum() < len(keep):
        factors = _fit(features[keep], seconds[keep])
        table, features, seconds = table[keep], features[keep], seconds[keep]
    extra = table[:, n + 1] - seconds
    warmup = max(float(np.median(extra[np.isfinite(extra)])), 0.0) if np.isfinite(extra).any() else 0.0
    ratio = seconds / (features @ factors)
    low, high = min(float(np.quantile(ratio, LOW_QUANTILE)), 1.0), max(float(np.quantile(ratio, HIGH_QUANTILE)), 1.0)
    return CostModel(profile, tuple(float(f) for f in factors), warmup, len(table), low, high)


def seconds_scale(config: TrainConfig, examples: int, profile: MachineProfile, study_profile: MachineProfile | None) -> float:
    """Study seconds per second measured on `profile`'s machine for a run of `config`: its predicted seconds on
    the machine that started the study over those on `profile`'s (1 on the same machine, or for a study
    without one). Not one factor per machine: a small net, bound by fixed costs, converts unlike a large one."""
    if study_profile is None or same_machine(profile, study_profile):
        return 1.0
    return sum(epoch_terms(config, examples, study_profile)) / sum(epoch_terms(config, examples, profile))


def same_machine(a: MachineProfile, b: MachineProfile) -> bool:
    """The same measured machine, however each process came by its profile (measured, cached, pinned)."""
    return dataclasses.replace(a, source="") == dataclasses.replace(b, source="")
