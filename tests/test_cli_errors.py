"""Every bad input to the CLI: exit code 2 and one line that says what is wrong; nothing stored is damaged."""

from __future__ import annotations

import re

import pytest
from optuna.trial import TrialState

from sweep.cli import COMMANDS, main
from sweep.testing.stores import load



def run(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line(err: str, *fragments: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sweep: error: ")
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "flag, value",
    [("--trials", "0"), ("--trials", "-3"), ("--trials", "many"), ("--trial-seconds", "0.5"), ("--timeout", "0"), ("--timeout", "nan"), ("--workers", "0"),
     ("--epoch-lines", "-1")],
)
def test_bad_numbers_are_usage_errors(capsys, tmp_path, flag, value):
    code, err = run(capsys, "run", "--store", tmp_path, flag, value)
    assert code == 2 and f"argument {flag}: must be" in err.splitlines()[-1]
    assert not (tmp_path / "optuna.journal").exists()


def test_missing_study_file(capsys, tmp_path):
    code, err = run(capsys, "run", "--study", tmp_path / "nope.toml", "--store", tmp_path)
    assert code == 2
    assert_one_line(err, "nope.toml", "no such study file")


def test_bad_toml(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\n")
    code, err = run(capsys, "run", "--study", bad, "--store", tmp_path)
    assert code == 2
    assert_one_line(err, "bad.toml", "not valid TOML")


def test_unknown_data_dir(capsys, tmp_path):
    code, err = run(capsys, "run", "--store", tmp_path / "store", "--data-dir", tmp_path / "missing")
    assert code == 2
    assert_one_line(err, "missing", "does not exist")


def test_corrupt_data_dir(capsys, tmp_path, idx_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in idx_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    code, err = run(capsys, "run", "--store", tmp_path / "store", "--data-dir", bad)
    assert code == 2
    assert_one_line(err, "train-images-idx3-ubyte.gz")


def test_corrupt_journal_is_refused_and_left_alone(capsys, tmp_path, idx_dir):
    journal = tmp_path / "optuna.journal"
    content = b"\x00\x01 definitely not a journal\n"
    journal.write_bytes(content)
    code, err = run(capsys, "run", "--store", tmp_path, "--data-dir", idx_dir)
    assert code == 2
    assert_one_line(err, "optuna.journal", "corrupt")
    assert journal.read_bytes() == content


def test_zero_byte_journal_starts_a_new_study(capsys, tmp_path, idx_dir, study_file):
    # An empty journal is a valid empty storage (e.g. created by `touch`), not corruption.
    (tmp_path / "optuna.journal").write_bytes(b"")
    code, err = run(capsys, "report", "--store", tmp_path)
    assert code == 2
    assert_one_line(err, "no study named 'map'")
    code, err = run(capsys, "run", "--study", study_file, "--store", tmp_path, "--data-dir", idx_dir, "--trials", "1")
    assert code == 0, err
    (trial,) = load(tmp_path).trials  # the study was started in that journal
    assert trial.state == TrialState.COMPLETE


def test_corrupt_sqlite_storage(capsys, tmp_path, idx_dir):
    db = tmp_path / "optuna.db"
    db.write_bytes(b"this is not sqlite" * 100)
    code, err = run(capsys, "run", "--store", tmp_path, "--storage", f"sqlite:///{db}", "--data-dir", idx_dir)
    assert code == 2
    assert_one_line(err, "cannot open storage")
    assert db.read_bytes() == b"this is not sqlite" * 100


def test_more_workers_than_cores(capsys, tmp_path):
    code, err = run(capsys, "run", "--store", tmp_path, "--workers", "4096")
    assert code == 2
    assert_one_line(err, "--workers 4096", "CPU cores")


def test_report_and_best_without_a_study(capsys, tmp_path):
    for command in ("report", "best"):
        code, err = run(capsys, command, "--store", tmp_path)
        assert code == 2
        assert_one_line(err, "no study named 'map'", "sweep run")


def test_predict_without_model_or_with_a_bad_image(capsys, tmp_path):
    code, err = run(capsys, "predict", "--store", tmp_path, tmp_path / "x.png")
    assert code == 2
    assert_one_line(err, "no model at", "sweep best")
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    code, err = run(capsys, "predict", "--model", model, tmp_path / "x.png")
    assert code == 2
    assert_one_line(err, "no such image")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    code, err = run(capsys, "predict", "--model", model, not_an_image)
    assert code == 2
    assert_one_line(err, "notes.png", "not a readable image")
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (40, 40), 255).save(blank)
    code, err = run(capsys, "predict", "--model", model, blank)
    assert code == 2
    assert_one_line(err, "blank.png", "no digit found")
    digit = tmp_path / "digit.png"
    image = Image.new("L", (40, 40), 255)
    image.paste(0, (15, 5, 25, 35))
    image.save(digit)
    code, err = run(capsys, "predict", "--model", model, digit)
    assert code == 2
    assert_one_line(err, "m.keras", "not a saved Keras model")


def test_help_exits_zero_and_lists_every_command_and_flag(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, (help_, _, _) in COMMANDS.items():  # each command on its own line, with its help
        assert re.search(rf"^\s+{name}\s+{re.escape(help_[:30])}", out, re.MULTILINE), name
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--trials", "--timeout", "--trial-seconds", "--workers", "--recycle-every", "--study", "--store", "--storage", "--data-dir"):
        assert flag in out


def test_passwords_are_masked_in_errors(capsys, tmp_path):
    storage = "postgresql://sweep:s3cr3t-pw@127.0.0.1:1/db"
    code, err = run(capsys, "run", "--store", tmp_path, "--storage", storage)
    assert code == 2
    assert_one_line(err, "cannot open storage postgresql://sweep:***@127.0.0.1:1/db")
    assert "s3cr3t-pw" not in err


def test_storage_can_come_from_the_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_STORAGE", "postgresql://sweep:s3cr3t-pw@127.0.0.1:1/db")
    code, err = run(capsys, "report", "--store", tmp_path)
    assert code == 2
    assert_one_line(err, "postgresql://sweep:***@127.0.0.1:1/db")
    assert "s3cr3t-pw" not in err


def test_a_missing_database_driver_names_the_extra(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    code, err = run(capsys, "run", "--store", tmp_path, "--storage", "postgresql://sweep@127.0.0.1:1/db")
    assert code == 2
    assert_one_line(err, "driver is not installed", "mnist-sweep[distributed]")


def test_redact_masks_every_copy_of_a_password():
    from sweep.credentials import mask_url, redact

    url = "postgresql://sweep:pa%40ss@db.example:5432/optuna"
    assert mask_url(url) == "postgresql://sweep:***@db.example:5432/optuna"
    assert mask_url("postgresql://sweep@db/optuna") == "postgresql://sweep@db/optuna"
    message = f"cannot reach {url} (password pa%40ss rejected)"
    assert redact(message, url, None) == "cannot reach postgresql://sweep:***@db.example:5432/optuna (password *** rejected)"


def test_dashboard_without_its_extra_names_it(capsys, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if optuna-dashboard were not installed
    code, err = run(capsys, "dashboard", "--store", tmp_path)
    assert code == 2
    assert_one_line(err, "optuna-dashboard is not installed", "mnist-sweep[dashboard]")


def test_dashboard_for_a_study_the_storage_lacks_names_it(capsys, cli):
    assert cli("run", "--trials", "1")[0] == 0
    code, err = run(capsys, "dashboard", "--store", cli.store, "--name", "nosuch")
    assert code == 2
    assert_one_line(err, "no study named 'nosuch'", "--name")
