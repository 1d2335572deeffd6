"""The sweep end to end, in-process on synthetic data: run, resume, budgets, MLflow, report, best, predict."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from mnist_core import trainer as trainer_module
from sweep import loop
from sweep import trial as trial_module
from sweep.points import Scale, hypervolume
from sweep.record import TrialRecord
from sweep.storage import count_finished
from sweep.testing.stores import TINY, load, runs


def test_four_trial_sweep_end_to_end(cli, study_file):
    code, out, err = cli("run", "--trials", "4")
    assert code == 0, err
    study = load(cli.store)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4 and len(study.best_trials) >= 1
    assert all(f"trial {t.number:4d} COMPLETE" in out for t in trials)

    client, all_runs = runs(cli.store)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    assert len(children) == 4
    for trial in trials:
        (run,) = [r for r in children if r.info.run_id == trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert int(run.data.params["depth"]) == trial.params["depth"] and run.data.params["batch_size"] == "64"
        for metric in ("best_val_accuracy", "best_val_loss", "train_seconds", "seconds_per_epoch", "examples_per_second", "param_count", "best_epoch"):
            assert metric in run.data.metrics, metric
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(trial.values[0])
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == list(range(1, trial.params["epochs"] + 1))
        manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json")).read_text())
        assert manifest["seed"] == trial.user_attrs["seed"] and manifest["data_source"].startswith("idx:")
        assert len(manifest["data_checksum_sha256"]) == 64 and manifest["packages"]["optuna"]
        (dataset,) = run.inputs.dataset_inputs  # the data it trained on, for the UI's Dataset column
        assert dataset.dataset.name == "mnist" and dataset.dataset.digest == manifest["data_checksum_sha256"][:12]
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"tradeoff.png", "trials.csv", "points.csv", "tiny.toml"} <= parent_artifacts
    # Every epoch is a point: its cumulative seconds and validation accuracy, as the run logged them.
    for trial in trials:
        curve = trial.user_attrs["curve"]
        assert len(curve) == trial.params["epochs"] and curve[-1][0] <= trial.values[1]
        assert all(a[0] < b[0] for a, b in zip(curve, curve[1:])) and max(c[1] for c in curve) == trial.values[0]
    # The parent tells the story trial by trial.
    parent = parents[0].info.run_id
    assert [m.value for m in client.get_metric_history(parent, "trials_complete")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(parent, "front_size")] == [1, 2, 3, 4]
    assert parents[0].data.metrics["best_val_accuracy"] == max(t.values[0] for t in trials)
    points = pd.read_csv(Path(client.download_artifacts(parent, "points.csv")))
    assert len(points) == sum(t.params["epochs"] for t in trials)
    assert parents[0].data.metrics["front_size"] == points["pareto"].sum() >= 1
    # On the study's (default, log) front scale, within its per-trial budget: decades of time and of error.
    logged = parents[0].data.metrics["hypervolume"]
    assert logged == pytest.approx(hypervolume(points["val_accuracy"], points["study_seconds"], 120.0, Scale("log")))
    assert logged != pytest.approx(hypervolume(points["val_accuracy"], points["study_seconds"], 120.0, Scale("linear")))
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.sweep"])
    assert view["runsExpanded"] == {parent: True} and "params.`depth`" in view["selectedColumns"]
    # Its chart view starts with the trade-off, the scientific parameters against the score, and the curves.
    (scatter,) = [c for c in view["compareRunCharts"] if c["type"] == "SCATTER"]
    assert (scatter["xaxis"]["key"], scatter["yaxis"]["key"]) == ("train_seconds", "best_val_accuracy")
    (parallel,) = [c for c in view["compareRunCharts"] if c["type"] == "PARALLEL"]
    assert parallel["selectedParams"] == ["depth", "width", "epochs"] and parallel["selectedMetrics"] == ["best_val_accuracy"]
    assert [c["metricKey"] for c in view["compareRunCharts"] if c["type"] == "LINE"] == ["val_accuracy"]
    assert {c["metricSectionId"] for c in view["compareRunCharts"]} == {s["uuid"] for s in view["compareRunSections"]}
    # The study file is named alike on every machine: no folder of this one, and a hash of what it said.
    label = f"tiny.toml sha256:{hashlib.sha256(study_file.read_bytes()).hexdigest()[:12]}"
    assert parents[0].data.params["study_file"] == label == study.user_attrs["study_file"]
    assert json.loads(Path(client.download_artifacts(trials[0].user_attrs["mlflow_run_id"], "manifest.json")).read_text())["study_file"] == label
    # The parent run describes the study as it stands.
    note = parents[0].data.tags["mlflow.note.content"]
    best = max(t.values[0] for t in trials)
    assert "Study **tiny**" in note and "val_accuracy, train_seconds" in note and "4 trained (4 complete, 0 pruned)" in note
    assert f"Best point: validation accuracy {best:.4f}" in note and "The front's fast end" in note


def test_a_dominated_trial_is_pruned_keeps_its_points_and_is_told_pruned(cli, tmp_path, monkeypatch):
    """The lifecycle around `dominance.dominated` (its logic: tests/test_dominance.py): the trial stops as
    PRUNED with the reason, its MLflow run is KILLED, and its epochs stay points `best` can pick."""
    study_file = tmp_path / "dominance.toml"
    study_file.write_text(TINY.replace("[study]", '[study]\npruner = "dominance"').replace("epochs = { low = 1, high = 2 }\n", "")
                          .replace("[fixed]", "[fixed]\nepochs = 3"))
    seen = []

    def dominated_after_two(curve, planned, curves, front):
        seen.append((len(curve), planned, len(curves), len(front)))
        return "dominated: test" if len(curve) == 2 and len(curves) == 2 else None

    monkeypatch.setattr(trial_module.dominance, "dominated", dominated_after_two)
    code, out, err = cli("run", "--trials", "3", study=study_file)
    assert code == 0, err
    study = load(cli.store)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = study.trials[2]
    assert pruned.user_attrs["reason"] == "dominated: test" and len(pruned.user_attrs["curve"]) == 2
    assert seen[0] == (1, 3, 0, 0) and seen[-1][:3] == (2, 3, 2) and seen[-1][3] >= 1
    client, all_runs = runs(cli.store)
    (run,) = [r for r in all_runs if r.info.run_id == pruned.user_attrs["mlflow_run_id"]]
    assert run.info.status == "KILLED" and run.data.tags["reason"] == "dominated: test"
    assert cli("report", data=False, study=study_file)[0] == 0
    points = pd.read_csv(cli.store / "reports" / "tiny" / "points.csv")
    assert sorted(points[points["trial"] == 2]["epoch"]) == [1, 2]


def test_resume_continues_to_the_requested_total(cli):
    assert cli("run", "--trials", "2")[0] == 0
    code, out, _ = cli("run", "--trials", "3")
    assert code == 0 and "2/3 trials trained" in out
    study = load(cli.store)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert cli("run", "--trials", "3")[0] == 0  # nothing left to do
    assert len(load(cli.store).trials) == 3
    _, all_runs = runs(cli.store)
    assert sum("mlflow.parentRunId" not in r.data.tags for r in all_runs) == 1


def test_every_trial_is_timed_in_a_warm_process(cli, monkeypatch):
    # The first trial of a fresh process would pay its one-off costs: the sweep pays them first, untimed.
    calls, real_train = [], trial_module.train
    monkeypatch.setattr(loop, "warm_up", lambda splits: calls.append(("warm-up", len(splits.train))))
    monkeypatch.setattr(trial_module, "train", lambda *args, **kwargs: calls.append(("trial",)) or real_train(*args, **kwargs))
    assert cli("run", "--trials", "2")[0] == 0
    assert calls == [("warm-up", 540), ("trial",), ("trial",)]


def test_interrupted_sweep_closes_runs_and_resumes(cli, monkeypatch):
    real_train = trial_module.train
    calls = []

    def interrupted_on_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trial_module, "train", interrupted_on_second_trial)
    code, _, err = cli("run", "--trials", "3")
    assert code == 130 and "run the same command again to resume" in err
    study = load(cli.store)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    _, all_runs = runs(cli.store)
    statuses = {r.data.tags.get("mlflow.runName"): r.info.status for r in all_runs}
    assert statuses == {"sweep-tiny": "KILLED", "trial-0": "FINISHED", "trial-1": "FAILED"}

    monkeypatch.setattr(trial_module, "train", real_train)
    assert cli("run", "--trials", "3")[0] == 0
    assert len(load(cli.store).get_trials(states=(TrialState.COMPLETE,))) == 3
    _, all_runs = runs(cli.store)
    assert not [r for r in all_runs if r.info.status == "RUNNING"]


def test_a_signal_that_surfaces_as_another_exception_still_interrupts(cli, monkeypatch):
    # SIGTERM landing inside C code once surfaced as "SystemError: Objects/listobject.c:338: bad argument to
    # internal function" (CI): the handler had set STOP, so the trial is interrupted, not failed on its own.
    from sweep import processes

    def signalled_inside_c_code(*args, **kwargs):
        processes.STOP.set()
        raise SystemError("Objects/listobject.c:338: bad argument to internal function")

    monkeypatch.setattr(trial_module, "train", signalled_inside_c_code)
    try:
        code, _, err = cli("run", "--trials", "2")
    finally:
        processes.STOP.clear()
    assert code == 130 and "run the same command again to resume" in err
    (trial,) = load(cli.store).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    _, all_runs = runs(cli.store)
    assert {r.data.tags["mlflow.runName"]: r.info.status for r in all_runs} == {"sweep-tiny": "KILLED", "trial-0": "FAILED"}


def test_changed_search_space_is_refused_before_any_trial(cli, study_file):
    assert cli("run", "--trials", "1")[0] == 0
    study_file.write_text(TINY.replace("high = 32", "high = 64"))
    code, _, err = cli("run", "--trials", "2")
    assert code == 2 and "different search space" in err and len(err.strip().splitlines()) == 1
    assert len(load(cli.store).trials) == 1


def test_nets_that_cannot_fit_are_skipped_uncounted_and_asking_stops(cli, study_file):
    # Two small trials fit the cost model; the 36M-parameter, 50-epoch nets queued after them are then
    # predicted at minutes against a 2 s budget: skipped without being built, not counted
    # towards --trials, and after MAX_CONSECUTIVE_SKIPS of them in a row the sweep stops asking.
    study_file.write_text(
        TINY.replace("trial_seconds = 120", "trial_seconds = 2")
        .replace("depth = { low = 1, high = 2 }", "depth = { low = 1, high = 3 }")
        .replace("width = { low = 8, high = 32, log = true }", "width = { choices = [8, 4096] }")
        .replace("epochs = { low = 1, high = 2 }", "epochs = { choices = [2, 50] }")
    )
    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    study = open_study(load_study(study_file), open_storage(None, cli.store))
    for _ in range(2):
        study.enqueue_trial({"depth": 1, "width": 8, "epochs": 2, "learning_rate": 0.005})
    for _ in range(loop.MAX_CONSECUTIVE_SKIPS + 2):
        study.enqueue_trial({"depth": 3, "width": 4096, "epochs": 50, "learning_rate": 0.005})
    code, out, err = cli("run", "--trials", "3")
    assert code == 0, err
    assert f"stopping: the last {loop.MAX_CONSECUTIVE_SKIPS} configurations could not fit" in out
    assert "2/3 trials trained" in out
    study = load(cli.store)
    small, skipped = study.trials[:2], study.get_trials(states=(TrialState.PRUNED,))
    assert all(t.state == TrialState.COMPLETE for t in small) and count_finished(study) == 2
    assert len(skipped) == loop.MAX_CONSECUTIVE_SKIPS
    for trial in skipped:
        assert trial.state == TrialState.PRUNED and trial.user_attrs["reason"].startswith("skipped: predicted")
        assert trial.user_attrs["predicted_seconds"] > 50
        assert "epochs_run" not in trial.user_attrs and "mlflow_run_id" not in trial.user_attrs  # never trained, no run
    _, all_runs = runs(cli.store)
    assert len([r for r in all_runs if "mlflow.parentRunId" in r.data.tags]) == 2  # the small trials' runs alone


def test_no_trial_is_asked_for_once_the_budget_left_is_shorter_than_any_first_epoch(cli, study_file, idx_dir):
    assert cli("run", "--trials", "1")[0] == 0
    study = load(cli.store)
    quickest = loop.quickest_epoch(study)
    assert quickest == study.trials[0].user_attrs["warmup_seconds"] > 0  # its first epoch, complete
    from mnist_core.data import load_splits, resolve_source
    from sweep.context import SweepContext, clock
    from sweep.studyfile import load_study

    splits = load_splits(resolve_source(idx_dir), 0.1, 0)
    context = lambda left: SweepContext(load_study(study_file), study, splits, None, "", clock() + left, cli.store, None)  # noqa: E731
    assert loop.why_stop(context(3600), loop.Streaks()) is None
    assert "less than the quickest first epoch" in loop.why_stop(context(quickest / 10), loop.Streaks())
    assert loop.why_stop(context(-1), loop.Streaks()) == "the sweep budget is spent"


# Every trial plans 30 epochs of 9 batches: 2.7 s on the fake clock (10 ms a batch), which a 1-s sweep cannot hold.
HOPELESS = TINY.replace('objectives = ["val_accuracy", "train_seconds"]', 'objectives = ["val_accuracy"]') \
    .replace("epochs = { low = 1, high = 2 }\n", "").replace("[fixed]", "[fixed]\nepochs = 30")


def test_when_no_trial_can_finish_in_the_time_left_the_sweep_stops_and_counts_nothing(cli, study_file, fake_clock, monkeypatch):
    # One batch per traced call, so the trainer's projection can judge within the first epoch.
    monkeypatch.setattr(trainer_module, "EXECUTION_SECONDS", 1e-6)
    study_file.write_text(HOPELESS)
    code, out, err = cli("run", "--trials", "3", "--timeout", "1")
    assert code == 0, err
    study = load(cli.store)
    # The machine profile alone let one trial start; its measured batches showed its 30 epochs cannot fit: cut
    # in its first epoch, recorded, not counted. The cost model then knows that nothing the space allows can fit.
    stop = re.search(r"stopping: nothing can fit: 0.9 s of the sweep budget left, and the cheapest configuration "
                     r"\(1 x 8, 30 epoch\(s\) at batch 64\) needs at least ([0-9.]+) s", out)
    # More than the time left, at most the 30 epochs of 9 batches at 10 ms that the trial's own batches showed
    # (the cheapest net is narrower than the trial's, and the profile says narrower is a little faster).
    assert stop and 0.9 < float(stop.group(1)) <= 2.7
    (cut,) = study.trials
    assert cut.state == TrialState.PRUNED and cut.user_attrs["reason"].startswith("over_budget") and not cut.user_attrs.get("curve")
    assert "not counted: no full epoch" in out
    assert count_finished(study) == 0
    assert "0/3 trials trained (0 complete, 0 pruned), 1 skipped or cut before their first epoch, 0 failed; stopped: nothing can fit" in out
    _, all_runs = runs(cli.store)
    by_name = {r.data.tags["mlflow.runName"]: r for r in all_runs}
    assert by_name["trial-0"].info.status == "KILLED" and by_name["trial-0"].data.tags["cut_before_first_epoch"] == "True"
    assert by_name["trial-0"].data.tags["reason"].startswith("over_budget")
    parent = by_name["sweep-tiny"].data.metrics
    assert (parent["trials_complete"], parent["trials_pruned"], parent["trials_skipped"], parent["trials_failed"]) == (0, 0, 1, 0)


def test_a_config_skipped_for_sweep_time_is_a_state_the_samplers_ignore_and_no_failure(cli, study_file, fake_clock, monkeypatch):
    monkeypatch.setattr(trainer_module, "EXECUTION_SECONDS", 1e-6)
    study_file.write_text(HOPELESS.replace("epochs = 30", "").replace("[scientific]", "[scientific]\nepochs = { low = 1, high = 50 }"))
    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    study = open_study(load_study(study_file), open_storage(None, cli.store))
    for _ in range(2):  # two short trials teach the cost model this (fake) machine's pace
        study.enqueue_trial({"depth": 1, "width": 8, "epochs": 2, "learning_rate": 0.005})
    late = loop.MAX_CONSECUTIVE_FAILURES + 1
    for _ in range(late):  # 50 epochs: 4.5 s, within the trial budget but not the sweep's 1.6 s left
        study.enqueue_trial({"depth": 1, "width": 8, "epochs": 50, "learning_rate": 0.005})
    code, out, err = cli("run", "--trials", "3", "--timeout", "2")
    assert code == 0, err
    study = load(cli.store)
    skipped = study.trials[2 : 2 + late]
    assert all(t.state == TrialState.FAIL and t.user_attrs["reason"].startswith("skipped: sweep time") for t in skipped)
    assert all(t.params["epochs"] == 50 and "mlflow_run_id" not in t.user_attrs for t in skipped)
    assert "trials failed" not in out  # not failures: the failure stop did not trip
    assert len(study.trials) > 2 + late  # the sweep went on asking after them
    _, all_runs = runs(cli.store)
    (parent,) = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.metrics["trials_failed"] == 0 and parent.data.metrics["trials_skipped"] >= late


def test_a_resumed_study_is_recounted_by_full_epochs_and_says_so_once(cli, study_file):
    # A store written before trials were counted by full epochs: one trial cut inside its first epoch
    # counted then (it had trained a batch); it is recorded still, but no longer counted.
    from optuna.distributions import FloatDistribution, IntDistribution

    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    study = open_study(load_study(study_file), open_storage(None, cli.store))
    params = {"depth": 1, "width": 8, "epochs": 1, "learning_rate": 0.005}
    distributions = {"depth": IntDistribution(1, 2), "width": IntDistribution(8, 32, log=True), "epochs": IntDistribution(1, 2),
                     "learning_rate": FloatDistribution(1e-3, 1e-2, log=True)}
    old = lambda state, **kw: optuna.trial.create_trial(state=state, params=params, distributions=distributions, **kw)  # noqa: E731
    study.add_trial(old(TrialState.COMPLETE, values=[0.9, 1.0], user_attrs={"epochs_run": 1, "curve": [[1.0, 0.9]]}))
    study.add_trial(old(TrialState.PRUNED, user_attrs={"epochs_run": 1, "reason": "over_budget: ..."}))
    code, out, err = cli("run", "--trials", "2")
    assert code == 0, err
    assert "recounted: 1 trials trained a full epoch (2 were counted before); 1 cut inside their first epoch no longer count" in out
    assert "study 'tiny': 1/2 trials trained" in out and len(load(cli.store).trials) == 3  # one more trained
    code, out, _ = cli("run", "--trials", "2")
    assert code == 0 and "recounted" not in out  # said once


def test_running_trial_is_stopped_at_its_deadline(cli, study_file):
    study_file.write_text(TINY.replace("epochs = { low = 1, high = 2 }", "epochs = { low = 900, high = 1000 }"))
    code, out, _ = cli("run", "--trials", "1", "--trial-seconds", "3")
    assert code == 0
    (trial,) = load(cli.store).trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["reason"].startswith(("budget", "over_budget"))
    assert trial.user_attrs["epochs_run"] >= 1 and trial.user_attrs["best_val_accuracy"] is not None  # partial result kept
    assert "PRUNED" in out


def test_nan_trials_fail_with_reason_and_the_sweep_stops_after_repeated_failures(cli, monkeypatch):
    # Study files cap the learning rate at sane values, so diverge by training every trial at 1e12
    # (on a net wide enough not to die quietly instead).
    real_train = trial_module.train

    def diverging(config, *args, **kwargs):
        model = dataclasses.replace(config.model, depth=2, width=32, optimizer="sgd", learning_rate=1e12)
        return real_train(dataclasses.replace(config, model=model), *args, **kwargs)

    monkeypatch.setattr(trial_module, "train", diverging)
    code, out, _ = cli("run", "--trials", "2")
    assert code == 0, _
    assert f"the last {loop.MAX_CONSECUTIVE_FAILURES} trials failed" in out
    trials = load(cli.store).trials
    assert len(trials) == loop.MAX_CONSECUTIVE_FAILURES
    assert all(t.state == TrialState.FAIL and t.user_attrs["reason"].startswith("nan_loss") for t in trials)
    _, all_runs = runs(cli.store)
    assert sorted(r.info.status for r in all_runs if "mlflow.parentRunId" in r.data.tags) == ["FAILED"] * len(trials)


@pytest.mark.parametrize("warmup", [None, 3])
def test_single_objective_study_prunes_a_weak_trial(cli, study_file, warmup):
    pruner = 'pruner = "median"' + (f"\npruner_warmup_epochs = {warmup}" if warmup else "")
    study_file.write_text(
        TINY.replace('objectives = ["val_accuracy", "train_seconds"]', f'objectives = ["val_accuracy"]\n{pruner}')
        .replace("epochs = { low = 1, high = 2 }", "epochs = { low = 3, high = 4 }")
    )
    from sweep.storage import open_storage, open_study
    from sweep.studyfile import load_study

    # Five strong trials set the median; a narrow net with the smallest learning rate falls below it.
    study = open_study(load_study(study_file), open_storage(None, cli.store))
    for _ in range(5):
        study.enqueue_trial({"depth": 2, "width": 32, "epochs": 4, "learning_rate": 0.01})
    study.enqueue_trial({"depth": 1, "width": 8, "epochs": 4, "learning_rate": 0.001})
    assert cli("run", "--trials", "6")[0] == 0
    study = load(cli.store)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    *strong, weak = study.trials
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 4 for t in strong)
    assert weak.state == TrialState.PRUNED and weak.user_attrs["reason"].startswith("pruned by median pruner")
    # Stopped at the first epoch the pruner may judge: the first, or the end of the warm-up.
    assert len(weak.intermediate_values) == (warmup or 1)


def test_report_writes_table_csv_and_chart(cli):
    assert cli("run", "--trials", "4")[0] == 0
    code, out, _ = cli("report", data=False)
    assert code == 0 and "pareto" in out
    csv = cli.store / "reports" / "tiny" / "trials.csv"
    png = cli.store / "reports" / "tiny" / "tradeoff.png"
    import pandas as pd

    frame = pd.read_csv(csv)
    assert len(frame) == 4 and frame["best_val_accuracy"].is_monotonic_decreasing
    points = list(zip(frame["best_val_accuracy"], frame["study_seconds"]))

    def dominated(i):
        (a, s), others = points[i], points[:i] + points[i + 1 :]
        return any(b >= a and t <= s and (b > a or t < s) for b, t in others)

    assert frame["pareto"].tolist() == [not dominated(i) for i in range(len(points))]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_never_reads_the_test_split_only_best_does(cli, idx_dir, tmp_path):
    # A data dir without the test files: `run` trains and charts without them; `best`, which tests the model
    # selected on validation, is the first command that needs them.
    train_only = tmp_path / "train-only"
    train_only.mkdir()
    for path in idx_dir.glob("train-*"):
        shutil.copy(path, train_only)
    code, out, err = cli("run", "--trials", "2", "--data-dir", str(train_only), data=False)
    assert code == 0, err
    assert count_finished(load(cli.store)) == 2
    code, out, err = cli("best", "--data-dir", str(train_only), data=False)
    assert code == 2 and "t10k-images" in err


def test_best_retrains_tests_and_registers_the_model(cli):
    assert cli("run", "--trials", "3")[0] == 0
    code, out, err = cli("best")
    assert code == 0, err
    study = load(cli.store)
    client, all_runs = runs(cli.store)
    (best_run,) = [r for r in all_runs if r.data.tags.get("role") == "best"]
    chosen = int(best_run.data.tags["optuna.trial_number"])
    assert best_run.info.run_name == f"best-trial-{chosen}" and best_run.data.tags["selection"].startswith("highest validation accuracy")
    # Every epoch of every trial is a candidate: (trial, epoch, cumulative seconds, validation accuracy).
    points = [(t.number, e, s, a) for t in study.trials for e, (s, a) in enumerate(t.user_attrs["curve"], start=1)]
    expected = lambda limit=math.inf: max((p for p in points if p[2] <= limit), key=lambda p: (p[3], -p[2]))  # noqa: E731
    number, epoch, _, accuracy = expected()
    assert chosen == number and f"trial {number}, epoch {epoch}:" in out
    # Same seed, stopped at the same epoch of the same plan: the retrained model matches that epoch's accuracy.
    assert best_run.data.metrics["best_val_accuracy"] == pytest.approx(accuracy)
    assert 0.5 < best_run.data.metrics["test_accuracy"] <= 1.0 and "test accuracy" in out  # ten shapes: chance is 0.1
    (version,) = client.search_model_versions("name='mnist-tiny'")
    assert version.run_id == best_run.info.run_id
    trial_run = study.trials[chosen].user_attrs["mlflow_run_id"]  # the registered model links back to its trial
    assert version.tags["trial_run_id"] == trial_run and trial_run in version.description
    assert version.tags["test_accuracy"] == f"{best_run.data.metrics['test_accuracy']:.4f}"
    assert version.tags["selection"].startswith("highest validation accuracy of any epoch") and "within" not in version.tags["selection"]
    most_accurate = cli.store / "models" / "tiny.keras"
    assert f"saved {most_accurate}" in out
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the model must not point later commands at this store
    kept = most_accurate.read_bytes()

    # A second rule keeps its own file; the first winner's file is left as it was.
    trained_for = {t.number: t.user_attrs["study_seconds"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    limit = min(trained_for.values()) + 1e-6
    code, out, err = cli("best", "--max-train-seconds", f"{limit!r}")
    assert code == 0, err
    fast = cli.store / "models" / f"tiny-under-{limit:g}s.keras"
    assert f"saved {fast}" in out and fast.is_file() and most_accurate.read_bytes() == kept
    _, all_runs = runs(cli.store)
    picked = {int(r.data.tags["optuna.trial_number"]) for r in all_runs if r.data.tags.get("role") == "best"}
    number, epoch, _, _ = expected(limit)
    assert picked == {chosen, number} and f"trial {number}, epoch {epoch}:" in out
    # Side by side in MLflow, each retrained winner's run says which rule chose it.
    names = {r.info.run_name: r.data.tags["selection"] for r in all_runs if r.data.tags.get("role") == "best"}
    assert set(names) == {f"best-trial-{chosen}", f"best-trial-{number}-under-{limit:g}s"}
    assert names[f"best-trial-{number}-under-{limit:g}s"].endswith(f"within {limit:g} s of training")
    latest = max(client.search_model_versions("name='mnist-tiny'"), key=lambda v: int(v.version))
    assert latest.tags["selection"].endswith(f"within {limit:g} s of training")

    code, _, err = cli("best", "--max-train-seconds", "0.000001")
    assert code == 2 and "no epoch of any trial ended within" in err


def test_best_retrains_the_selected_epoch_with_another_training_seed_beside_the_trials_own(cli):
    assert cli("run", "--trials", "2")[0] == 0
    assert cli("best")[0] == 0
    code, out, err = cli("best", "--seed", "5")
    assert code == 0, err
    study = load(cli.store)
    _, all_runs = runs(cli.store)
    best = {r.info.run_name: r for r in all_runs if r.data.tags.get("role") == "best"}
    own = next(r for name, r in best.items() if not name.endswith("-seed-5"))
    other = best[f"{own.info.run_name}-seed-5"]
    trial_seed = TrialRecord.load(study.trials[int(own.data.tags["optuna.trial_number"])]).seed
    # The same selected trial, its configuration and stopping epoch, trained from other initial weights.
    assert other.data.tags["optuna.trial_number"] == own.data.tags["optuna.trial_number"]
    assert (own.data.params["seed"], other.data.params["seed"]) == (str(trial_seed), "5")
    assert {k: v for k, v in other.data.params.items() if k != "seed"} == {k: v for k, v in own.data.params.items() if k != "seed"}
    assert f"seed 5 instead of the trial's {trial_seed}" in out and 0.5 < other.data.metrics["test_accuracy"] <= 1
    seeded = cli.store / "models" / "tiny-seed-5.keras"
    assert f"saved {seeded}" in out and seeded.is_file() and (cli.store / "models" / "tiny.keras").is_file()
    code, _, err = cli("best", "--seed", "-1")
    assert code == 2 and "--seed" in err


def test_predict_classifies_images_it_drew(cli, tmp_path, splits):
    import numpy as np
    from PIL import Image

    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train
    from tests.synthetic import _shape

    result = train(TrainConfig(MLPConfig(depth=2, width=64), epochs=15, batch_size=32), splits, keep_model=True)
    model_path = tmp_path / "model.keras"
    result.model.save(model_path)
    images, expected = [], []
    for label in (1, 2, 5, 7, 0):
        drawing = np.kron(_shape(label), np.ones((6, 5)))  # 120 x 100, not 28 x 28
        for light_on_dark in (True, False):
            pixels = drawing if light_on_dark else 1 - drawing
            path = tmp_path / f"digit{label}-{'dark' if light_on_dark else 'light'}.png"
            Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
            images.append(str(path))
            expected.append(label)
    code, out, err = cli("predict", "--model", str(model_path), *images, data=False, study=None)
    assert code == 0, err
    predicted = [int(line.split(": ")[1].split()[0]) for line in out.strip().splitlines()]
    assert predicted == expected


def test_study_is_readable_by_optunas_own_cli(cli):
    assert cli("run", "--trials", "2")[0] == 0
    done = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "best-trials", "--storage", str(cli.store / "optuna.journal"),
         "--storage-class", "JournalFileBackend", "--study-name", "tiny", "-f", "json"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) >= 1


def test_two_worker_processes_share_one_study(cli):
    code, _, err = cli("run", "--trials", "4", "--workers", "2")
    assert code == 0, err
    study = load(cli.store)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4  # exactly: a worker starts a trial only while a slot is free
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4  # the workers explored different points
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    _, all_runs = runs(cli.store)
    by_id = {r.info.run_id: r for r in all_runs}
    for trial in complete:
        assert by_id[trial.user_attrs["mlflow_run_id"]].info.status == "FINISHED"
    assert not [r for r in all_runs if r.info.status == "RUNNING"]
    # Each worker ran on its own share of the cores, TensorFlow on as many threads: its seconds are its own.
    shares = {t.user_attrs["pid"]: (tuple(t.user_attrs["machine"]["cores"]), t.user_attrs["machine"]["threads"]) for t in complete}
    size = max(len(os.sched_getaffinity(0)) // 2, 1)
    assert all(len(cores) == threads == size for cores, threads in shares.values())
    if len(shares) == 2 and size * 2 <= len(os.sched_getaffinity(0)):
        first, second = (set(cores) for cores, _ in shares.values())
        assert not first & second


def test_an_interrupt_while_the_run_is_being_described_still_closes_it(cli, monkeypatch):
    # SIGTERM can land between MLflow creating a trial's run and its params being logged; the run must
    # still end FAILED, not stay RUNNING.
    from sweep.tracking import Tracker

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Tracker, "log_dataset", interrupted)
    assert cli("run", "--trials", "1")[0] == 130
    (trial,) = load(cli.store).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"
    _, all_runs = runs(cli.store)
    assert {r.data.tags["mlflow.runName"]: r.info.status for r in all_runs}[f"trial-{trial.number}"] == "FAILED"
