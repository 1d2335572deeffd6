"""The map's fast end: what the cheapest nets reach in their first epochs, at the start learning rate and at the
rate `sweep/spread.py` raises for narrow nets.

The cost-spread start trains the cheapest net of the default study (sweep/studies/map.toml) as its first trial.
Its first epoch is mostly tracing; each further epoch costs a fraction of it. For the narrowest nets of the
map's space, with the map's cheapest values otherwise (border cropped, largest batch, no augmentation or
dropout) and its start recipe, trained for `FAST_END_EPOCHS`: each epoch's cumulative training seconds (median
of REPEATS runs, interleaved in one warm process) and validation accuracy (selection on validation; no test
set). Writes bench/results/fast_end.{json,md}.

Usage: python bench/fast_end.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import statistics

from common import clean_tree, commit, machine, publish, warm_splits  # bench/common.py

NETS = {"1x32": (1, 32), "1x64": (1, 64), "2x32": (2, 32)}  # depth, width
REPEATS = 3
WITHIN = 1.0  # seconds: the top of the map's first decade


def main() -> None:
    import optuna

    from mnist_core.trainer import train
    from sweep.spread import FAST_END_EPOCHS, start_learning_rate
    from sweep.studyfile import STUDIES, load_study

    data_dir, splits = warm_splits(__doc__.splitlines()[0])
    spec = load_study(STUDIES / "map.toml")
    starts = {p.name: p.start for p in spec.params if p.start is not None}
    rate = next(p for p in spec.params if p.name == "learning_rate")
    runs = {}
    for name, (depth, width) in NETS.items():
        for label, lr in (("start", rate.start), ("raised", start_learning_rate(rate, width))):
            params = {**spec.cheapest_params(starts), "depth": depth, "width": width, "epochs": FAST_END_EPOCHS, "learning_rate": lr}
            runs[f"{name} {label}"] = (spec.config_for(optuna.trial.FixedTrial(params), seed=spec.seed), lr)
    timed: dict[str, list] = {key: [] for key in runs}
    for _ in range(REPEATS):
        for key, (config, _) in runs.items():
            result = train(config, splits)
            seconds, points = 0.0, []
            for epoch in result.epochs:
                seconds += epoch.seconds
                points.append((seconds, epoch.val_accuracy))
            timed[key].append(points)
            print(key, [(round(s, 3), round(v, 4)) for s, v in points], flush=True)
    rows = {}
    for key, (config, lr) in runs.items():
        epochs = [{"epoch": i + 1, "seconds": statistics.median(run[i][0] for run in timed[key]),
                   "seconds_range": [min(run[i][0] for run in timed[key]), max(run[i][0] for run in timed[key])],
                   "val_accuracy": statistics.median(run[i][1] for run in timed[key])} for i in range(FAST_END_EPOCHS)]
        inside = [e["val_accuracy"] for e in epochs if e["seconds"] <= WITHIN]
        rows[key] = {"learning_rate": lr, "batch_size": config.batch_size, "input_crop": config.model.input_crop,
                     "epochs": epochs, "best_val_within_1s": max(inside) if inside else None}
    command = f"python bench/fast_end.py --data-dir {data_dir}"
    result = {"commit": commit(), "clean_tree": clean_tree(), "machine": machine(), "command": command, "repeats": REPEATS,
              "recipe": {k: v for k, v in starts.items() if k != "learning_rate"}, "rows": rows}
    lines = [
        "# The map's fast end: the cheapest nets' first epochs, at the start learning rate and raised for narrow nets", "",
        f"Commit {result['commit']} (clean tree: {result['clean_tree']}), {result['machine']}, `{command}`. The map's cheapest",
        f"values besides depth and width (batch {config.batch_size}, crop {config.model.input_crop}, no augmentation or dropout), its start recipe,",
        f"{FAST_END_EPOCHS} epochs; seconds are cumulative training seconds (validation passes included), median of {REPEATS} runs",
        "interleaved in one warm process (range in fast_end.json); accuracy on validation.", "",
        "| net | learning rate | " + " | ".join(f"epoch {i + 1}" for i in range(FAST_END_EPOCHS)) + f" | best within {WITHIN:g} s |",
        "|---|---|" + "---|" * (FAST_END_EPOCHS + 1),
    ]
    for key, row in rows.items():
        cells = [f"{e['seconds']:.2f} s, {e['val_accuracy']:.4f}" for e in row["epochs"]]
        best = "none" if row["best_val_within_1s"] is None else f"{row['best_val_within_1s']:.4f}"
        lines.append(f"| {key.split()[0]} | {row['learning_rate']:.2g} ({key.split()[1]}) | " + " | ".join(cells) + f" | {best} |")
    publish("fast_end", result, lines)


if __name__ == "__main__":
    main()
