"""The whole map in 50 trials: how well does a 50-trial sweep cover every decade of training time?

    python bench/coverage.py cell METHOD --seed S --data-dir ../shared/datasets/mnist
    python bench/coverage.py cell seed-model --data-dir ../shared/datasets/mnist     # once per machine and run
    python bench/coverage.py summary     # bench/results/coverage.{json,md,png} from the cells run so far

One cell is one method x one seed, a 50-trial sweep of real MNIST on our trainer (`mnist_core.trainer`);
cells append to bench/results/coverage_cells.json, so the bench spans sessions. Methods:
  map           the shipped default: `python -m sweep run --trials 50` on sweep/studies/map.toml (log front
                scale, cost-spread start, multi-objective TPE, dominance pruning)
  tradeoff      today's default before it: sweep/studies/tradeoff.toml (linear scale, its space and sampler)
  plain-optuna  a plain Optuna loop on the map's space: `optuna.create_study(directions=...)` with TPE's
                defaults, `study.optimize`, each trial trained to its end or the per-trial budget
  map-nospread, map-linear   screening candidates: the map without the cost-spread start, on the linear scale
  map-nostart   the map before its start recipe: the spread trials' nuisance values drawn at random
  map-nofastend the map before its fast end (trial 0 the cheapest net for one epoch at the start rate, widths
                from 32): recorded cells of an earlier commit, not runnable on this one
  map-fastend64 the map with its first fast end (trial 0 the cheapest net, 1 x 64, for 4 epochs at the rate
                raised for its width): recorded cells of an earlier commit
  map-noaugstart the map before its augmentation start (the spread trials drew their strength at random):
                recorded cells of an earlier commit
  seed-model    the student's net (5 x 2000, 10 epochs, batch 100, Adam) timed once per machine, to express wall
                time in it

The protocol, fixed here before any cell runs:
- SEEDS: the study seed, per method; the same split (the study file's) and data for every method and seed: a
  seed sets the sampler's draws and the initial weights. Seeds 0-2 ran the map before its start recipe
  (map-nostart), seeds 3-5 before its fast end (map-nofastend), seeds 6-8 with its first fast end
  (map-fastend64), seeds 9-11 before its augmentation start (map-noaugstart); each change was made after
  seeing those cells' validation results (no test set here), so the map runs on fresh seeds, 12-14. The plain
  loop, whose space and trainer no design change touched, runs on 6-8; the log hypervolume ratio compares the
  two methods' medians over their seeds, not seed pairs.
- A cell stops at TRIALS trials with a full epoch (trials cut before one are recorded, not counted), as
  `sweep run --trials` counts them; its wall time runs from its first trial's start to its last trial's end,
  so loading data and importing TensorFlow are outside it.
- Every full epoch of every trial is a point (training seconds so far, validation accuracy): selection on
  validation only. No cell reads the test set.
- `reference_front`: the front of every point of every cell (and of the accuracy study's winner, when its cell
  ran). A method's gap in a decade is the reference's best validation accuracy within the decade's upper
  edge minus the method's (chance, 10%, where it has no point yet), in percentage points; median over seeds.
- Seconds are compared only between cells of one machine (`machine` in each cell): the targets are taken over
  the cells of the machine the shipped default's seeds ran on, and other machines' cells are summarised on their
  own (`other_machines`), each with its own seed model (`seed-model/MACHINE`) and reference front.
- Hypervolume over log time and log error, reference point: error 0.1 and the map's per-trial budget. The
  reference front's own (`log_hv_reference_front`) bounds what any method's front reaches from the points seen.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from common import RESULTS, ROOT, clean_tree, code_hash, commit, machine

from sweep.points import Scale, front, hypervolume
from sweep.record import records
from sweep.studyfile import STUDIES, load_study
from sweep.testing.stores import load

CELLS = RESULTS / "coverage_cells.json"
TRIALS = 50
SHIPPED, TODAY, PLAIN = "map", "tradeoff", "plain-optuna"
CANDIDATES = ("map-nospread", "map-linear", "map-nostart")
METHODS = (SHIPPED, TODAY, PLAIN, *CANDIDATES)
SEEDS = {SHIPPED: (12, 13, 14), TODAY: (0, 1, 2), PLAIN: (6, 7, 8)}  # candidates are screened at any one seed
RECORDED = ("map-nofastend", "map-fastend64", "map-noaugstart")  # earlier designs whose cells are kept; the code to run them is gone
CHANCE = 0.1
# The accuracy study's winner on validation (bench/results/frontier.md): retrained here as a cell of its own,
# its epochs are points of the reference front.
WINNER = {"width": 1147, "dropout": 0.15897663659937938, "learning_rate": 0.0008085523774374281,
          "weight_decay": 0.0060843366042818365, "label_smoothing": 0.032294705653332804,
          "input_dropout": 0.042365479933890476, "elastic": 19.00139538020308}
KEPT = re.compile(r"^(study |trial |stopping|\d+/\d+ trials trained)")


def study_file(method: str, seed: int, work: Path) -> Path:
    """The method's shipped study file with the cell's seed (and the candidate's one change)."""
    source = STUDIES / ("tradeoff.toml" if method == TODAY else "map.toml")
    text = re.sub(r"^seed = \d+", f"seed = {seed}", source.read_text(), count=1, flags=re.MULTILINE)
    if method == "map-nospread":
        text = text.replace("cost_spread_trials = 10", "cost_spread_trials = 0")
    if method == "map-linear":
        text = text.replace('front_scale = "log"', 'front_scale = "linear"')
    if method == "map-nostart":
        text = re.sub(r", start = [^ ]+ }", " }", text)
    path = work / source.name
    path.write_text(text)
    return path


def points_of(study: optuna.Study) -> list[list[float]]:
    """[trial, epoch, seconds, validation accuracy] of every full epoch."""
    return [[p.trial, p.epoch, p.seconds, p.val_accuracy] for r in records(study) for p in r.points]


def wall_seconds(study: optuna.Study) -> float:
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def run_sweep(method: str, seed: int, data_dir: str) -> dict:
    """`python -m sweep run --trials 50` in a fresh store, as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = study_file(method, seed, work)
        argv = [sys.executable, "-m", "sweep", "run", "--study", str(path), "--trials", str(TRIALS),
                "--data-dir", str(Path(data_dir).resolve()), "--store", str(work / "mlruns")]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines() if KEPT.match(line)]
        if done.returncode:
            raise SystemExit(f"{method} seed {seed}: exit {done.returncode}\n" + "\n".join(lines[-5:]) + done.stderr[-2000:])
        study = load(work / "mlruns", load_study(path).name)
        if method == SHIPPED:
            draw_map(study, seed)
        return {"command": f"python -m sweep run --study {path.name} (seed {seed}) --trials {TRIALS} --data-dir D",
                "points": points_of(study), "wall_seconds": wall_seconds(study), "log": lines,
                "trials": len(study.trials), "trained": sum(r.trained for r in records(study))}


def draw_map(study: optuna.Study, seed: int) -> None:
    """The map's own chart, as `sweep report` draws it, with the seed model timed on this machine (its cell)."""
    from sweep.report import plot_tradeoff, points_frame, trials_frame

    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    seed_model = cells.get(seed_model_key(machine()))
    reference = seed_model and ("seed model 5x2000, 10 ep (this machine)", seed_model["train_seconds"], seed_model["val_accuracy"])
    plot_tradeoff(trials_frame(study), points_frame(study), RESULTS / f"coverage_map_seed{seed}.png",
                  f"the default map, 50 trials of real MNIST (seed {seed})", reference, Scale("log"))


def run_plain(seed: int, data_dir: str) -> dict:
    """A plain Optuna multi-objective TPE loop on the map's space and our trainer, as a user writes one."""
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.trainer import Budget, train, warm_up
    from sweep import record

    spec = load_study(STUDIES / "map.toml")
    splits = load_splits(resolve_source(data_dir), spec.validation_fraction, spec.split_seed)
    warm_up(splits)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        config = spec.config_for(trial, seed=seed + trial.number)
        curve: list[tuple[float, float]] = []

        def on_epoch(stats):
            if not stats.partial:
                curve.append(((curve[-1][0] if curve else 0.0) + stats.seconds, stats.val_accuracy))
            return None

        result = train(config, splits, Budget(spec.trial_seconds, 1), on_epoch=on_epoch)
        record.save(trial, curve=curve)
        if not curve:
            raise optuna.TrialPruned("cut inside its first epoch")
        return max(a for _, a in curve), result.seconds

    def enough(study, _):
        if sum(r.trained for r in records(study)) >= TRIALS:
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, callbacks=[enough])
    return {"command": "plain Optuna TPESampler(seed) loop on map.toml's space, our trainer, budget per trial",
            "points": points_of(study), "wall_seconds": wall_seconds(study), "trials": len(study.trials),
            "trained": sum(r.trained for r in records(study)), "log": []}


def run_seed_model(data_dir: str) -> dict:
    """The seed model, trained once on our trainer: 5 x 2000, 10 epochs, batch 100, Adam, constant rate."""
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train, warm_up

    spec = load_study(STUDIES / "map.toml")
    splits = load_splits(resolve_source(data_dir), spec.validation_fraction, spec.split_seed)
    warm_up(splits)
    result = train(TrainConfig(MLPConfig(depth=5, width=2000), epochs=10, batch_size=100), splits)
    return {"command": "mnist_core.trainer.train(5 x 2000, 10 epochs, batch 100, Adam)", "train_seconds": result.seconds,
            "val_accuracy": max(e.val_accuracy for e in result.epochs)}


def run_winner(data_dir: str) -> dict:
    """The accuracy study's winner, retrained here on its 60 epochs: each epoch a point of the reference front."""
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.trainer import train, warm_up

    spec = load_study(STUDIES / "accuracy.toml")
    splits = load_splits(resolve_source(data_dir), spec.validation_fraction, spec.split_seed)
    warm_up(splits)
    config = spec.config_for(optuna.trial.FixedTrial(WINNER), seed=spec.seed)
    result = train(config, splits)
    elapsed, points = 0.0, []
    for stats in result.epochs:
        elapsed += stats.seconds
        points.append([0, stats.epoch, elapsed, stats.val_accuracy])
    return {"command": "mnist_core.trainer.train(the accuracy study's winner, 60 epochs)", "points": points}


def cell(args: argparse.Namespace) -> None:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.method == "seed-model":
        result, key = run_seed_model(args.data_dir), seed_model_key(machine())
    elif args.method == "accuracy-winner":
        result, key = run_winner(args.data_dir), "accuracy-winner"
    elif args.method == PLAIN:
        result, key = run_plain(args.seed, args.data_dir), f"{args.method}/{args.seed}"
    else:
        result, key = run_sweep(args.method, args.seed, args.data_dir), f"{args.method}/{args.seed}"
    result.update(method=args.method, seed=args.seed, commit=commit(), clean_tree=clean_tree(), machine=machine(), started=started, ended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  invocation=" ".join(["python", "bench/coverage.py", *sys.argv[1:]]))
    cells = json.loads(CELLS.read_text()) if CELLS.exists() else {}
    cells[key] = result
    RESULTS.mkdir(exist_ok=True)
    CELLS.write_text(json.dumps(cells, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("points", "log")}, indent=2))


def decades(budget: float) -> list[tuple[float, float]]:
    """Time bins from 0.3 s, one per decade of powers of ten, the last ending at the budget."""
    edges = [0.3, *[10.0 ** k for k in range(0, 6) if 0.3 < 10.0 ** k < budget], budget]
    return list(zip(edges, edges[1:]))


def best_within(points: list[list[float]], seconds: float) -> float:
    inside = [p[3] for p in points if p[2] < seconds]
    return max(inside) if inside else CHANCE


def log_hv(points: list[list[float]], budget: float) -> float:
    if not points:
        return 0.0
    table = np.array(points, float)
    return hypervolume(table[:, 3], table[:, 2], budget, Scale("log"))


def seed_model_key(on: str) -> str:
    return f"seed-model/{on}"


def compare(cells: dict[str, dict], budget: float, on: str) -> tuple[dict, dict[str, dict[int, dict]]]:
    """Every measure of the protocol over `cells`, all run on machine `on` (seconds are compared only there), and
    the cells by method and seed."""
    bins = decades(budget)
    reference = [p for c in cells.values() for p in c.get("points", [])]
    ref_front = front([(p[2], p[3]) for p in reference])
    by_method: dict[str, dict[int, dict]] = {}
    for c in cells.values():
        if c["method"] in (*METHODS, *RECORDED):
            by_method.setdefault(c["method"], {})[c["seed"]] = c
    gap_by_decade, top_val, hv, walls = {}, {}, {}, {}
    for method, seeds in by_method.items():
        gap_by_decade[method] = {
            f"{lo:g}-{hi:g}": round(100 * statistics.median(best_within(reference, hi) - best_within(c["points"], hi) for c in seeds.values()), 3)
            for lo, hi in bins}
        top_val[method] = statistics.median(max((p[3] for p in c["points"]), default=CHANCE) for c in seeds.values())
        hv[method] = {s: log_hv(c["points"], budget) for s, c in seeds.items()}
        walls[method] = statistics.median(c["wall_seconds"] for c in seeds.values())
    seed_model = cells.get(seed_model_key(on))
    plain = hv.get(PLAIN, {})
    ratio = statistics.median(hv[SHIPPED].values()) / statistics.median(plain.values()) if hv.get(SHIPPED) and plain else None
    current = code_hash()
    return {
        "machine": on,
        "commit": sorted({c["commit"] for c in cells.values()}), "clean_tree": all(c["clean_tree"] for c in cells.values()),
        "cells": {k: {**{f: c[f] for f in ("method", "seed", "commit", "clean_tree", "started", "ended", "invocation") if f in c},
                      "current_code": code_hash(revision=c["commit"]) == current} for k, c in cells.items()},
        "seeds_run": {m: sorted(s) for m, s in by_method.items()},
        "decades": [[lo, hi] for lo, hi in bins],
        "reference_front": [[s, a] for s, a in ref_front],
        "gap_by_decade": gap_by_decade,
        "max_gap_default": max(gap_by_decade[SHIPPED].values()) if SHIPPED in gap_by_decade else None,
        "top_val_default": top_val.get(SHIPPED),
        "log_hv": hv,
        "log_hv_reference_front": log_hv([[0, 0, s, a] for s, a in ref_front], budget),
        "log_hv_ratio_vs_plain_optuna": ratio,
        "wall_seconds_median": walls,
        "seed_model": seed_model and {k: seed_model[k] for k in ("train_seconds", "val_accuracy", "commit", "machine")},
        "wall_in_seed_models": (walls[SHIPPED] / seed_model["train_seconds"]) if seed_model and SHIPPED in walls else None,
    }, by_method


def summary(_: argparse.Namespace) -> None:
    """coverage.{json,md,png} over the cells of the machine the shipped default ran on; the cells of every other
    machine are summarised on their own under `other_machines` (each with its chart), never mixed in."""
    cells = json.loads(CELLS.read_text())
    budget = load_study(STUDIES / "map.toml").trial_seconds
    machines = sorted({c["machine"] for c in cells.values()})
    shipped_on = sorted({c["machine"] for c in cells.values() if c["method"] == SHIPPED})
    if len(shipped_on) > 1:
        raise SystemExit(f"the shipped default's cells ran on {len(shipped_on)} machines ({'; '.join(shipped_on)}): "
                         "its seeds must share one to be compared")
    main_machine = shipped_on[0] if shipped_on else machines[-1]
    results, drawn = {}, {}
    for on in machines:
        results[on], by_method = compare({k: c for k, c in cells.items() if c["machine"] == on}, budget, on)
        drawn[on] = by_method
    result = {**results[main_machine],
              "targets": {"max_gap_default": "<= 0.3", "top_val_default": ">= 0.99", "log_hv_ratio_vs_plain_optuna": ">= 1.2",
                          "wall_in_seed_models": "<= 6"},
              "other_machines": {on: r for on, r in results.items() if on != main_machine}}
    (RESULTS / "coverage.json").write_text(json.dumps(result, indent=2) + "\n")
    for on, r in results.items():
        chart(drawn[on], r, chart_name(on, main_machine))
    lines = markdown(result)
    (RESULTS / "coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def chart_name(on: str, main_machine: str) -> str:
    return "coverage.png" if on == main_machine else "coverage_" + re.sub(r"[^a-z0-9]+", "-", on.lower()).strip("-") + ".png"


def chart(by_method: dict, result: dict, name: str) -> None:
    """Each method's front (its median seed by log hypervolume) over the reference front, on log axes."""
    ref_front, hv, seed_model = result["reference_front"], result["log_hv"], result["seed_model"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sweep.report import log_error_axis

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    if ref_front:
        s, a = zip(*ref_front)
        ax.step(s, a, where="post", color="black", lw=2.5, alpha=0.35, label="reference front (every cell on this machine)")
    for method, seeds in sorted(by_method.items()):
        ranked = sorted(seeds, key=lambda seed: hv[method][seed])
        seed = ranked[(len(ranked) - 1) // 2]
        f = front([(p[2], p[3]) for p in seeds[seed]["points"]])
        if f:
            s, a = zip(*f)
            ax.step(s, a, where="post", lw=1.4, label=f"{method} (seed {seed} of {len(seeds)})")
    if seed_model:
        ax.scatter([seed_model["train_seconds"]], [seed_model["val_accuracy"]], marker="*", s=140, color="tab:orange", zorder=4,
                   label="seed model 5x2000, 10 ep (this machine)")
    for lo, _ in result["decades"]:
        ax.axvline(lo, color="grey", lw=0.5, alpha=0.4)
    ax.set_xscale("log")
    log_error_axis(ax)
    ax.set_ylim(0.9, 0.998)
    ax.set_xlabel("training seconds (log scale)")
    ax.set_ylabel("best validation accuracy (log of the error)")
    ax.set_title(f"50-trial maps of real MNIST: each method's front (median seed)\n{result['machine']}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / name)
    plt.close(fig)


def ceiling_ratio(result: dict) -> float | None:
    plain = result["log_hv"].get(PLAIN)
    return result["log_hv_reference_front"] / statistics.median(plain.values()) if plain else None


def markdown(result: dict) -> list[str]:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["# The whole map in 50 trials", "",
             "Made by `python bench/coverage.py cell METHOD --seed S --data-dir ../shared/datasets/mnist` per cell, then "
             "`python bench/coverage.py summary`. The protocol is in the script's docstring. Seconds are compared "
             "only between cells of one machine: the targets below are over the cells of the machine the shipped "
             "default ran on; other machines' cells follow, each on its own.", "",
             *machine_section(result, "coverage.png"), "",
             "| measure | value | target |", "|---|---|---|",
             f"| max_gap_default (pp) | {fmt(result['max_gap_default'], '.2f')} | <= 0.3 |",
             f"| top_val_default | {fmt(result['top_val_default'], '.4f')} | >= 0.99 |",
             f"| log_hv_ratio_vs_plain_optuna | {fmt(result['log_hv_ratio_vs_plain_optuna'], '.3f')} | >= 1.2 |",
             f"| wall_in_seed_models | {fmt(result['wall_in_seed_models'], '.2f')} | <= 6 |"]
    for on, other in result["other_machines"].items():
        lines += ["", "## Cells on another machine", "", *machine_section(other, chart_name(on, result["machine"]))]
    return lines


def machine_section(result: dict, image: str) -> list[str]:
    """One machine's cells: what ran, the gaps by decade, the log hypervolumes and the chart."""
    lines = [f"Machine: {result['machine']}. Commits: {', '.join(result['commit'])}"
             f"{'' if result['clean_tree'] else ' (a cell ran on a dirty tree)'}; "
             f"{sum(c['current_code'] for c in result['cells'].values())} of {len(result['cells'])} cells ran on the "
             "current code (`current_code`), the others on earlier code. "
             f"Seeds run: {json.dumps(result['seeds_run'])}. Seed model: {json.dumps(result['seed_model'])}.", "",
             f"The reference front's own log hypervolume is {result['log_hv_reference_front']:.3f}"
             + (f", {ceiling:.3f} times the plain loop's median: the ratio a front made of every point seen here "
                "would reach." if (ceiling := ceiling_ratio(result)) else "."), "",
             "Gap to the reference front by decade (percentage points, median over seeds; the decade's upper edge), "
             "log hypervolume (median over seeds):", "",
             "| method | " + " | ".join(f"{lo:g}-{hi:g} s" for lo, hi in result["decades"]) + " | log hv | median wall s |",
             "|---|" + "---|" * (len(result["decades"]) + 2)]
    for method, gaps in result["gap_by_decade"].items():
        lines.append(f"| {method} | " + " | ".join(f"{g:.2f}" for g in gaps.values())
                     + f" | {statistics.median(result['log_hv'][method].values()):.3f} | {result['wall_seconds_median'][method]:.0f} |")
    return [*lines, "", f"![coverage]({image})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("cell")
    run.add_argument("method", choices=(*METHODS, "seed-model", "accuracy-winner"))
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--data-dir", required=True)
    run.set_defaults(action=cell)
    commands.add_parser("summary").set_defaults(action=summary)
    args = parser.parse_args()
    if args.command == "cell" and args.seed not in SEEDS.get(args.method, (args.seed,)):
        parser.error(f"the protocol runs {args.method} on seeds {', '.join(map(str, SEEDS[args.method]))}, not {args.seed}")
    args.action(args)


if __name__ == "__main__":
    main()
