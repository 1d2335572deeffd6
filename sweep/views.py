"""The study as the sampler sees it: the stored trials, seen through what the study file asks for.

Two views, each a wrapper that answers what Optuna's samplers read of a study (`get_trials` and
`Study._get_trials`) and passes everything else to the study. Neither writes anything: trial counts,
MLflow, `report` and `best` see the stored trials alone.

`ScaledView`: the objectives on the study's front scale (`[study] front_scale`, `sweep.points.Scale`). On the
log scale the sampler sees training seconds and the error 1 - accuracy in decades, so that its
hypervolume-based choices (multi-objective TPE breaks ties among equally ranked trials by hypervolume) value
0.3 s -> 3 s as 30 s -> 300 s. Storage keeps the raw values.

`CurveView`: what a trial's curve teaches the sampler, its earlier epochs as the shorter trials they are.
At a constant learning rate, epoch k of a K-epoch trial is exactly the k-epoch run of the same config
(`TrainConfig.epochs_are_runs`), so a trial that trained K epochs measured K configs, not one. With
`[study] learn_from_epochs = true` the TPE sampler is shown each finished trial's epochs as COMPLETE trials
with `epochs = k` and that epoch's objective values (best validation accuracy so far, cumulative training
seconds). A dominance-pruned trial stopped after epoch j thus still teaches j complete configs.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep import optuna_private
from sweep.points import Scale
from sweep.record import FINISHED, TrialRecord
from sweep.studyfile import StudySpec

DERIVED_ATTR = "derived_from_epoch"


def epoch_trials(spec: StudySpec, trial: FrozenTrial) -> list[FrozenTrial]:
    """The shorter trials that `trial`'s full epochs are: none unless its epochs are runs of their own."""
    epochs = spec.param("epochs")
    if trial.state not in FINISHED or "epochs" not in trial.params:
        return []
    if not spec.config_for(optuna.trial.FixedTrial(trial.params), seed=0).epochs_are_runs:
        return []
    curve = TrialRecord.load(trial).curve or ()
    # A complete trial's last epoch is the trial itself; every full epoch of a stopped one is new.
    last = min(len(curve), trial.params["epochs"] - 1) if trial.state == TrialState.COMPLETE else len(curve)
    derived, best = [], -math.inf
    for k, (seconds, accuracy) in enumerate(curve[:last], start=1):
        best = max(best, accuracy) if math.isfinite(accuracy) else best
        if k < epochs.low or not math.isfinite(best):
            continue
        values = {"val_accuracy": best, "train_seconds": seconds}
        made = optuna.trial.create_trial(
            params={**trial.params, "epochs": k}, distributions=trial.distributions,
            values=[values[o] for o in spec.objectives], user_attrs={DERIVED_ATTR: [trial.number, k]},
        )
        made.number = trial.number  # TPE weighs trials by recency (number); an epoch is as recent as its trial
        derived.append(made)
    return derived


class StudyView:
    """A study as a sampler sees it: `_get_trials` says how; everything else is the study's own (directions,
    storage, the running trial's attributes)."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        return optuna_private.get_trials(self._study, deepcopy=deepcopy, states=states, use_cache=use_cache)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class CurveView(StudyView):
    """Every real trial, plus each finished trial's epochs as trials."""

    def __init__(self, study: optuna.Study, spec: StudySpec):
        super().__init__(study)
        self._spec = spec
        self._derived: dict[int, list[FrozenTrial]] = {}  # a finished trial's epochs never change

    def _epochs(self, use_cache: bool) -> list[FrozenTrial]:
        for trial in optuna_private.get_trials(self._study, deepcopy=False, states=FINISHED, use_cache=use_cache):
            if trial.number not in self._derived:
                self._derived[trial.number] = epoch_trials(self._spec, trial)
        return [t for derived in self._derived.values() for t in derived]

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        trials = super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is None or TrialState.COMPLETE in states:
            trials = trials + self._epochs(use_cache)
        return trials


class ScaledView(StudyView):
    """The trials with their objective values on `scale`: seconds as `scale.cost`, accuracy as `scale.score`
    (in the same order, so the directions stand); other objectives as they are."""

    def __init__(self, study: optuna.Study | StudyView, objectives: tuple[str, ...], scale: Scale):
        super().__init__(study)
        transforms = {"train_seconds": scale.cost, "val_accuracy": scale.score}
        self._transforms = [transforms.get(name) for name in objectives]

    def _scaled(self, trial: FrozenTrial) -> FrozenTrial:
        if trial.values is None:
            return trial
        seen = copy.copy(trial)  # the stored trial is Optuna's cached object: never changed in place
        seen.values = [v if f is None else float(f(v)) for f, v in zip(self._transforms, trial.values, strict=True)]
        return seen

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        return [self._scaled(t) for t in super()._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)]
