"""Seconds that mean the same on every machine: one machine, two conditions, the same nets timed in both.

    python bench/machines.py cell full --data-dir ../shared/datasets/mnist   # all cores, TensorFlow's defaults
    python bench/machines.py cell one --data-dir ../shared/datasets/mnist    # 1 core, 1 thread
    python bench/machines.py hetero --data-dir ../shared/datasets/mnist      # two workers, one under a CPU quota
    python bench/machines.py seed --data-dir ../shared/datasets/mnist        # the seed model once (run it 3 times)
    python bench/machines.py summary                                         # bench/results/machines.{json,md}

Each cell is one condition in a fresh process (TensorFlow's thread pools are fixed when it starts): it pins
itself, measures the machine's profile afresh (`mnist_core/machine.py`, its own cache), then trains every
net of CONFIGS REPEATS times on real MNIST, keeping the median seconds. Cells append to
bench/results/machines_cells.json, so the bench spans sessions; run the two cells of one comparison on one
machine, one after the other, with nothing else running.

The protocol, fixed here before any cell runs:
- `raw_ratio`: per net, seconds in `one` over seconds in `full` (small nets slow down less than big ones).
- `study_seconds_error_pct`: per net, how far `one`'s seconds converted to `full`'s machine
  (`sweep.costmodel.seconds_scale`, the profiles alone) land from `full`'s measured seconds, in percent.
- `estimate_error_pct`: per net and condition, the profile's prediction before training (no trial corrects
  it) against the measured seconds, in percent.
- Medians over the nets (and conditions); no test set; selection plays no part.
- `hetero`: `python -m sweep run --workers 2 --threads 1` on HETERO_STUDY (compute-bound nets), HETERO_TRIALS
  trials on real MNIST; the worker on the second core runs under a CPU quota of QUOTA (a cgroup made here,
  removed after). Per worker, the median of its trials' seconds over the profile's prediction for the study's
  machine, in study seconds and in raw seconds; `hetero_*_ratio_gap_pct` is how far the two medians differ,
  in percent of the smaller.
- `seed`: the seed study's model (`sweep/studies/seed.toml`) trained once per invocation on the whole machine;
  `seed_estimate_error_pct` is the profile's prediction (what `sweep estimate --study seed` prints) against
  the median of the runs, in percent, once there are SEED_RUNS of them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import RESULTS, ROOT, clean_tree, commit, machine, publish

from sweep.testing.stores import study_text

CELLS = RESULTS / "machines_cells.json"
REPEATS = 3
# From the tool's fast end to the seed model: (depth, width, epochs), 2 epochs at 4 x 1024 and up.
CONFIGS = [(1, 64, 5), (1, 256, 5), (2, 128, 5), (2, 512, 4), (3, 1024, 3), (2, 2048, 3), (4, 1024, 2), (5, 2000, 2)]
BATCH = 100  # the seed's batch
CONDITIONS = {"full": None, "one": 1}  # threads (and cores) the condition pins; None: the whole machine
QUOTA = 0.4  # of one CPU, for the hetero cell's second worker
HETERO_TRIALS = 16
SEED_RUNS = 3
# Compute-bound nets: the tiny test study, wider and longer.
HETERO_STUDY = study_text("hetero", trials=str(HETERO_TRIALS), trial_seconds="300", depth="{ low = 1, high = 3 }",
                          width="{ low = 512, high = 2048, log = true }", epochs="{ low = 1, high = 3 }",
                          learning_rate="{ low = 3e-4, high = 3e-3, log = true }", batch_size="128")


def run_cell(condition: str, data_dir: str) -> dict:
    os.environ["MNIST_SWEEP_CACHE"] = tempfile.mkdtemp()  # measured afresh, under this condition
    from mnist_core import machine as profiles

    if CONDITIONS[condition]:
        profiles.pin(profiles.share(0, 1, CONDITIONS[condition]), CONDITIONS[condition])
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train, warm_up
    from sweep.costmodel import CostModel

    splits = load_splits(resolve_source(data_dir))
    warm_up(splits)
    profile = profiles.current()
    rows = []
    for depth, width, epochs in CONFIGS:
        config = TrainConfig(MLPConfig(depth=depth, width=width), epochs=epochs, batch_size=BATCH)
        seconds = [train(config, splits).seconds for _ in range(REPEATS)]
        rows.append({"depth": depth, "width": width, "epochs": epochs, "seconds": statistics.median(seconds), "repeats": seconds,
                     "predicted": CostModel(profile).predict(config, len(splits.train))})
        print(json.dumps(rows[-1]), flush=True)
    return {"profile": profile.fields(), "rows": rows, "train_examples": len(splits.train)}


def cell(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = run_cell(args.condition, args.data_dir)
    result.update(condition=args.condition, commit=commit(), clean_tree=clean_tree(), machine=machine(), started=started,
                  ended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=" ".join(["python", "bench/machines.py", *sys.argv[1:]]))
    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    cells[args.condition] = result
    RESULTS.mkdir(exist_ok=True)
    CELLS.write_text(json.dumps(cells, indent=1) + "\n")


def seed(args: argparse.Namespace) -> None:
    """The seed model once, next to the prediction `sweep estimate --study seed` makes before it trains."""
    os.environ["MNIST_SWEEP_CACHE"] = tempfile.mkdtemp()  # the profile measured afresh, like the cells'
    import optuna

    from mnist_core.data import load_splits, resolve_source
    from mnist_core.machine import current
    from mnist_core.trainer import train, warm_up
    from sweep.costmodel import CostModel
    from sweep.studyfile import STUDIES, load_study

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    spec = load_study(STUDIES / "seed.toml")
    config = spec.config_for(optuna.trial.FixedTrial({}), seed=spec.seed)
    splits = load_splits(resolve_source(args.data_dir), spec.validation_fraction, spec.split_seed)
    warm_up(splits)
    profile = current()
    predicted = CostModel(profile).predict(config, len(splits.train))
    print(f"predicted {predicted:.0f} s; training {config}", flush=True)
    run = {"seconds": train(config, splits).seconds, "predicted": predicted, "profile": profile.fields(), "commit": commit(),
           "clean_tree": clean_tree(), "machine": machine(), "started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": " ".join(["python", "bench/machines.py", *sys.argv[1:]])}
    print(json.dumps({k: run[k] for k in ("seconds", "predicted")}), flush=True)
    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    cells.setdefault("seed", []).append(run)
    CELLS.write_text(json.dumps(cells, indent=1) + "\n")


def hetero(args: argparse.Namespace) -> None:
    """Two workers of one sweep, one throttled: their trials in study seconds agree with the study machine's
    predictions alike, in raw seconds not."""
    cgroup = Path("/sys/fs/cgroup/cpu/mnist-sweep-hetero")
    cgroup.mkdir()
    (cgroup / "cpu.cfs_quota_us").write_text(str(int(QUOTA * int((cgroup / "cpu.cfs_period_us").read_text()))))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory() as tmp:
        study_file, store = Path(tmp) / "hetero.toml", Path(tmp) / "store"
        study_file.write_text(HETERO_STUDY)
        argv = [sys.executable, "-m", "sweep", "run", "--study", str(study_file), "--store", str(store), "--data-dir", args.data_dir,
                "--trials", str(HETERO_TRIALS), "--workers", "2", "--threads", "1"]
        # The workers measure their profiles afresh, each under its own share (and the second under the quota).
        sweep = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "MNIST_SWEEP_CACHE": str(Path(tmp) / "profiles")})
        done = threading.Event()

        def throttle() -> None:  # the worker pinned to the second core goes under the quota, recycled ones too
            second = sorted(os.sched_getaffinity(0))[1]
            while not done.is_set():
                for pid in _children(sweep.pid):
                    try:
                        if os.sched_getaffinity(pid) == {second}:
                            (cgroup / "cgroup.procs").write_text(str(pid))
                    except (ProcessLookupError, OSError):
                        pass
                time.sleep(0.05)

        watcher = threading.Thread(target=throttle, daemon=True)
        watcher.start()
        try:
            code = sweep.wait()
        finally:
            done.set()
            watcher.join()
            sweep.kill()
            cgroup.rmdir()
        if code:
            raise SystemExit(f"the sweep exited {code}")
        result = _hetero_figures(store)  # while the study file is still there
    result.update(commit=commit(), clean_tree=clean_tree(), machine=machine(), started=started,
                  ended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=" ".join(["python", "bench/machines.py", *sys.argv[1:]]))
    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    cells["hetero"] = result
    CELLS.write_text(json.dumps(cells, indent=1) + "\n")


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _hetero_figures(store) -> dict:
    """Per worker: its trials' (study and raw) seconds over the study machine's prediction for them."""
    import optuna

    from mnist_core.digits import TRAIN_IMAGES
    from mnist_core.machine import MachineProfile
    from sweep.costmodel import CostModel
    from sweep.record import records
    from sweep.studyfile import load_study
    from sweep.testing.stores import load

    study = load(store, "hetero")
    study_profile = MachineProfile.from_fields(study.user_attrs["machine"])
    model = CostModel(study_profile)
    spec = load_study(store.parent / "hetero.toml")
    examples = round(TRAIN_IMAGES * (1 - spec.validation_fraction))
    by_worker: dict[str, list[dict]] = {}
    for rec, trial in zip(records(study), study.trials, strict=True):
        if not rec.trained or not rec.steady_epochs:
            continue
        profile = MachineProfile.from_fields(rec.machine)
        config = spec.config_for(optuna.trial.FixedTrial(trial.params), seed=rec.seed)
        predicted = model.predict(config, examples, epochs=rec.epochs_run)
        worker = f"core {profile.cores[0]}" + (f", {profile.cpu_quota:.0%} quota" if profile.cpu_quota else "")
        by_worker.setdefault(worker, []).append({"trial": rec.number, "raw_seconds": rec.train_seconds, "study_seconds": rec.study_seconds,
                                                 "predicted_study_machine": predicted, "profile": profile.fields()})
    medians = {w: {kind: statistics.median(t[f"{kind}_seconds"] / t["predicted_study_machine"] for t in trials) for kind in ("raw", "study")}
               for w, trials in by_worker.items()}
    gap = lambda kind: 100 * abs(max(m[kind] for m in medians.values()) / min(m[kind] for m in medians.values()) - 1)  # noqa: E731
    return {"workers": by_worker, "medians": medians, "hetero_study_ratio_gap_pct": gap("study"), "hetero_raw_ratio_gap_pct": gap("raw"),
            "study_profile": study_profile.fields()}


def summary(_: argparse.Namespace) -> None:
    from mnist_core.machine import MachineProfile
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig
    from sweep.costmodel import seconds_scale

    cells = json.loads(CELLS.read_text())
    full, one = cells["full"], cells["one"]
    fast, slow = MachineProfile.from_fields(full["profile"]), MachineProfile.from_fields(one["profile"])
    configs, ratios, study_errors, estimate_errors = [], [], [], []
    for a, b in zip(full["rows"], one["rows"], strict=True):
        config = TrainConfig(MLPConfig(depth=a["depth"], width=a["width"]), epochs=a["epochs"], batch_size=BATCH)
        converted = b["seconds"] * seconds_scale(config, full["train_examples"], slow, fast)
        ratios.append(b["seconds"] / a["seconds"])
        study_errors.append(100 * abs(converted / a["seconds"] - 1))
        estimate_errors += [100 * abs(r["predicted"] / r["seconds"] - 1) for r in (a, b)]
        configs.append({"net": f"{a['depth']}x{a['width']}", "epochs": a["epochs"], "full_seconds": a["seconds"], "one_seconds": b["seconds"],
                        "raw_ratio": ratios[-1], "one_in_study_seconds": converted, "study_seconds_error_pct": study_errors[-1],
                        "full_predicted": a["predicted"], "one_predicted": b["predicted"]})
    result = {
        "configs": configs,
        "raw_ratio_median": statistics.median(ratios), "raw_ratio_max": max(ratios),
        "study_seconds_error_pct_median": statistics.median(study_errors),
        "estimate_error_pct_median": statistics.median(estimate_errors),
        "profiles": {"full": full["profile"], "one": one["profile"]},
        "commit": sorted({full["commit"], one["commit"]}), "clean_tree": full["clean_tree"] and one["clean_tree"],
        "machine": full["machine"], "commands": [full["command"], one["command"], "python bench/machines.py summary"],
    }
    lines = ["# One machine, two conditions: study seconds and estimates", "",
             f"Commands: `{'`, `'.join(result['commands'])}`. Machine: {result['machine']}. Commit(s): {', '.join(result['commit'])}.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| study_seconds_error_pct_median | {result['study_seconds_error_pct_median']:.1f} | <= 10 |",
             f"| raw_ratio_max | {result['raw_ratio_max']:.2f} | >= 1.6 |",
             f"| raw_ratio_median | {result['raw_ratio_median']:.2f} | |",
             f"| estimate_error_pct_median | {result['estimate_error_pct_median']:.1f} | <= 15 |", "",
             "| net | epochs | full s | one s | raw ratio | one in study s | error % | full predicted s | one predicted s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['net']} | {c['epochs']} | {c['full_seconds']:.1f} | {c['one_seconds']:.1f} | {c['raw_ratio']:.2f} | "
              f"{c['one_in_study_seconds']:.1f} | {c['study_seconds_error_pct']:.1f} | {c['full_predicted']:.1f} | {c['one_predicted']:.1f} |"
              for c in configs]
    if len(cells.get("seed", [])) >= SEED_RUNS:
        runs = cells["seed"]
        measured, predicted = statistics.median(r["seconds"] for r in runs), statistics.median(r["predicted"] for r in runs)
        result.update(seed_seconds=[r["seconds"] for r in runs], seed_predicted=[r["predicted"] for r in runs],
                      seed_estimate_error_pct=100 * (predicted / measured - 1),
                      seed_commits=sorted({r["commit"] for r in runs}),
                      seed_profile_versions=sorted({r["profile"]["version"] for r in runs}))
        older = [v for v in result["seed_profile_versions"] if v != full["profile"]["version"]]
        lines += ["", "## The seed model: estimated before it trains, and measured", "",
                  f"`python bench/machines.py seed` {len(runs)} times (commit(s) {', '.join(result['seed_commits'])}): trained in "
                  f"{', '.join(f'{r:.0f}' for r in result['seed_seconds'])} s (median {measured:.0f} s); the profile predicted "
                  f"{', '.join(f'{r:.0f}' for r in result['seed_predicted'])} s (median {predicted:.0f} s): "
                  f"seed_estimate_error_pct {result['seed_estimate_error_pct']:+.1f} (target within 15)."
                  + (f" Predicted by profile version {', '.join(map(str, older))}, not the cells' version {full['profile']['version']}:"
                     " stale until the seed runs again." if older else "")]
    if "hetero" in cells:
        het = cells["hetero"]
        result.update({k: het[k] for k in ("hetero_study_ratio_gap_pct", "hetero_raw_ratio_gap_pct")}, hetero=het)
        lines += ["", "## Two workers of one sweep, one under a CPU quota", "",
                  f"Command: `{het['command']}`, commit {het['commit']}. Each trial's seconds over the profile's prediction for "
                  "the study's machine, median per worker:", "", "| worker | trials | raw / predicted | study / predicted |", "|---|---|---|---|"]
        lines += [f"| {w} | {len(het['workers'][w])} | {m['raw']:.2f} | {m['study']:.2f} |" for w, m in het["medians"].items()]
        lines += ["", f"hetero_study_ratio_gap_pct {het['hetero_study_ratio_gap_pct']:.1f} (target <= 10), "
                  f"hetero_raw_ratio_gap_pct {het['hetero_raw_ratio_gap_pct']:.1f} (target >= 60).", "", "![hetero](machines_hetero.png)"]
        _chart(het)
    publish("machines", result, lines)


def _chart(het: dict) -> None:
    """Each worker's trials against the study machine's prediction: raw seconds (left), study seconds (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True, sharey=True)
    for ax, kind in zip(axes, ("raw", "study"), strict=True):
        for worker, trials in het["workers"].items():
            ax.scatter([t["predicted_study_machine"] for t in trials], [t[f"{kind}_seconds"] for t in trials], label=worker, alpha=0.7)
        top = max(t[f"{k}_seconds"] for ts in het["workers"].values() for t in ts for k in ("raw", "study"))
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel("predicted seconds on the study's machine")
        ax.set_ylabel(f"{kind} seconds")
        ax.set_title(f"{kind} seconds: gap {het[f'hetero_{kind}_ratio_gap_pct']:.0f}%")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "machines_hetero.png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("cell")
    run.add_argument("condition", choices=tuple(CONDITIONS))
    run.add_argument("--data-dir", required=True)
    run.set_defaults(action=cell)
    for name, action in (("hetero", hetero), ("seed", seed)):
        command = commands.add_parser(name)
        command.add_argument("--data-dir", required=True)
        command.set_defaults(action=action)
    commands.add_parser("summary").set_defaults(action=summary)
    args = parser.parse_args()
    args.action(args)


if __name__ == "__main__":
    main()
