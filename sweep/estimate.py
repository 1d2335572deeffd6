"""`sweep estimate`: how long a net will train on this machine, and whether it fits in memory, before it runs.

The student's question, "will 10 x 5000 finish, and when?", answered from the net's work (`mnist_core/work.py`)
and this machine's profile (`mnist_core/machine.py`), corrected by a stored study's trials when there are any
(`sweep/costmodel.py`), instead of by six hours of training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import optuna

from mnist_core.digits import NUM_CLASSES, TRAIN_IMAGES
from mnist_core.machine import MachineProfile, current
from mnist_core.model import MLPConfig, param_count
from mnist_core.trainer import TrainConfig
from mnist_core.work import BYTES_PER_VALUE
from sweep import costmodel
from sweep.context import CommandError, Options, open_store, open_study, study_spec
from sweep.studyfile import StudySpec

# Without trials to measure it, the range of an estimate: the profile's error on real runs
# (estimate_error_pct_median in bench/results/machines.json) with room to spare.
PROFILE_RANGE = 0.3
# Optimizer slots per parameter: Adam's and AdamW's two moments, RMSprop's one.
SLOTS = {"adam": 2, "adamw": 2, "sgd": 0, "rmsprop": 1}


@dataclass(frozen=True)
class Memory:
    """Bytes one training run needs at once: weights, their gradients, the optimizer's slots, one batch's
    activations (forward values and their gradients) and the resident training images."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    images: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.images


def memory(config: TrainConfig, examples: int) -> Memory:
    n = param_count(config.model)
    units = config.model.inputs + sum(config.model.widths) + NUM_CLASSES
    return Memory(weights=n * BYTES_PER_VALUE, gradients=n * BYTES_PER_VALUE,
                  optimizer=n * BYTES_PER_VALUE * SLOTS[config.model.optimizer],
                  activations=2 * config.batch_size * units * BYTES_PER_VALUE, images=examples * 28 * 28)


def available_memory(profile: MachineProfile) -> int | None:
    """Bytes free for a run: the GPU's memory when training there, else the system's available memory."""
    if profile.gpu_memory_mib:
        return profile.gpu_memory_mib * 2**20
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
    return pages * os.sysconf("SC_PAGE_SIZE") if pages else None


def config_of(spec: StudySpec, study: optuna.Study | None, trial_number: int | None) -> TrainConfig:
    """The run to estimate: trial `trial_number` of the stored `study`, or the study file's own fixed configuration."""
    if study is not None and trial_number is not None:
        if not 0 <= trial_number < len(study.trials):
            raise CommandError(f"study {study.study_name!r} has no trial {trial_number} (it has {len(study.trials)})")
        trial = study.trials[trial_number]
        return spec.config_for(optuna.trial.FixedTrial(trial.params), seed=spec.seed + trial_number)
    if spec.params:
        raise CommandError(f"study {spec.name!r} searches {', '.join(p.name for p in spec.params)}: "
                           "pass --trial N of its store, or --depth, --width, --epochs and --batch-size")
    return spec.config_for(optuna.trial.FixedTrial({}), seed=spec.seed)


def shape_config(depth: int, width: int, epochs: int, batch_size: int, optimizer: str) -> TrainConfig:
    """The net given by `--depth/--width/...`: ReLU layers of one width, the seed's learning rate."""
    try:
        return TrainConfig(MLPConfig(depth=depth, width=width, optimizer=optimizer), epochs=epochs, batch_size=batch_size)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def run_estimate(options: Options, config: TrainConfig | None, trial_number: int | None) -> int:
    """Print the predicted seconds (with a range), FLOPs and memory of a run on this machine; exit 2 if it
    cannot fit in memory."""
    spec = study_spec(options)
    study = open_study(options, spec, open_store(options), create=False) if trial_number is not None else None
    config = config or config_of(spec, study, trial_number)
    examples = round(TRAIN_IMAGES * (1 - spec.validation_fraction))
    profile = current()
    # A stored study's trials correct the profile for this trainer; without them the profile stands alone.
    model = costmodel.fit(study, examples, profile) if study is not None else costmodel.CostModel(profile)
    seconds = model.predict(config, examples)
    low, high = (model.low, model.high) if model.trials >= 2 else (1 - PROFILE_RANGE, 1 + PROFILE_RANGE)
    need, free = memory(config, examples), available_memory(profile)
    run = config.work(examples)
    shape = f"{config.model.depth} x {config.model.width}, {config.epochs} epoch(s) at batch {config.batch_size}"
    if free is not None and need.total > free:
        raise CommandError(f"{shape} needs {need.total / 2**30:.1f} GiB (weights, gradients, optimizer state, one batch) "
                           f"but {free / 2**30:.1f} GiB is free on {profile.label}: use a narrower or shallower net")
    basis = f"the profile corrected by {model.trials} trial(s) of the store" if model.trials else "the machine profile alone"
    print(f"{shape}: {param_count(config.model):,} parameters, {run.flops(config.epochs):.3g} FLOPs")
    print(f"predicted {_duration(seconds)} on {profile.label} (range {_duration(low * seconds)} - {_duration(high * seconds)}; "
          f"{basis}, {profile.source} {profile.measured})")
    print(f"memory: {need.total / 2**30:.2f} GiB (weights {need.weights / 2**20:.0f} MiB, optimizer state "
          f"{need.optimizer / 2**20:.0f} MiB){f' of {free / 2**30:.1f} GiB free' if free else ''}")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
