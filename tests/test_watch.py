"""Watching a sweep: the training trial's epochs on a terminal's progress line, and epoch lines in a log for
the trials long enough to need them."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from mnist_core.trainer import Progress, TrainConfig, train
from mnist_core.model import MLPConfig
from sweep.testing.stores import ROOT, study_text, sweep_process

# One trial of a few seconds: many short epochs, each told as it ends.
SLOW = study_text("slow", trials="1", depth="{ choices = [1] }", width="{ choices = [256] }", epochs="{ choices = [40] }",
                  batch_size="16")


def test_the_trainer_tells_its_progress_after_every_execution_and_every_validation(splits):
    told: list[Progress] = []
    config = TrainConfig(MLPConfig(depth=1, width=8), epochs=3, batch_size=64, steps_per_execution=3)
    result = train(config, splits, on_progress=told.append)
    per_epoch = config.steps_per_epoch(len(splits.train))
    validated = [p for p in told if p.validated]
    assert [p.epoch for p in validated] == [1, 2, 3] and all(p.steps == per_epoch for p in validated)
    assert [p.val_accuracy for p in validated] == [e.val_accuracy for e in result.epochs]
    executions = [p for p in told if not p.validated]
    assert len(executions) == 3 * -(-per_epoch // 3) and executions[0].steps == 3 and executions[0].val_accuracy is None
    assert all(p.epochs == 3 and p.steps_per_epoch == per_epoch for p in told)
    assert [p.seconds for p in told] == sorted(p.seconds for p in told)
    assert told[-1].seconds_left == 0.0  # timed batches project the end; at the end nothing is left


def test_a_terminal_sees_the_training_trial_s_epochs_on_the_progress_line_before_it_ends(tmp_path, idx_dir):
    study = tmp_path / "slow.toml"
    study.write_text(SLOW)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # wide enough for the whole line
    process = subprocess.Popen([sys.executable, "-m", "sweep", "run", "--study", study, "--store", tmp_path / "store",
                                "--data-dir", idx_dir, "--trials", "1"],
                               cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, env={**os.environ, "TERM": "xterm"})
    os.close(terminal)
    seen = b""
    deadline = time.time() + 300
    while time.time() < deadline:
        if select.select([controller], [], [], 1.0)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the sweep has ended
                break
            if not chunk:
                break
            seen += chunk
    process.wait(timeout=60)
    os.close(controller)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text[-3000:]
    ended = text.index("trial    0 COMPLETE")
    live = re.findall(r"trial 0 epoch (\d+)/40(?:, val_acc (\d\.\d{4}))?", text[:ended])
    assert len({epoch for epoch, _ in live}) >= 2, text[:ended][-2000:]  # several epochs drawn while it trained
    assert any(score for _, score in live)  # with the latest validation accuracy


@pytest.mark.parametrize("threshold, expected", [("0", True), ("100000", False)])
def test_in_a_log_epoch_lines_appear_only_for_trials_predicted_longer_than_the_threshold(cli, threshold, expected):
    code, out, err = cli("run", "--trials", "2", "--epoch-lines", threshold)
    assert code == 0, err
    lines = [line for line in out.splitlines() if re.fullmatch(r"trial \d+ epoch \d+/\d+, val_acc \d\.\d{4}(, \d+ s left)?", line)]
    assert bool(lines) == expected, out
    if expected:  # one per epoch of each trial, before that trial's own line
        for number in (0, 1):
            epochs = [line for line in lines if line.startswith(f"trial {number} ")]
            planned = int(epochs[0].split("/")[1].split(",")[0])
            assert len(epochs) == planned
            assert out.index(epochs[-1]) < out.index(f"trial {number:4d} COMPLETE")


def test_each_worker_s_epoch_lines_carry_its_number(tmp_path, idx_dir, study_file):
    process = sweep_process("run", "--study", study_file, "--store", tmp_path / "store", "--data-dir", idx_dir,
                            "--trials", "4", "--workers", "2", "--epoch-lines", "0")
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out[-3000:]
    # Which worker runs which trial depends on how fast each starts: every epoch line names the worker whose trial it is.
    epochs = re.findall(r"^(\[worker (\d)\] )?trial (\d+) epoch \d+/\d+, val_acc", out, flags=re.MULTILINE)
    ran_by = {trial: worker for worker, trial in re.findall(r"^\[worker (\d)\] trial +(\d+) COMPLETE", out, flags=re.MULTILINE)}
    assert epochs and len(ran_by) == 4, out[-3000:]
    assert all(prefix and ran_by[trial] == worker for prefix, worker, trial in epochs), out[-3000:]
