"""Studies as data: a TOML file names the search space, fixed values, objectives and budgets.

Following the tuning playbook, hyperparameters are *scientific* (what the study is about),
*nuisance* (tuned so the comparison is fair) or *fixed*. `StudySpec.config_for(trial)` is the
one place where a trial becomes a `TrainConfig`.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from mnist_core.augment import Augmentation
from mnist_core.model import MLPConfig
from mnist_core.schema import Bound, bounds
from mnist_core.trainer import TrainConfig
from sweep.points import SCALES, Scale

# The study files shipped with the package (`studies/` in the source tree links here).
STUDIES = Path(__file__).resolve().parent / "studies"
DEFAULT_STUDY = STUDIES / "map.toml"


def study_path(text: str) -> Path:
    """`--study`: a study file, or the name of a shipped one (`map`, `accuracy`, `seed`, `tradeoff`)."""
    path = Path(text)
    if not path.exists() and not path.suffix and (STUDIES / f"{text}.toml").is_file():
        return STUDIES / f"{text}.toml"
    return path


def shipped_studies() -> list[str]:
    return sorted(p.stem for p in STUDIES.glob("*.toml"))


class StudyFileError(Exception):
    """A study file is missing or invalid; the message names the file, the key and the reason."""


# Each hyperparameter's kind and sane range, from the config dataclasses' own bounds (mnist_core/schema.py).
MODEL_BOUNDS = bounds(MLPConfig)
AUGMENTATION_BOUNDS = bounds(Augmentation)
RUN_BOUNDS = bounds(TrainConfig)  # epochs, batch_size
HYPERPARAMETERS: dict[str, Bound] = {**MODEL_BOUNDS, **AUGMENTATION_BOUNDS, **RUN_BOUNDS}
# The end of its range at which each value that sets a run's cost is cheapest: the net's size, the batches
# and epochs, moving the images (any move turns it on) and the dropout masks. The others do not change it.
CHEAPEST = {"depth": min, "width": min, "input_crop": max, "epochs": min, "batch_size": max, "strength": min,
            "translate": min, "rotate": min, "scale": min, "elastic": min, "dropout": min, "input_dropout": min}
# objective name in study files -> (direction, the trial metric it reads: scored at the best validation epoch)
OBJECTIVES = {
    "val_accuracy": ("maximize", "best_val_accuracy"),
    "val_loss": ("minimize", "best_val_loss"),
    "train_seconds": ("minimize", "study_seconds"),  # on the machine that started the study (sweep/costmodel.py)
}
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("none", "median", "hyperband", "dominance")  # dominance: ours, for accuracy against seconds (sweep/dominance.py)
ROLES = ("scientific", "nuisance")
SCHEMA = {
    "study": {"name", "description", "objectives", "sampler", "pruner", "pruner_warmup_epochs", "learn_from_epochs", "seed", "trials",
              "min_epochs", "front_scale", "cost_spread_trials"},
    "budget": {"trial_seconds", "sweep_seconds"},
    "data": {"validation_fraction", "split_seed"},
    "scientific": set(HYPERPARAMETERS),
    "nuisance": set(HYPERPARAMETERS),
    "fixed": set(HYPERPARAMETERS),
}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: an int/float range (optionally log) or a list of choices, and optionally
    the value the cost-spread trials take (`start`, sweep/spread.py) before the sampler searches it."""

    name: str
    role: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    start: Any = None

    @property
    def distribution(self) -> optuna.distributions.BaseDistribution:
        """Optuna's distribution of this parameter, as `suggest` asks for it."""
        if self.choices is not None:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if HYPERPARAMETERS[self.name].kind is int:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if HYPERPARAMETERS[self.name].kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    path: Path
    name: str
    description: str
    objectives: tuple[str, ...]
    sampler: str
    pruner: str
    pruner_warmup_epochs: int
    learn_from_epochs: bool
    seed: int
    trials: int
    trial_seconds: float
    sweep_seconds: float | None
    validation_fraction: float
    split_seed: int
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    min_epochs: int | None = None  # None: the default rule of `epochs_needed`
    front_scale: str = "log"  # how the sampler, the hypervolume and the chart compare the front (`points.Scale`)
    cost_spread_trials: int = 0  # the first trials, each placed at its own level of predicted cost (sweep/spread.py)
    label: str = ""  # the file as runs and the study record it (`file_label`)

    @property
    def scale(self) -> Scale:
        return Scale(self.front_scale)

    @property
    def every_epoch_is_a_point(self) -> bool:
        """Accuracy against seconds: each full epoch is a point of the front, whatever comes after it."""
        return sorted(self.objectives) == ["train_seconds", "val_accuracy"]

    def epochs_needed(self, planned: int) -> int:
        """The epochs a trial planned for `planned` must finish to give what the study scores: worth starting
        only if they fit. 1 where every epoch is a point; the pruner's warm-up for a pruned single-objective
        study (no run is judged before it); else every planned epoch. `study.min_epochs` overrides."""
        if self.min_epochs is not None:
            needed = self.min_epochs
        elif self.every_epoch_is_a_point:
            needed = 1
        elif self.pruner in ("median", "hyperband"):
            needed = self.pruner_warmup_epochs
        else:
            needed = planned
        return min(needed, planned)

    def param(self, name: str) -> Param | None:
        """The searched hyperparameter `name`, or None where the study fixes it or leaves it at its default."""
        return next((p for p in self.params if p.name == name), None)

    def cheapest_params(self, others: dict[str, Any] | None = None) -> dict[str, Any]:
        """The searched values that train fastest: the smallest net (fewest layers, narrowest, most border
        cropped), fewest epochs, largest batch, least augmentation and dropout (`CHEAPEST`). The values that do not change the cost come
        from `others`, or are the low ends of their ranges."""
        values = {}
        for p in self.params:
            if others and p.name not in CHEAPEST:
                values[p.name] = others[p.name]
                continue
            value = CHEAPEST.get(p.name, min)(p.choices or (p.low, p.high))
            values[p.name] = int(value) if p.choices is None and HYPERPARAMETERS[p.name].kind is int else value
        return values

    def cheapest_config(self) -> TrainConfig:
        """The configuration the search space allows that trains fastest (`cheapest_params`)."""
        return self.config_for(optuna.trial.FixedTrial(self.cheapest_params()), seed=self.seed)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o][0] for o in self.objectives]

    @property
    def objective_metrics(self) -> list[str]:
        return [OBJECTIVES[o][1] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def fingerprint(self) -> str:
        """What must match for a stored study to be resumed with this file (space, fixed, objectives)."""
        space = {p.name: [p.low, p.high, p.log, p.choices] for p in self.params}
        return json.dumps({"space": space, "fixed": self.fixed, "objectives": self.objectives}, sort_keys=True)

    def config_for(self, trial: optuna.trial.BaseTrial, seed: int) -> TrainConfig:
        """The training run a trial stands for: its sampled values over the fixed ones."""
        values = dict(self.fixed)
        values.update({p.name: p.suggest(trial) for p in self.params})
        model = MLPConfig(**{k: values[k] for k in MODEL_BOUNDS if k in values})
        augmentation = Augmentation(**{k: values[k] for k in AUGMENTATION_BOUNDS if k in values})
        run = {k: values[k] for k in RUN_BOUNDS if k in values}
        return TrainConfig(model=model, seed=seed, augmentation=augmentation, **run)


def _fail(path: Path, key: str, reason: str) -> StudyFileError:
    return StudyFileError(f"{path}: {key}: {reason}")


def _check_value(path: Path, key: str, name: str, value: Any, allow_list: bool = False) -> Any:
    """Kind and sane range of one hyperparameter value (a fixed width may list one per layer)."""
    if allow_list and name == "width" and isinstance(value, list):
        return [_check_value(path, f"{key}[{i}]", name, item) for i, item in enumerate(value)]
    try:
        return HYPERPARAMETERS[name].check(name, value)
    except ValueError as exc:
        raise _fail(path, key, str(exc)) from None


def _param(path: Path, role: str, name: str, spec: Any) -> Param:
    key = f"{role}.{name}"
    if not isinstance(spec, dict):
        raise _fail(path, key, "expected a table like { low = 1, high = 4 } or { choices = [...] }")
    unknown = set(spec) - {"low", "high", "log", "choices", "start"}
    if unknown:
        raise _fail(path, key, f"unknown key(s) {', '.join(sorted(unknown))}; use low/high/log or choices, and start")
    start = _check_value(path, f"{key}.start", name, spec["start"]) if "start" in spec else None
    if "choices" in spec:
        if set(spec) - {"start"} != {"choices"}:
            raise _fail(path, key, "choices cannot be combined with low/high/log")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise _fail(path, key, "choices must be a non-empty list")
        values = tuple(_check_value(path, f"{key}.choices", name, c) for c in choices)
        if len(set(values)) != len(values):
            raise _fail(path, key, "choices repeat a value")
        if start is not None and start not in values:
            raise _fail(path, f"{key}.start", f"{start!r} is not one of the choices {list(values)}")
        return Param(name, role, choices=values, start=start)
    kind = HYPERPARAMETERS[name].kind
    if kind not in (int, float):
        raise _fail(path, key, f"{name} is not numeric: give choices = [...]")
    if "low" not in spec or "high" not in spec:
        raise _fail(path, key, "a range needs both low and high")
    low = _check_value(path, f"{key}.low", name, spec["low"])
    high = _check_value(path, f"{key}.high", name, spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _fail(path, key, f"log must be true or false, got {log!r}")
    if low >= high:
        raise _fail(path, key, f"empty or inverted range: low {low} >= high {high} (put a single value in [fixed])")
    if log and low <= 0:
        raise _fail(path, key, f"a log scale needs low > 0, got {low}")
    if start is not None and not low <= start <= high:
        raise _fail(path, f"{key}.start", f"{start} is outside the range [{low}, {high}]")
    return Param(name, role, low=low, high=high, log=log, start=start)


def _number(path: Path, key: str, value: Any, kind: type, low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise _fail(path, key, f"expected {kind.__name__}, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise _fail(path, key, f"{value} is outside [{low}, {high}]")
    return kind(value)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; every problem is a `StudyFileError` naming file and key."""
    path = Path(path)
    document = _read(path)
    study = _study_section(path, document.get("study", {}))
    params, fixed = _space_sections(path, document, study["learn_from_epochs"])
    spec = StudySpec(path=path, **study, **_budget_section(path, document.get("budget", {})),
                     **_data_section(path, document.get("data", {})), params=tuple(params), fixed=fixed,
                     label=file_label(path, path.read_bytes()))
    # Combinations the per-value checks cannot see (a width list against depth, say).
    try:
        spec.config_for(optuna.trial.FixedTrial({p.name: _first(p) for p in params}), seed=spec.seed)
    except ValueError as exc:
        raise _fail(path, "fixed", str(exc)) from None
    return spec


def file_label(path: Path, content: bytes) -> str:
    """A study file as a run records it, alike on every machine: a shipped study by its name, another file by
    its path relative to the working directory (its name if it lies elsewhere), and a hash of its content.
    No folder of the machine that ran it; the file itself is the parent run's artifact."""
    path = path.resolve()
    if path.parent == STUDIES:
        where = path.stem
    else:
        try:
            where = str(path.relative_to(Path.cwd().resolve()))
        except ValueError:
            where = path.name
    return f"{where} sha256:{hashlib.sha256(content).hexdigest()[:12]}"


def _read(path: Path) -> dict[str, Any]:
    """The file's TOML, with only known sections (each a table) and known keys."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyFileError(f"{path}: no such study file; pass a file or a shipped study: {', '.join(shipped_studies())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyFileError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise StudyFileError(f"{path}: not valid TOML ({exc})") from None
    for section, value in document.items():
        if section not in SCHEMA:
            raise _fail(path, section, f"unknown section; expected {', '.join(SCHEMA)}")
        if not isinstance(value, dict):
            raise _fail(path, section, "expected a table")
        unknown = set(value) - SCHEMA[section]
        if unknown:
            raise _fail(path, f"{section}.{sorted(unknown)[0]}", f"unknown key; expected one of {', '.join(sorted(SCHEMA[section]))}")
    return document


def _study_section(path: Path, study: dict[str, Any]) -> dict[str, Any]:
    """[study]: name, objectives, sampler, pruner and what goes with them."""
    name = study.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise _fail(path, "study.name", "must be a non-empty string")
    objectives = study.get("objectives", ["val_accuracy"])
    if not isinstance(objectives, list) or not objectives or any(o not in OBJECTIVES for o in objectives):
        raise _fail(path, "study.objectives", f"must be a non-empty list of {', '.join(OBJECTIVES)}, got {objectives!r}")
    if len(set(objectives)) != len(objectives):
        raise _fail(path, "study.objectives", "repeats an objective")
    sampler, pruner = _sampler_and_pruner(path, study, objectives)
    front_scale = study.get("front_scale", "log")
    if front_scale not in SCALES:
        raise _fail(path, "study.front_scale", f"{front_scale!r} is not one of {', '.join(repr(s) for s in SCALES)}")
    learn_from_epochs = study.get("learn_from_epochs", False)
    if not isinstance(learn_from_epochs, bool):
        raise _fail(path, "study.learn_from_epochs", f"must be true or false, got {learn_from_epochs!r}")
    if learn_from_epochs and (sampler != "tpe" or sorted(objectives) != ["train_seconds", "val_accuracy"]):
        raise _fail(path, "study.learn_from_epochs", "needs sampler = \"tpe\" and objectives = [\"val_accuracy\", \"train_seconds\"]")
    return dict(
        name=name, description=str(study.get("description", "")), objectives=tuple(objectives), sampler=sampler, pruner=pruner,
        pruner_warmup_epochs=_number(path, "study.pruner_warmup_epochs", study.get("pruner_warmup_epochs", 1), int, 1, 10_000),
        learn_from_epochs=learn_from_epochs,
        min_epochs=_number(path, "study.min_epochs", study["min_epochs"], int, 1, 10_000) if "min_epochs" in study else None,
        front_scale=front_scale,
        cost_spread_trials=_number(path, "study.cost_spread_trials", study.get("cost_spread_trials", 0), int, 0, 10_000),
        seed=_number(path, "study.seed", study.get("seed", 0), int, 0, 2**31 - 1),
        trials=_number(path, "study.trials", study.get("trials", 50), int, 1, 100_000),
    )


def _sampler_and_pruner(path: Path, study: dict[str, Any], objectives: list[str]) -> tuple[str, str]:
    sampler = study.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _fail(path, "study.sampler", f"{sampler!r} is not one of {', '.join(SAMPLERS)}")
    pruner = study.get("pruner", "none")
    if pruner not in PRUNERS:
        raise _fail(path, "study.pruner", f"{pruner!r} is not one of {', '.join(PRUNERS)}")
    if pruner == "dominance" and sorted(objectives) != ["train_seconds", "val_accuracy"]:
        raise _fail(path, "study.pruner", "dominance pruning needs objectives = [\"val_accuracy\", \"train_seconds\"]")
    if pruner not in ("none", "dominance") and len(objectives) > 1:
        raise _fail(path, "study.pruner", "Optuna cannot prune multi-objective studies; use pruner = \"dominance\" or \"none\"")
    if "pruner_warmup_epochs" in study and pruner not in ("median", "hyperband"):
        raise _fail(path, "study.pruner_warmup_epochs", "only the median and hyperband pruners use it; remove it or pick one of them")
    return sampler, pruner


def _budget_section(path: Path, budget: dict[str, Any]) -> dict[str, Any]:
    """[budget]: seconds per trial and, optionally, for the whole sweep."""
    sweep = budget.get("sweep_seconds")
    return dict(
        trial_seconds=_number(path, "budget.trial_seconds", budget.get("trial_seconds", 300), float, 1, 7 * 86_400),
        sweep_seconds=None if sweep is None else _number(path, "budget.sweep_seconds", sweep, float, 1, 30 * 86_400),
    )


def _data_section(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """[data]: the validation split, the same for every trial."""
    return dict(
        validation_fraction=_number(path, "data.validation_fraction", data.get("validation_fraction", 0.1), float, 0.01, 0.5),
        split_seed=_number(path, "data.split_seed", data.get("split_seed", 0), int, 0, 2**31 - 1),
    )


def _space_sections(path: Path, document: dict[str, Any], learn_from_epochs: bool) -> tuple[list[Param], dict[str, Any]]:
    """[scientific] and [nuisance] (searched) and [fixed]: each hyperparameter in one of them at most."""
    params = [_param(path, role, name, spec) for role in ROLES for name, spec in document.get(role, {}).items()]
    fixed = {name: _check_value(path, f"fixed.{name}", name, value, allow_list=True) for name, value in document.get("fixed", {}).items()}
    names = [p.name for p in params] + list(fixed)
    for duplicate in {n for n in names if names.count(n) > 1}:
        raise _fail(path, duplicate, "appears more than once across scientific, nuisance and fixed")
    if learn_from_epochs and not any(p.name == "epochs" and p.choices is None for p in params):
        raise _fail(path, "study.learn_from_epochs", "needs epochs searched as a range (e.g. epochs = { low = 1, high = 10 })")
    return params, fixed


def _first(param: Param) -> Any:
    if param.choices is not None:
        return param.choices[0]
    return int(param.low) if HYPERPARAMETERS[param.name].kind is int else param.low
