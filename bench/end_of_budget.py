"""The end of a sweep budget: does a budgeted sweep start only what can finish, and count only what trained?

    python bench/end_of_budget.py cell NAME --study accuracy --timeout 1800 --data-dir ../shared/datasets/mnist [--code DIR]
    python bench/end_of_budget.py summary

A cell runs `python -m sweep run --study STUDY --timeout T --data-dir D` as a new user would, in a fresh
store, with this checkout's code or with another checkout's (`--code DIR`: the code before the change, for a
side-by-side on one machine), keeps its log, and counts its journal by one rule for both: trials COMPLETE;
trials cut for budget (PRUNED by the deadline or the projection: reason `budget:` or `over_budget:`), and of
those the ones cut inside their first epoch (no point); configurations skipped before training; and, where
the sweep printed the final line's counts, whether they match the journal. Cells append to
bench/results/end_of_budget_cells.json; `summary` writes end_of_budget.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from common import RESULTS, ROOT, machine
from optuna.trial import TrialState

from sweep.record import records
from sweep.testing.stores import load

CELLS = RESULTS / "end_of_budget_cells.json"
# The lines of a sweep's output worth keeping: trials, the stop, the counts (not TensorFlow's start-up notices).
KEPT = re.compile(r"^(study |trial |stopping|recounted|\d+/\d+ trials trained|\[worker)")


def git(code: Path, *argv: str) -> str:
    return subprocess.run(["git", *argv], cwd=code, capture_output=True, text=True).stdout.strip()


def counts(study: optuna.Study) -> dict[str, int]:
    """The journal's trials, counted by one rule whichever code wrote them."""
    all_ = records(study)
    cut = [r for r in all_ if r.state == TrialState.PRUNED and (r.reason or "").startswith(("budget", "over_budget"))]
    return {
        "trials": len(all_),
        "complete": sum(r.state == TrialState.COMPLETE for r in all_),
        "trained": sum(r.trained for r in all_),
        "pruned_trained": sum(r.state == TrialState.PRUNED and r.trained for r in all_),
        "cut_for_budget": len(cut),
        "cut_before_first_epoch": sum(not r.trained for r in cut),
        "skipped": sum((r.reason or "").startswith("skipped") for r in all_),
        "failed": sum(r.state == TrialState.FAIL and not r.skipped_for_sweep_time for r in all_),
        "mlflow_runs": sum(r.mlflow_run_id is not None for r in all_),
    }


def final_line_matches(line: str, journal: dict[str, int]) -> bool | None:
    """Whether the final line's counts are the journal's (None: the line gives no breakdown to check)."""
    found = re.match(r"(\d+)/\d+ trials trained \((\d+) complete, (\d+) pruned\), (\d+) skipped or cut before their first epoch", line)
    if not found:
        return None
    trained, complete, pruned, skipped = map(int, found.groups())
    expected_skipped = journal["skipped"] + journal["cut_before_first_epoch"]
    return (trained, complete, pruned, skipped) == (journal["trained"], journal["complete"], journal["pruned_trained"], expected_skipped)


def cell(args: argparse.Namespace) -> None:
    code = Path(args.code).resolve() if args.code else ROOT
    command = ["python", "-m", "sweep", "run", "--study", args.study, "--timeout", f"{args.timeout:g}", "--data-dir", args.data_dir]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        if args.adopt:  # the same command already ran, as given, in this store, its output in that log
            store, output, returncode = Path(args.adopt[0]), Path(args.adopt[1]).read_text(errors="replace"), None
            started = "see the log"
        else:
            store = Path(tmp) / "mlruns"
            argv = [sys.executable, *command[1:-1], str(Path(args.data_dir).resolve()), "--store", str(store)]
            done = subprocess.run(argv, cwd=code, capture_output=True, text=True)
            output, returncode = done.stdout + done.stderr, done.returncode
        lines = [line for line in output.replace("\r", "\n").splitlines() if KEPT.match(line)]
        journal = counts(load(store, study_name(store)))
    final = next((line for line in reversed(lines) if re.match(r"\d+/\d+ trials trained", line)), "")
    result = {
        "name": args.name, "command": " ".join(command), "code": "this checkout" if code == ROOT else str(code),
        "commit": git(code, "rev-parse", "--short", "HEAD"), "clean_tree": not git(code, "status", "--porcelain", "--untracked-files=no"),
        "machine": machine(), "started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "returncode": returncode, "journal": journal, "final_line": final,
        "final_line_matches_journal": final_line_matches(final, journal), "log": lines,
    }
    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    cells[args.name] = result
    RESULTS.mkdir(exist_ok=True)
    CELLS.write_text(json.dumps(cells, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log"}, indent=2))


def study_name(store: Path) -> str:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(store / "optuna.journal")))
    (name,) = optuna.get_all_study_names(storage)
    return name


def summary(_: argparse.Namespace) -> None:
    cells = json.loads(CELLS.read_text())
    lines = ["# The end of a sweep budget", "", "Made by `python bench/end_of_budget.py cell ...` per row, then `summary`; "
             "each row is one real-MNIST sweep in a fresh store, counted from its journal by one rule. `code`: this "
             "checkout or a clone at `commit` (the code before the change runs from a clone, side by side on one machine). "
             "The last column is empty where that code's final line gave no breakdown to check.", "",
             "| cell | code | commit | machine | complete | trained | cut for budget | of them in their first epoch | skipped | MLflow runs | final line matches the journal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in cells.items():
        j = c["journal"]
        code = "this checkout" if c["code"] == "this checkout" else "a clone"
        lines.append(f"| {name} | {code} | {c['commit']}{'' if c['clean_tree'] else ' (dirty)'} | {c['machine']} | {j['complete']} | "
                     f"{j['trained']} | {j['cut_for_budget']} | {j['cut_before_first_epoch']} | {j['skipped']} | {j['mlflow_runs']} | "
                     f"{'' if c['final_line_matches_journal'] is None else c['final_line_matches_journal']} |")
    for name, c in cells.items():
        lines += ["", f"## {name}", "", f"`{c['command']}` ({c['started']} to {c['ended']}, exit {c['returncode']})", "", "```",
                  *c["log"], "```"]
    (RESULTS / "end_of_budget.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "end_of_budget.json").write_text(json.dumps({n: {k: v for k, v in c.items() if k != "log"} for n, c in cells.items()}, indent=2) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("cell")
    run.add_argument("name")
    run.add_argument("--study", default="accuracy")
    run.add_argument("--timeout", type=float, default=1800)
    run.add_argument("--data-dir", required=True)
    run.add_argument("--code", help="another checkout whose code runs the sweep (default: this one)")
    run.add_argument("--adopt", nargs=2, metavar=("STORE", "LOG"), help="count a sweep of this command that already ran (with --code)")
    run.set_defaults(action=cell)
    commands.add_parser("summary").set_defaults(action=summary)
    args = parser.parse_args()
    args.action(args)


if __name__ == "__main__":
    main()
