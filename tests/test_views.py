"""What the sampler sees: the objectives on the front's scale, and a constant-rate trial's epochs as the shorter
trials they are."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep import record
from sweep.points import Scale
from sweep.storage import TrialSeededSampler, make_sampler
from sweep.studyfile import load_study
from sweep.testing.stores import study_text
from sweep.views import DERIVED_ATTR, CurveView, ScaledView

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


def test_on_the_log_scale_the_sampler_sees_decades_and_the_storage_keeps_raw_values(tmp_path):
    storage = f"sqlite:///{tmp_path / 'scaled.db'}"
    study = optuna.create_study(study_name="scaled", storage=storage, directions=["maximize", "minimize"])
    add(study, 2, [[0.5, 0.90], [10.0, 0.99]])
    add(study, 2, [[1.0, 0.80]], state=TrialState.PRUNED)
    seen = ScaledView(study, ("val_accuracy", "train_seconds"), Scale("log")).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert seen[0].values == pytest.approx([2.0, 1.0])  # error 0.01: 2 decades below 1; 10 s: 1 decade above 1 s
    assert seen[1].values is None  # a pruned trial has no values to scale
    # Objectives in the other order are scaled by name; accuracy 1 and 0 s are clamped, not infinite.
    other = optuna.create_study(directions=["minimize", "maximize"])
    other.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[0.0, 1.0]))
    assert all(map(math.isfinite, ScaledView(other, ("train_seconds", "val_accuracy"), Scale("log")).get_trials()[0].values))
    assert [t.values for t in optuna.load_study(study_name="scaled", storage=storage).get_trials()] == [[0.99, 10.0], None]


def test_the_study_file_chooses_the_scale_the_sampler_sees(tmp_path):
    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            seen.extend(t.values for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            return super().sample_independent(study, trial, name, distribution)

    for scale, expected in (("log", [2.0, 1.0]), ("linear", [0.99, 10.0])):
        path = tmp_path / f"{scale}.toml"
        path.write_text(study_text(scale).replace("seed = 0", f'seed = 0\nfront_scale = "{scale}"'))
        spec = load_study(path)
        assert spec.front_scale == scale
        sampler = make_sampler(spec)
        sampler._factory = Recording  # the study file's views, around a sampler that records what it is shown
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        add(study, 2, [[0.5, 0.90], [10.0, 0.99]])
        seen.clear()
        study.ask(SPACE)
        assert seen[0] == pytest.approx(expected)
