"""Study files: the shipped ones load; every invalid file is refused with file, key and reason."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mnist_core.model import MLPConfig
from sweep.studyfile import StudyFileError, load_study

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def test_shipped_studies_load():
    names = {load_study(p).name for p in STUDIES.glob("*.toml")}
    assert {"seed", "tradeoff", "accuracy"} <= names
    tradeoff = load_study(STUDIES / "tradeoff.toml")
    assert tradeoff.directions == ["maximize", "minimize"] and tradeoff.pruner == "dominance"
    accuracy = load_study(STUDIES / "accuracy.toml")
    assert accuracy.pruner == "hyperband" and not accuracy.multi_objective


def test_seed_study_is_the_students_model():
    spec = load_study(STUDIES / "seed.toml")
    config = spec.config_for(optuna.trial.FixedTrial({}), seed=spec.seed)
    assert config.model == MLPConfig(depth=5, width=2000, activation="relu", optimizer="adam", learning_rate=1e-3)
    assert (config.epochs, config.batch_size, spec.validation_fraction) == (10, 100, 0.1)


def test_learning_rate_is_searched_on_a_log_scale():
    for name in ("tradeoff.toml", "accuracy.toml"):
        lr = load_study(STUDIES / name).param("learning_rate")
        assert lr.log and lr.role == "nuisance"


def test_trial_becomes_config():
    spec = load_study(STUDIES / "tradeoff.toml")
    trial = optuna.trial.FixedTrial({"depth": 2, "width": 64, "epochs": 3, "learning_rate": 0.01, "batch_size": 128, "dropout": 0.1,
                                     "lr_schedule": "linear", "input_crop": 2})
    config = spec.config_for(trial, seed=7)
    assert config.model.widths == (64, 64) and config.model.dropout == 0.1 and config.model.optimizer == "adam"
    assert config.model.input_crop == 2
    assert config.model.lr_schedule == "linear" and config.model.final_lr_fraction == 0.0
    assert (config.epochs, config.batch_size, config.seed) == (3, 128, 7)


BASE = """
[study]
name = "t"
objectives = ["val_accuracy"]
[scientific]
depth = { low = 1, high = 3 }
"""


@pytest.mark.parametrize(
    "extra, key, reason",
    [
        ("[bogus]\nx = 1\n", "bogus", "unknown section"),
        ("[budget]\ntrial_secs = 3\n", "budget.trial_secs", "unknown key"),
        ("[nuisance]\nwidth = { low = 64, high = 8 }\n", "nuisance.width", "inverted range"),
        ("[nuisance]\nwidth = { low = 8, high = 8 }\n", "nuisance.width", "empty or inverted"),
        ("[nuisance]\nbatch_size = { choices = [] }\n", "nuisance.batch_size", "non-empty list"),
        ("[nuisance]\nwidth = { low = 8.5, high = 64 }\n", "nuisance.width.low", "expected int"),
        ("[nuisance]\nlearning_rate = { low = nan, high = 0.1 }\n", "nuisance.learning_rate.low", "finite"),
        ("[nuisance]\nlearning_rate = { low = 0.001, high = inf }\n", "nuisance.learning_rate.high", "finite"),
        ("[nuisance]\ndropout = { low = 0.0, high = 0.5, log = true }\n", "nuisance.dropout", "log scale needs low > 0"),
        ("[nuisance]\nwidth = { low = 8, high = 100000000 }\n", "nuisance.width.high", "sane range"),
        ("[nuisance]\nwidth = { low = 8, hi = 64 }\n", "nuisance.width", "unknown key"),
        # A spread trial's start value lies in its parameter's range or choices
        ("[nuisance]\nwidth = { low = 8, high = 64, start = 128 }\n", "nuisance.width.start", "outside the range [8, 64]"),
        ("[nuisance]\nbatch_size = { choices = [64, 128], start = 256 }\n", "nuisance.batch_size.start", "not one of the choices"),
        ('[nuisance]\nlearning_rate = { low = 0.001, high = 0.1, start = "fast" }\n', "nuisance.learning_rate.start", "expected float"),
        ("[fixed]\ndepth = 2\n", "depth", "more than once"),
        ("[fixed]\nactivation = \"swishy\"\n", "fixed.activation", "not one of"),
        ("[fixed]\nepochs = \"10\"\n", "fixed.epochs", "expected int"),
        ("[budget]\ntrial_seconds = -5\n", "budget.trial_seconds", "outside"),
        # The training recipe's keys
        ('[fixed]\nlr_schedule = "step"\n', "fixed.lr_schedule", "not one of constant, cosine, linear"),
        ("[fixed]\nwarmup_fraction = 0.9\n", "fixed.warmup_fraction", "sane range"),
        ("[fixed]\nfinal_lr_fraction = -0.1\n", "fixed.final_lr_fraction", "sane range"),
        ('[fixed]\nweight_decay = "0.01"\n', "fixed.weight_decay", "expected float"),
        ("[fixed]\nlabel_smoothing = 0.7\n", "fixed.label_smoothing", "sane range"),
        ("[fixed]\ninput_dropout = 1.0\n", "fixed.input_dropout", "sane range"),
        ("[nuisance]\ninput_crop = { choices = [0, 6] }\n", "nuisance.input_crop", "sane range"),
        ("[fixed]\ntranslate = 0.8\n", "fixed.translate", "sane range"),
        ("[nuisance]\nrotate = { low = -5.0, high = 10.0 }\n", "nuisance.rotate.low", "sane range"),
        ("[fixed]\nelastic = true\n", "fixed.elastic", "expected float"),
        ("[fixed]\nelastic_sigma = 0.1\n", "fixed.elastic_sigma", "sane range"),
    ],
)
def test_invalid_study_files_name_file_key_and_reason(tmp_path, extra, key, reason):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + extra)
    with pytest.raises(StudyFileError) as error:
        load_study(path)
    message = str(error.value)
    assert message.startswith(str(path)) and key in message and reason in message and "\n" not in message


@pytest.mark.parametrize(
    "text, reason",
    [
        ("[study\nname = 1", "not valid TOML"),
        ('[study]\nobjectives = ["val_accuracy", "train_seconds"]\npruner = "median"\n', "cannot prune multi-objective"),
        ('[study]\nobjectives = ["val_accuracy"]\npruner = "dominance"\n', "dominance pruning needs objectives"),
        ('[study]\nobjectives = ["val_accuracy"]\npruner_warmup_epochs = 3\n', "only the median and hyperband pruners"),
        ('[study]\nobjectives = ["val_accuracy"]\npruner = "median"\npruner_warmup_epochs = 0\n', "study.pruner_warmup_epochs"),
        ('[study]\nobjectives = ["val_accuracy", "train_seconds"]\nlearn_from_epochs = "yes"\n', "must be true or false"),
        ('[study]\nobjectives = ["val_accuracy"]\nlearn_from_epochs = true\n', "learn_from_epochs: needs sampler"),
        ('[study]\nobjectives = ["val_accuracy", "train_seconds"]\nsampler = "nsga2"\nlearn_from_epochs = true\n', "learn_from_epochs: needs sampler"),
        ('[study]\nobjectives = ["val_accuracy", "train_seconds"]\nlearn_from_epochs = true\n[fixed]\nepochs = 3\n', "needs epochs searched"),
        ('[study]\nobjectives = ["val_loss", "train_seconds"]\npruner = "dominance"\n', "dominance pruning needs objectives"),
        ('[study]\nobjectives = ["accuracy"]\n', "study.objectives"),
        ("[fixed]\ndepth = 3\nwidth = [8, 8]\n", "width lists 2 layers but depth is 3"),
    ],
)
def test_other_invalid_files(tmp_path, text, reason):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(StudyFileError, match=reason):
        load_study(path)


def test_missing_file(tmp_path):
    with pytest.raises(StudyFileError, match="no such study file"):
        load_study(tmp_path / "nope.toml")
