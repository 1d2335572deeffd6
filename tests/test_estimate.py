"""Seconds you can compare: a study's trials from two machines in the study machine's seconds, and
`sweep estimate` before anything trains."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import optuna
import pandas as pd
import pytest

from mnist_core import machine
from sweep.record import records
from sweep.testing.stores import load, runs, study_text

# A second machine: a quarter of the pinned profile's arithmetic and bandwidth, twice its fixed costs.
SLOW = {"gflops": 25.0, "gbps": 2.5, "batch_us": 800.0, "call_us": 200.0, "layer_us": 200.0, "host": "slow-host", "cores": [1]}


@pytest.fixture
def on_machine(monkeypatch, tmp_path):
    """Switch this process to a pinned profile with `changes` (as if the next command ran on another machine)."""

    def switch(**changes):
        pinned = json.loads(Path(os.environ[machine.PIN_ENV]).read_text())
        path = tmp_path / f"profile-{len(changes)}-{changes.get('host', 'here')}.json"
        path.write_text(json.dumps({**pinned, **changes}))
        monkeypatch.setenv(machine.PIN_ENV, str(path))
        monkeypatch.setattr(machine, "_current", None)

    return switch


def test_trials_of_another_machine_are_converted_to_the_study_machines_seconds(cli, on_machine):
    on_machine()
    assert cli("run", "--trials", "2")[0] == 0  # this machine starts the study: its seconds are study seconds
    on_machine(**SLOW)
    assert cli("run", "--trials", "4")[0] == 0
    study = load(cli.store)
    here = machine.MachineProfile.from_fields(study.user_attrs["machine"])
    assert here.host == socket.gethostname() != "slow-host"
    by_host = {}
    for rec in records(study):
        by_host.setdefault(rec.machine["host"], []).append(rec)
        assert rec.study_seconds == pytest.approx(rec.train_seconds * rec.seconds_scale)
        assert rec.curve[-1][0] <= rec.study_seconds + 1e-9  # the curve is in study seconds too
    assert [r.seconds_scale for r in by_host[here.host]] == [1.0, 1.0]
    # Each run on the slow machine is worth fewer seconds of the study's, by its own terms (not one factor).
    slow = by_host["slow-host"]
    assert len(slow) == 2 and all(r.seconds_scale < 1.0 for r in slow)
    # The objective Optuna and the front see is the study seconds; MLflow keeps both, and the machine.
    for trial in study.trials[2:]:
        assert trial.values[1] == pytest.approx(trial.user_attrs["study_seconds"])
    _, all_runs = runs(cli.store)
    trial_runs = [r for r in all_runs if r.info.run_name.startswith("trial-")]
    assert {r.data.tags["machine.host"] for r in trial_runs} == {here.host, "slow-host"}
    assert all("study_seconds" in r.data.metrics and "flops" in r.data.metrics for r in trial_runs)
    code, out, _ = cli("report", data=False)
    assert code == 0 and f"study seconds are seconds on {here.label}" in out
    assert f"2 trial(s) on {here.host}" in out and "2 trial(s) on slow-host" in out


def test_a_study_stored_before_profiles_keeps_raw_seconds_and_report_says_so(cli, study_file):
    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    # A trial as stores written before profiles hold it: seconds, a curve, no machine, no study seconds.
    spec = load_study(study_file)
    study = open_study(spec, open_storage(None, cli.store))
    params = {"depth": 1, "width": 8, "epochs": 2, "learning_rate": 0.005}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={p.name: p.distribution for p in spec.params}, values=[0.5, 2.0],
        user_attrs={"curve": [[1.2, 0.4], [2.0, 0.5]], "train_seconds": 2.0, "best_val_accuracy": 0.5, "best_epoch": 2}))
    code, out, _ = cli("report", data=False)
    assert code == 0 and "started before machine profiles were kept: its seconds are each trial's raw seconds" in out
    assert "1 trained trial(s) stored without a machine profile" in out
    assert pd.read_csv(cli.store / "reports" / "tiny" / "trials.csv")["study_seconds"].tolist() == [2.0]


def test_estimate_a_net_of_your_own_the_seed_study_and_a_stored_trial(cli, tmp_path):
    code, out, err = cli("estimate", "--depth", "10", "--width", "5000", "--epochs", "10", "--batch-size", "100", data=False, study=None)
    assert code == 0, err
    assert "10 x 5000, 10 epoch(s) at batch 100: 229,020,010 parameters" in out and "predicted" in out and "memory:" in out
    code, out, err = cli("estimate", "--study", "seed", data=False, study=None)
    assert code == 0 and "5 x 2000, 10 epoch(s) at batch 100: 17,598,010 parameters" in out, err
    two_epochs = tmp_path / "two.toml"  # each trial times a steady epoch, which the estimate learns from
    two_epochs.write_text(study_text(epochs="{ low = 2, high = 3 }"))
    assert cli("run", "--trials", "2", study=two_epochs)[0] == 0
    code, out, err = cli("estimate", "--trial", "1", data=False, study=two_epochs)
    # Corrected by the store's trials: both, or one when the fit drops the other as disturbed (a busy machine).
    assert code == 0 and re.search(r"the profile corrected by [12] trial\(s\) of the store", out), err


@pytest.mark.parametrize("args, message", [
    (["--depth", "3"], "pass --depth and --width together"),
    (["--depth", "64", "--width", "65536"], "GiB (weights, gradients, optimizer state, one batch) but"),
    (["--depth", "2", "--width", "8", "--optimizer", "lion"], "optimizer"),
    (["--trial", "7"], "has no trial 7"),
    ([], "searches depth, width, epochs, learning_rate: pass --trial N"),
])
def test_estimate_refuses_bad_input_with_one_line(cli, args, message):
    if "--trial" in args:
        assert cli("run", "--trials", "1")[0] == 0
    code, out, err = cli("estimate", *args, data=False)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_charts_seed_point_is_measured_on_the_study_machine_or_predicted_never_taken_from_another(cli, on_machine):
    from sweep.report import SEED_STUDY, seed_point
    from sweep.studyfile import load_study

    on_machine()
    assert cli("run", "--trials", "1")[0] == 0
    study = load(cli.store)
    here = machine.MachineProfile.from_fields(study.user_attrs["machine"])
    label, seconds, accuracy = seed_point(study, here)
    assert label == "seed model 5x2000, 10 ep (predicted for this machine)" and seconds > 0 and 0.97 < accuracy < 0.99
    assert seed_point(study, None) is None  # a study without a machine: no point rather than another's seconds
    # The store's seed study, trained on another machine: still predicted. Trained on this one: measured.
    seed = optuna.create_study(study_name=load_study(SEED_STUDY).name, storage=study._storage)
    for host, seconds in (("elsewhere", 999.0), (here.host, 321.0)):
        seed.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=0.9777,
            user_attrs={"machine": {**here.fields(), "host": host}, "train_seconds": seconds, "best_val_accuracy": 0.9777}))
        label, got, accuracy = seed_point(study, here)
        if host == "elsewhere":
            assert label.endswith("(predicted for this machine)") and got != 999.0
        else:
            assert label.startswith("seed model 5x2000, 10 ep (measured here, ") and (got, accuracy) == (321.0, 0.9777)
