"""What the tool keeps on an Optuna trial, and the rules that read it: which states are finished, and which
trials were skipped for lack of sweep time (a state Optuna's samplers ignore, so no judgement on the config)."""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# The reason of a configuration not run because the sweep's time left was too short for it. Recorded as FAIL,
# which TPE, NSGA-II and random sampling ignore: being late says nothing about a configuration.
SWEEP_TIME_SKIP = "skipped: sweep time"


def skipped_for_sweep_time(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get("reason") or "").startswith(SWEEP_TIME_SKIP)
