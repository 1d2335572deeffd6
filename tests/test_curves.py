"""The sampler sees the curve: a constant-rate trial's epochs are shown to it as the shorter trials they are."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep import record
from sweep.curves import DERIVED_ATTR, CurveView
from sweep.storage import TrialSeededSampler, make_sampler
from sweep.studyfile import load_study
from sweep.testing.stores import study_text

SPACE = {
    "depth": IntDistribution(1, 2), "width": IntDistribution(8, 32, log=True), "epochs": IntDistribution(1, 4),
    "learning_rate": FloatDistribution(1e-3, 1e-2, log=True), "lr_schedule": CategoricalDistribution(["constant", "linear"]),
}


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "curves.toml"
    text = study_text("curves", epochs="{ low = 1, high = 4 }").replace("seed = 0", "seed = 0\nlearn_from_epochs = true")
    path.write_text(text.replace("[nuisance]\n", '[nuisance]\nlr_schedule = { choices = ["constant", "linear"] }\n'))
    return load_study(path)


def add(study, number_epochs: int, curve: list[list[float]], schedule: str = "constant", state=TrialState.COMPLETE):
    params = {"depth": 1, "width": 16, "epochs": number_epochs, "learning_rate": 3e-3, "lr_schedule": schedule}
    values = [max(a for _, a in curve), curve[-1][0]] if state == TrialState.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(params=params, distributions=SPACE, values=values, state=state,
                                              user_attrs=record.attrs(curve=curve)))


def test_each_earlier_epoch_of_a_constant_rate_trial_is_a_complete_trial(spec, tmp_path):
    storage = f"sqlite:///{tmp_path / 'curves.db'}"
    study = optuna.create_study(study_name="curves", storage=storage, directions=["maximize", "minimize"])
    add(study, 3, [[1.0, 0.90], [2.0, 0.88], [3.0, 0.95]])  # complete: epochs 1 and 2 are new
    add(study, 4, [[1.5, 0.80], [2.5, 0.85]], state=TrialState.PRUNED)  # stopped after 2 of 4: both are new
    add(study, 3, [[1.0, 0.91], [2.0, 0.93], [3.0, 0.96]], schedule="linear")  # a schedule: its epochs are not runs
    seen = CurveView(study, spec).get_trials(states=(TrialState.COMPLETE,))
    derived = {tuple(t.user_attrs[DERIVED_ATTR]): (t.params["epochs"], t.values, t.number) for t in seen if DERIVED_ATTR in t.user_attrs}
    # The best validation accuracy so far and the cumulative seconds: what a run of k epochs would have scored.
    assert derived == {(0, 1): (1, [0.90, 1.0], 0), (0, 2): (2, [0.90, 2.0], 0), (1, 1): (1, [0.80, 1.5], 1), (1, 2): (2, [0.85, 2.5], 1)}
    assert len(seen) == 2 + 4
    # Never stored: the study itself still holds its three trials.
    assert len(optuna.load_study(study_name="curves", storage=storage).get_trials()) == 3


def test_the_sampler_is_shown_the_derived_trials_only_when_the_study_asks_for_it(spec):
    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen.append(len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
            return super().sample_independent(study, trial, name, distribution)

    assert isinstance(make_sampler(spec), TrialSeededSampler)
    for sampler, expected in ((TrialSeededSampler(Recording, 0, lambda study: CurveView(study, spec)), 3), (TrialSeededSampler(Recording, 0), 1)):
        seen.clear()
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        add(study, 3, [[1.0, 0.90], [2.0, 0.92], [3.0, 0.95]])
        study.ask(SPACE)
        assert seen and set(seen) == {expected}
