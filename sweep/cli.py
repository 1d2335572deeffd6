"""`python -m sweep`: run a study, report it, retrain the best model, classify images, open the UI.

Every user error (bad file, bad flag, missing data, mismatched storage) is one line on stderr and
exit code 2. `main(argv)` returns the exit code, so tests call the CLI in-process.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from mnist_core.data import DataError, Source, Splits, load_splits, resolve_source
from sweep.credentials import STORAGE_ENV, TRACKING_ENV, mask_url, redact
from sweep.hypermodel import DEFAULT_STUDY, StudyFileError, StudySpec, load_study, study_path

DEFAULT_STORE = Path("mlruns")
# TensorFlow keeps a few MiB of every model it traced (README, known limits): a sweep process makes way for a
# fresh one after this many trials, so its memory stays flat (bench/results/memory.md).
RECYCLE_EVERY = 25
# Set by a sweep for the fresh process that replaces it: the sweep's deadline (time.time(); 0: none).
DEADLINE_ENV = "SWEEP_DEADLINE"


class CommandError(Exception):
    """A bad command-line value; the message says what and how to fix it."""


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
TRIAL_SECONDS = _number(float, lambda v: v >= 1, "at least 1 second (one batch and a validation pass)")


class Command:
    """One subcommand: its flags and what it does."""

    help = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def take_action(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def _add_study_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=study_path, default=DEFAULT_STUDY,
                        help="study file, or a shipped study: accuracy, seed, tradeoff (default: tradeoff)")
    parser.add_argument("--name", help="study name in storage (default: the file's [study] name)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="folder for storage, runs and models (default: mlruns)")
    parser.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                        help=f"Optuna storage: a journal file path or an RDB URL (default: ${STORAGE_ENV}, else STORE/optuna.journal)")
    _add_tracking_argument(parser)


def _add_tracking_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=os.environ.get(TRACKING_ENV),
                        help=f"MLflow tracking URI (default: ${TRACKING_ENV}, else sqlite:///STORE/mlflow.db)")


def _add_data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder with the four MNIST IDX files (default: $MNIST_DATA_DIR, else tensorflow-datasets)")


def _tracking_uri(args: argparse.Namespace) -> str:
    from sweep.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(args.store)


def _tracker(args: argparse.Namespace, study):
    """The MLflow experiment of `study` in this store (or on the tracking server)."""
    from sweep.tracking import Tracker

    uri = _tracking_uri(args)
    try:
        return Tracker(uri, study.study_name, args.store / "artifacts")
    except Exception as exc:  # an unreachable server, a bad URI, a broken database
        if store_failure(exc):
            raise
        raise CommandError(redact(f"cannot open MLflow tracking at {uri}: {str(exc).splitlines()[0]}", uri)) from None


def _prepare_store(store: Path) -> None:
    """Fail before any work if the store cannot be written (a real write: root ignores permission bits)."""
    try:
        store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=store) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise CommandError(f"store {store} is not writable ({exc.strerror}); free space, fix its permissions or pass --store DIR") from None


def _open(args: argparse.Namespace, create: bool):
    """The study file, and its study in storage (created when `create`, else it must exist)."""
    from sweep import oracle

    spec = load_study(args.study)
    if getattr(args, "trial_seconds", None):
        spec = dataclasses.replace(spec, trial_seconds=args.trial_seconds)
    _prepare_store(args.store)
    storage = oracle.open_storage(args.storage, args.store)
    name = args.name or spec.name
    if create:
        return spec, oracle.open_study(spec, storage, name)
    study = oracle.load_existing(storage, name)
    oracle.check_matches(study, spec)
    return spec, study


def _load_data(args: argparse.Namespace, spec: StudySpec) -> tuple[Source, Splits]:
    """The data source of `--data-dir` and the study's train/validation split of it."""
    source = resolve_source(args.data_dir)
    return source, load_splits(source, spec.validation_fraction, spec.split_seed)


def _sweep_worker(args: argparse.Namespace, trials: int, deadline: float | None, worker: int) -> bool:
    """One of several worker processes: open the shared study, load the data, run trials until enough
    (or until it has run --recycle-every of them: then True, and the supervisor starts a fresh one)."""
    import optuna

    from sweep.tuner import SweepContext, parent_run, run_trials

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a spawned process starts with Optuna's defaults

    spec, study = _open(args, create=True)
    tracker = _tracker(args, study)
    context = SweepContext(spec, _load_data(args, spec)[1], tracker, parent_run(study, tracker, spec), deadline, _report_dir(args))
    write = lambda line: print(f"[worker {worker}] {line}", flush=True)  # noqa: E731
    return run_trials(study, context, trials, write=write, progress=False, max_trials=args.recycle_every or None).recycle


class Run(Command):
    help = "run (or resume) a study until --trials trials have trained"

    def add_arguments(self, parser):
        _add_study_arguments(parser)
        _add_data_argument(parser)
        parser.add_argument("--trials", type=POSITIVE_INT, help="trained trials wanted in total (default: the file's study.trials)")
        parser.add_argument("--timeout", type=POSITIVE_SECONDS, help="wall-clock budget of this sweep in seconds")
        parser.add_argument("--trial-seconds", type=TRIAL_SECONDS, help="wall-clock budget per trial (default: the file's budget.trial_seconds)")
        parser.add_argument("--workers", type=POSITIVE_INT, default=1, help="worker processes sharing the study (default: 1)")
        parser.add_argument("--recycle-every", type=NON_NEGATIVE_INT, default=RECYCLE_EVERY, metavar="K",
                            help=f"start a fresh process after K trials, so memory stays flat (default: {RECYCLE_EVERY}; 0: never)")

    def take_action(self, args):
        from sweep.processes import interruptible

        cores = os.cpu_count() or 1
        if args.workers > cores:
            raise CommandError(f"--workers {args.workers} exceeds the {cores} CPU cores here; use --workers {cores} or fewer")
        with interruptible():
            return self._sweep(args)

    def _sweep(self, args: argparse.Namespace) -> int:
        from sweep import oracle, tuner, workers
        from sweep.processes import restart

        spec, study = _open(args, create=True)
        trials = args.trials or spec.trials
        timeout = args.timeout or spec.sweep_seconds
        deadline = tuner.clock() + timeout if timeout else None
        if DEADLINE_ENV in os.environ:  # this process is a recycled one: the sweep's deadline stands
            deadline = float(os.environ.pop(DEADLINE_ENV)) or None
        _, splits = _load_data(args, spec)  # missing or bad data fails here, before any run is opened
        tracker = _tracker(args, study)
        parent = tuner.parent_run(study, tracker, spec)
        recounted = oracle.recount(study)
        if recounted:
            print(recounted, flush=True)
        print(f"study {study.study_name!r}: {oracle.count_finished(study)}/{trials} trials trained, per-trial budget "
              f"{spec.trial_seconds:g} s" + (f", sweep budget {timeout:g} s" if timeout else ""), flush=True)
        status = "FAILED"
        try:
            if args.workers == 1:
                context = tuner.SweepContext(spec, splits, tracker, parent, deadline, _report_dir(args))
                while (ended := tuner.run_trials(study, context, trials, max_trials=args.recycle_every or None)).recycle:
                    if args.restartable:  # the parent run stays RUNNING: the fresh process resumes it
                        print(f"{args.recycle_every} trials run: starting a fresh process to release their memory", flush=True)
                        restart({DEADLINE_ENV: repr(deadline or 0.0)})
                why = ended.reason
            else:
                del splits  # each worker process loads its own copy
                workers.supervise(
                    functools.partial(_sweep_worker, args, trials, deadline), args.workers, bound=trials,
                    work_left=lambda: oracle.count_finished(study) < trials and (deadline is None or tuner.clock() < deadline),
                )
                why = f"the study has its {trials} trained trials" if oracle.count_finished(study) >= trials else "see the workers' lines above"
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            print(f"interrupted: run the same command again to resume study {study.study_name!r}", file=sys.stderr)
            raise
        finally:
            tracker.end_run(parent, status)
        print(f"{oracle.tally(study).line(trials)}; stopped: {why}. See `python -m sweep report` and `python -m sweep ui`.")
        return 0


def _report_dir(args: argparse.Namespace) -> Path:
    return getattr(args, "out", None) or args.store / "reports"


class Report(Command):
    help = "print the trials (best first, Pareto set marked), write CSV and the accuracy-vs-time chart"

    def add_arguments(self, parser):
        _add_study_arguments(parser)
        parser.add_argument("--out", type=Path, help="folder for trials.csv, points.csv and tradeoff.png (default: STORE/reports)")

    def take_action(self, args):
        from sweep.report import table, write_report

        _, study = _open(args, create=False)
        if not study.trials:
            raise CommandError(f"study {study.study_name!r} has no trials yet")
        frame, csv_path, chart = write_report(study, _report_dir(args) / study.study_name, _tracker(args, study))
        print(table(frame))
        print(f"\nwrote {csv_path}, {csv_path.with_name('points.csv')} (every epoch of every trial) and {chart} "
              "(Pareto set: pareto=True)")
        return 0


class Best(Command):
    help = "retrain the best trial with its seed, test it once, log and register the model"

    def add_arguments(self, parser):
        _add_study_arguments(parser)
        _add_data_argument(parser)
        parser.add_argument("--max-train-seconds", type=POSITIVE_SECONDS, help="pick the most accurate trial that trained within this many seconds")
        parser.add_argument("--model", type=Path,
                            help="where to save the .keras file (default: STORE/models/STUDY.keras, or STUDY-under-Ts.keras with --max-train-seconds T)")

    def take_action(self, args):
        from sweep.best import log_best, model_name, retrain, select_point, selection_rule

        spec, study = _open(args, create=False)
        trial, point = select_point(study, args.max_train_seconds)
        source, splits = _load_data(args, spec)
        print(f"retraining trial {trial.number} ({trial.params}) for {point.epoch} of its {trial.user_attrs.get('epochs', '?')} epoch(s), "
              f"seed {trial.user_attrs['seed']} (its epoch {point.epoch}: val accuracy {point.val_accuracy:.4f} "
              f"after {point.seconds:.1f} s)", flush=True)
        result = retrain(spec, trial, splits, point.epoch)
        model_path = args.model or args.store / "models" / model_name(study.study_name, args.max_train_seconds)
        tracker = _tracker(args, study)
        test = log_best(tracker, _tracking_uri(args), study, trial, result, splits, source, model_path,
                        selection_rule(args.max_train_seconds))
        print(f"trial {trial.number}, epoch {point.epoch}: val accuracy {result.epochs[-1].val_accuracy:.4f} "
              f"(sweep: {point.val_accuracy:.4f}), test accuracy {test['test_accuracy']:.4f}, "
              f"test loss {test['test_loss']:.4f}, trained in {result.seconds:.1f} s")
        print(f"saved {model_path}; registered in MLflow as mnist-{study.study_name}")
        if args.model is None and args.max_train_seconds is not None:
            print(f"classify images with it: python -m sweep predict --model {model_path} IMAGE...")
        return 0


class Predict(Command):
    help = "classify PNG/JPEG images of single digits with the best model"

    def add_arguments(self, parser):
        parser.add_argument("images", nargs="+", type=Path)
        parser.add_argument("--model", type=Path, help="a .keras file (default: STORE/models/STUDY.keras from `sweep best`)")
        parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
        parser.add_argument("--name", default=None, help="study whose best model to use (default: tradeoff)")

    def take_action(self, args):
        from sweep.best import model_name
        from sweep.predict import predict

        model = args.model or args.store / "models" / model_name(args.name or load_study(DEFAULT_STUDY).name)
        if not model.is_file():
            raise CommandError(f"no model at {model}; run `python -m sweep best` first or pass --model FILE")
        missing = [str(p) for p in args.images if not p.is_file()]
        if missing:
            raise CommandError(f"no such image: {', '.join(missing)}")
        try:
            predictions = predict(model, args.images)
        except ValueError as exc:  # an image that cannot be read or holds no digit
            raise CommandError(str(exc)) from None
        for path, digit, probability in predictions:
            print(f"{path}: {digit} (p={probability:.3f})")
        return 0


class Ui(Command):
    help = "start the MLflow UI on this project's store, on the study's runs"

    def add_arguments(self, parser):
        parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
        parser.add_argument("--name", help="study whose runs to open (default: the default study's name)")
        _add_tracking_argument(parser)
        parser.add_argument("--port", type=POSITIVE_INT, default=5000)

    def take_action(self, args):
        from sweep.processes import serve
        from sweep.tracking import study_url

        if args.tracking_uri is None:
            _prepare_store(args.store)  # MLflow's SQLite file goes there
        uri = _tracking_uri(args)
        link = study_url(uri, args.name or load_study(DEFAULT_STUDY).name, f"http://127.0.0.1:{args.port}")
        print(f"MLflow UI for {mask_url(uri)}: open {link} (Ctrl-C to stop)", flush=True)
        return serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(args.port)])


class Dashboard(Command):
    help = "start optuna-dashboard on the study storage (needs the dashboard extra)"

    def add_arguments(self, parser):
        parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
        parser.add_argument("--storage", default=os.environ.get(STORAGE_ENV),
                            help=f"Optuna storage (default: ${STORAGE_ENV}, else STORE/optuna.journal)")
        parser.add_argument("--port", type=POSITIVE_INT, default=8080)

    def take_action(self, args):
        from sweep import oracle
        from sweep.processes import interruptible

        try:
            import optuna_dashboard
        except ImportError:
            raise CommandError("optuna-dashboard is not installed; install it with pip install 'mnist-sweep[dashboard]' "
                               "(from a checkout: pip install -e '.[dashboard]')") from None

        storage = oracle.open_storage(args.storage, args.store)
        print(f"optuna-dashboard on http://127.0.0.1:{args.port}/dashboard (Ctrl-C to stop)", flush=True)
        with interruptible():  # served in this process: stopping it leaves nothing behind
            try:
                optuna_dashboard.run_server(storage, host="127.0.0.1", port=args.port)
            except KeyboardInterrupt:
                return 130
        return 0


STORE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
STORE_MESSAGES = ("database or disk is full", "readonly database", "disk I/O error")


def store_failure(exc: BaseException) -> str | None:
    """Why writing the store failed mid-run (disk full, read-only, no permission), else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STORE_ERRNOS:
            return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        found = next((m for m in STORE_MESSAGES if m in str(exc)), None)
        if found:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


COMMANDS: dict[str, type[Command]] = {
    "run": Run, "report": Report, "best": Best, "predict": Predict, "ui": Ui, "dashboard": Dashboard,
}
USER_ERRORS = (CommandError, StudyFileError, DataError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sweep", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")
    for name, command_class in COMMANDS.items():
        command = command_class()
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(command=command)
    return parser


def main(argv: list[str] | None = None, restartable: bool = False) -> int:
    """Run one command; exit code. `restartable`: the process is this command's own (`python -m sweep`,
    `mnist-sweep`), so a long sweep may replace it by a fresh one to keep memory flat."""
    import optuna

    from sweep.best import SelectionError
    from sweep.oracle import StorageError

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the tuner prints one line per trial, failures too

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2), already printed
        return int(exit_.code or 0)
    args.restartable = restartable
    try:
        return args.command.take_action(args)
    except (*USER_ERRORS, StorageError, SelectionError) as exc:
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
