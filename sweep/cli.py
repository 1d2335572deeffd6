"""`python -m sweep`: run a study, report it, retrain the best model, classify images, open the UI.

The command table and argument types live here; the work lives in the modules each command calls (imported
when it runs: `report` alone needs pandas and matplotlib, `best` MLflow's model logging).
Every user error (bad file, bad flag, missing data, mismatched storage) is one line on stderr and
exit code 2. `main(argv)` returns the exit code, so tests call the CLI in-process.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from mnist_core.data import DataError
from sweep import workers
from sweep.callbacks import EPOCH_LINES_AFTER
from sweep.context import DEFAULT_STORE, CommandError, Options, store_failure
from sweep.credentials import STORAGE_ENV, TRACKING_ENV
from sweep.loop import RECYCLE_EVERY, run_sweep
from sweep.studyfile import DEFAULT_STUDY, StudyFileError, load_study, shipped_studies, study_path


def _number(kind: type, ok, what: str):
    """An argparse type: `kind(text)` that satisfies `ok`, else a usage error saying `what`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = _number(int, lambda v: v >= 0, "an integer >= 0")
POSITIVE_SECONDS = _number(float, lambda v: v > 0, "a positive number of seconds")
NON_NEGATIVE_SECONDS = _number(float, lambda v: v >= 0, "a number of seconds >= 0")
TRIAL_SECONDS = _number(float, lambda v: v >= 1, "at least 1 second (one batch and a validation pass)")


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="folder for storage, runs and models (default: mlruns)")


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                   help=f"Optuna storage: a journal file path or an RDB URL (default: ${STORAGE_ENV}, else STORE/optuna.journal)")


def _tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=os.environ.get(TRACKING_ENV),
                   help=f"MLflow tracking URI (default: ${TRACKING_ENV}, else sqlite:///STORE/mlflow.db)")


def _study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", type=study_path, default=DEFAULT_STUDY,
                   help=f"study file, or a shipped study: {', '.join(shipped_studies())} (default: {DEFAULT_STUDY.stem})")
    p.add_argument("--name", help="study name in storage (default: the file's [study] name)")
    for add in (_store, _storage, _tracking):
        add(p)


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder with the four MNIST IDX files (default: $MNIST_DATA_DIR, else tensorflow-datasets)")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    _study(p)
    _data(p)
    p.add_argument("--trials", type=POSITIVE_INT, help="trained trials wanted in total (default: the file's study.trials)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, help="wall-clock budget of this sweep in seconds")
    p.add_argument("--trial-seconds", type=TRIAL_SECONDS, help="wall-clock budget per trial (default: the file's budget.trial_seconds)")
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="worker processes sharing the study (default: 1)")
    p.add_argument("--threads", type=POSITIVE_INT,
                   help="cores (and TensorFlow threads) per worker (default: an equal share of the cores with --workers, else all)")
    p.add_argument("--epoch-lines", type=NON_NEGATIVE_SECONDS, default=EPOCH_LINES_AFTER, metavar="SECONDS",
                   help="outside a terminal, print a line per epoch for trials predicted to train longer than this "
                        f"(default: {EPOCH_LINES_AFTER:g}); on a terminal the progress bar follows every trial's epochs")
    p.add_argument("--recycle-every", type=NON_NEGATIVE_INT, default=RECYCLE_EVERY, metavar="K",
                   help=f"start a fresh process after K trials, so memory stays flat (default: {RECYCLE_EVERY}; 0: never)")


def _best_arguments(p: argparse.ArgumentParser) -> None:
    _study(p)
    _data(p)
    p.add_argument("--max-train-seconds", type=POSITIVE_SECONDS, help="pick the most accurate trial that trained within this many seconds")
    p.add_argument("--seed", type=NON_NEGATIVE_INT,
                   help="retrain with this training seed instead of the trial's: the same configuration and epoch, "
                        "other initial weights and batch order (for a median over seeds)")
    p.add_argument("--model", type=Path,
                   help="where to save the .keras file (default: STORE/models/STUDY.keras; STUDY-under-Ts.keras with "
                        "--max-train-seconds T, STUDY-seed-N.keras with --seed N)")


def _report_arguments(p: argparse.ArgumentParser) -> None:
    _study(p)
    p.add_argument("--out", type=Path, help="folder for trials.csv, points.csv and tradeoff.png (default: STORE/reports)")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", type=Path, help="a .keras file (default: STORE/models/STUDY.keras from `sweep best`)")
    _store(p)
    p.add_argument("--name", help=f"study whose best model to use (default: {DEFAULT_STUDY.stem})")


def _ui_arguments(p: argparse.ArgumentParser) -> None:
    _store(p)
    p.add_argument("--name", help="study whose runs to open (default: the default study's name)")
    _tracking(p)
    p.add_argument("--port", type=POSITIVE_INT, default=5000)


def _dashboard_arguments(p: argparse.ArgumentParser) -> None:
    _store(p)
    _storage(p)
    p.add_argument("--name", help="study whose page to open (default: the default study's name)")
    p.add_argument("--port", type=POSITIVE_INT, default=8080)
    p.add_argument("--open", action="store_true", help="open the study's page in a web browser")


def _estimate_arguments(p: argparse.ArgumentParser) -> None:
    _study(p)
    p.add_argument("--trial", type=NON_NEGATIVE_INT, help="estimate this trial of the stored study (its trials correct the estimate)")
    p.add_argument("--depth", type=POSITIVE_INT, help="hidden layers (with --width, --epochs, --batch-size: a net of your own)")
    p.add_argument("--width", type=POSITIVE_INT, help="units per hidden layer")
    p.add_argument("--epochs", type=POSITIVE_INT, default=10, help="epochs (default: 10)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=100, help="batch size (default: 100)")
    p.add_argument("--optimizer", default="adam", help="adam, adamw, sgd or rmsprop (default: adam)")


def _run(args: argparse.Namespace) -> int:
    cores = os.cpu_count() or 1
    if args.workers > cores:
        raise CommandError(f"--workers {args.workers} exceeds the {cores} CPU cores here; use --workers {cores} or fewer")
    if args.threads and args.threads * args.workers > cores:
        raise CommandError(f"--threads {args.threads} x --workers {args.workers} exceeds the {cores} CPU cores here; "
                           f"use --threads {max(cores // args.workers, 1)} or fewer")
    try:
        workers.stale_seconds()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return run_sweep(Options.from_args(args), args.trials, args.timeout, args.workers, args.recycle_every, args.restartable, args.threads,
                     args.epoch_lines)


def _report(args: argparse.Namespace) -> int:
    from sweep.report import run_report

    return run_report(Options.from_args(args), args.out)


def _best(args: argparse.Namespace) -> int:
    from sweep.best import run_best

    return run_best(Options.from_args(args), args.max_train_seconds, args.model, args.seed)


def _estimate(args: argparse.Namespace) -> int:
    from sweep.estimate import run_estimate, shape_config

    if (args.depth is None) != (args.width is None):
        raise CommandError("pass --depth and --width together (a net of your own), or neither")
    if args.depth is not None and args.trial is not None:
        raise CommandError("pass either --trial N or --depth and --width, not both")
    config = None if args.depth is None else shape_config(args.depth, args.width, args.epochs, args.batch_size, args.optimizer)
    return run_estimate(Options.from_args(args), config, args.trial)


def _predict(args: argparse.Namespace) -> int:
    from sweep.best import model_name
    from sweep.predict import run_predict

    return run_predict(args.images, args.model or args.store / "models" / model_name(args.name or load_study(DEFAULT_STUDY).name))


def _ui(args: argparse.Namespace) -> int:
    from sweep.serve import run_ui

    return run_ui(Options(DEFAULT_STUDY, args.store, tracking_uri=args.tracking_uri), args.name or load_study(DEFAULT_STUDY).name, args.port)


def _dashboard(args: argparse.Namespace) -> int:
    from sweep.serve import run_dashboard

    return run_dashboard(args.store, args.storage, args.name or load_study(DEFAULT_STUDY).name, args.port, args.open)


# name -> (help, its arguments, what it does)
COMMANDS = {
    "run": ("run (or resume) a study until --trials trials have trained", _run_arguments, _run),
    "report": ("print the trials (best first, Pareto set marked), write CSV and the accuracy-vs-time chart", _report_arguments, _report),
    "best": ("retrain the best trial with its seed, test it once, log and register the model", _best_arguments, _best),
    "estimate": ("predict a net's training time, FLOPs and memory on this machine before it trains", _estimate_arguments, _estimate),
    "predict": ("classify PNG/JPEG images of single digits with the best model", _predict_arguments, _predict),
    "ui": ("start the MLflow UI on this project's store, on the study's runs", _ui_arguments, _ui),
    "dashboard": ("start optuna-dashboard on the study storage (needs the dashboard extra)", _dashboard_arguments, _dashboard),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for name, (help_, add_arguments, action) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_, description=help_)
        add_arguments(sub)
        sub.set_defaults(action=action)
    return parser


def main(argv: list[str] | None = None, restartable: bool = False) -> int:
    """Run one command; exit code. `restartable`: the process is this command's own (`python -m sweep`,
    `mnist-sweep`), so a long sweep may replace it by a fresh one to keep memory flat."""
    import optuna

    from sweep.best import SelectionError
    from sweep.storage import StorageError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints one line per trial, failures too
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    args.restartable = restartable
    try:
        return args.action(args)
    except (CommandError, StudyFileError, DataError, StorageError, SelectionError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        reason = store_failure(exc)
        if reason is None:
            raise
        print(f"sweep: error: cannot write the store ({reason}); finished trials are kept: free space or fix "
              "permissions, then run the same command to resume", file=sys.stderr)
        return 2


def entry() -> int:
    """`mnist-sweep` and `python -m sweep`: this process is the command's own."""
    return main(restartable=True)
