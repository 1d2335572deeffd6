"""`bench/run.py`: every headline cell on one version of the code, resumable, and never on a dirty tree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sweep.testing.stores import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the benches run as scripts from bench/, importing each other by name
import run  # noqa: E402
from common import code_hash  # noqa: E402


def git(root, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "search.py").write_text("RATE = 1\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def counting(name: str, exit_unless: str | None = None) -> run.Cell:
    """A cell that appends its name to ran.txt (and fails unless the file `exit_unless` exists)."""
    code = (f"import pathlib, sys; p = pathlib.Path('ran.txt'); p.write_text((p.read_text() if p.exists() else '') + '{name}\\n'); "
            + (f"sys.exit(0 if pathlib.Path('{exit_unless}').exists() else 3)" if exit_unless else "assert sys.argv[1:] == ['--data-dir', 'D']"))
    return run.Cell(f"bench/{name}", ("-c", code), 1)


def ran(repo) -> list[str]:
    return (repo / "ran.txt").read_text().split()


def test_a_stopped_run_resumes_at_the_first_cell_not_done_and_reruns_all_once_the_code_changes(repo, capsys):
    table = [counting("one"), counting("two", exit_unless="ok"), counting("three")]
    assert run.main(["all", "--data-dir", "D"], table, repo) == 1  # the second cell fails: the run stops there
    assert ran(repo) == ["one", "two"] and "bench/two failed" in capsys.readouterr().err
    ledger = json.loads((repo / run.LEDGER).read_text())
    assert set(ledger) == {"bench/one"} and ledger["bench/one"]["code"] == code_hash(repo)

    (repo / "ok").touch()
    assert run.main(["all", "--data-dir", "D"], table, repo) == 0
    assert ran(repo) == ["one", "two", "two", "three"]  # the first cell was not run again
    assert run.main(["all", "--data-dir", "D"], table, repo) == 0 and len(ran(repo)) == 4  # nothing left to run

    # Results committed alone leave every cell fresh; a change to the code makes every one stale.
    (repo / "bench" / "results" / "figures.json").write_text("{}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "results")
    capsys.readouterr()
    assert run.main(["list"], table, repo) == 0 and capsys.readouterr().out.count("fresh") == 3
    (repo / "sweep" / "search.py").write_text("RATE = 2\n")
    git(repo, "commit", "-q", "-am", "code")
    assert run.main(["list"], table, repo) == 0 and capsys.readouterr().out.count("stale (ran at") == 3
    assert run.main(["all", "--data-dir", "D"], table, repo) == 0
    assert ran(repo)[4:] == ["one", "two", "three"]


def test_a_run_refuses_a_tree_that_differs_from_its_commit(repo, capsys):
    (repo / "sweep" / "search.py").write_text("RATE = 3\n")
    assert run.main(["all", "--data-dir", "D"], [counting("one")], repo) == 2
    assert "differs from its commit" in capsys.readouterr().err and not (repo / "ran.txt").exists()


def test_the_table_lists_every_coverage_cell_of_the_protocol():
    from coverage import SEEDS

    names = {cell.name for cell in run.cells()}
    assert {f"coverage/{method}/{seed}" for method, seeds in SEEDS.items() for seed in seeds} < names
    assert [c.name for c in run.cells() if c.bench == "coverage"][-1] == "coverage/summary"  # after its cells
