"""The map's fast end: what one-layer nets reach within the first decade of training time, by width, planned
epochs and learning rate.

The cost-spread start (`sweep/spread.py`) opens the default study (sweep/studies/map.toml) at its fast end. A
net's first epoch is mostly tracing and each further epoch costs a fraction of it, so within a second the
choice is between a narrow net for several epochs and a wider one for fewer. For one-layer nets of WIDTHS
planned for each of PLANS epochs, with the map's cheapest values otherwise (border cropped, largest batch, no
augmentation or dropout) and its start recipe, at the start learning rate, at the rate `start_learning_rate`
raises it to for the net's width, and at twice that (within the range): each epoch's cumulative training
seconds (median of REPEATS runs, interleaved in one warm process) and validation accuracy (selection on
validation; no test set), and the best within WITHIN seconds. Writes bench/results/fast_end.{json,md}.

Usage: python bench/fast_end.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import statistics

from common import clean_tree, commit, machine, publish, warm_splits  # bench/common.py

WIDTHS = (32, 64, 96, 128, 192, 256)
PLANS = (2, 3, 4)  # planned epochs: the rate decays to zero over them
REPEATS = 3
WITHIN = 1.0  # seconds: the top of the map's first decade


def main() -> None:
    import optuna

    from mnist_core.trainer import train
    from sweep.spread import start_learning_rate
    from sweep.studyfile import STUDIES, load_study

    data_dir, splits = warm_splits(__doc__.splitlines()[0])
    spec = load_study(STUDIES / "map.toml")
    starts = {p.name: p.start for p in spec.params if p.start is not None}
    rate = spec.param("learning_rate")
    runs = {}
    for width in WIDTHS:
        raised = start_learning_rate(rate, width)
        for epochs in PLANS:
            for label, lr in (("start", rate.start), ("raised", raised), ("raised x2", min(2 * raised, rate.high))):
                params = {**spec.cheapest_params(starts), "depth": 1, "width": width, "epochs": epochs, "learning_rate": lr}
                runs[(f"1x{width}", epochs, label)] = (spec.config_for(optuna.trial.FixedTrial(params), seed=spec.seed), lr)
    timed: dict[tuple, list] = {key: [] for key in runs}
    for _ in range(REPEATS):
        for key, (config, _) in runs.items():
            seconds, points = 0.0, []
            for epoch in train(config, splits).epochs:
                seconds += epoch.seconds
                points.append((seconds, epoch.val_accuracy))
            timed[key].append(points)
            print(*key, [(round(s, 3), round(v, 4)) for s, v in points], flush=True)
    rows = []
    for (net, epochs, label), (config, lr) in runs.items():
        runs_of = timed[(net, epochs, label)]
        points = [{"epoch": i + 1, "seconds": statistics.median(run[i][0] for run in runs_of),
                   "seconds_range": [min(run[i][0] for run in runs_of), max(run[i][0] for run in runs_of)],
                   "val_accuracy": statistics.median(run[i][1] for run in runs_of)} for i in range(epochs)]
        inside = [p["val_accuracy"] for p in points if p["seconds"] <= WITHIN]
        rows.append({"net": net, "planned_epochs": epochs, "rate": label, "learning_rate": lr, "batch_size": config.batch_size,
                     "input_crop": config.model.input_crop, "epochs": points, "best_val_within_1s": max(inside) if inside else None})
    command = f"python bench/fast_end.py --data-dir {data_dir}"
    result = {"commit": commit(), "clean_tree": clean_tree(), "machine": machine(), "command": command, "repeats": REPEATS,
              "within_seconds": WITHIN, "recipe": {k: v for k, v in starts.items() if k != "learning_rate"}, "rows": rows}
    best = max((r for r in rows if r["best_val_within_1s"] is not None), key=lambda r: r["best_val_within_1s"])
    lines = [
        "# The map's fast end: one-layer nets within the first decade, by width, planned epochs and learning rate", "",
        f"Commit {result['commit']} (clean tree: {result['clean_tree']}), {result['machine']}, `{command}`. The map's cheapest",
        f"values besides width and epochs (batch {config.batch_size}, crop {config.model.input_crop}, no augmentation or dropout) and its start",
        f"recipe; seconds are cumulative training seconds (validation passes included), median of {REPEATS} runs interleaved",
        "in one warm process (range in fast_end.json); accuracy on validation.", "",
        f"Best within {WITHIN:g} s: {best['net']} planned for {best['planned_epochs']} epochs at {best['learning_rate']:.2g} "
        f"({best['rate']}), {best['best_val_within_1s']:.4f}.", "",
        "| net | epochs | learning rate | " + " | ".join(f"epoch {i + 1}" for i in range(max(PLANS))) + f" | best within {WITHIN:g} s |",
        "|---|---|---|" + "---|" * (max(PLANS) + 1),
    ]
    for row in rows:
        cells = [f"{p['seconds']:.2f} s, {p['val_accuracy']:.4f}" for p in row["epochs"]] + [""] * (max(PLANS) - row["planned_epochs"])
        within = "none" if row["best_val_within_1s"] is None else f"{row['best_val_within_1s']:.4f}"
        lines.append(f"| {row['net']} | {row['planned_epochs']} | {row['learning_rate']:.2g} ({row['rate']}) | "
                     + " | ".join(cells) + f" | {within} |")
    publish("fast_end", result, lines)


if __name__ == "__main__":
    main()
