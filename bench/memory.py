"""Resident memory across many training runs in one process (does `train` release each model?).

Trains N small MLPs of varying size one after another on real MNIST and records RSS after each.
Writes bench/results/memory.md (memory-jax.md with KERAS_BACKEND=jax).

Usage: python bench/memory.py --data-dir ../shared/datasets/mnist --runs 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import psutil

from mnist_core.data import load_splits, resolve_source
from mnist_core.model import MLPConfig
from mnist_core.trainer import TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    process = psutil.Process()
    splits = load_splits(resolve_source(args.data_dir))
    rss = []
    started = time.perf_counter()
    for i in range(args.runs):
        config = TrainConfig(MLPConfig(depth=1 + i % 3, width=(64, 128, 256)[i % 3]), epochs=1, batch_size=256, seed=i)
        train(config, splits)
        rss.append(process.memory_info().rss / 2**20)
        print(f"run {i + 1}: RSS {rss[-1]:.0f} MiB", flush=True)
    seconds = time.perf_counter() - started
    backend = keras.backend.backend()
    first, last, peak = rss[0], rss[-1], max(rss)
    tenth = rss[min(9, len(rss) - 1)]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("memory.md" if backend == "tensorflow" else f"memory-{backend}.md")
    prefix = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    path.write_text(
        f"# Memory across training runs in one process ({backend} backend)\n\n"
        f"Command: `{prefix}python bench/memory.py --data-dir {args.data_dir} --runs {args.runs}`  \n"
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n"
        f"{args.runs} runs of 1-3 x 64-256 MLPs, 1 epoch each on real MNIST (54,000 examples), in one process: "
        f"{seconds:.0f} s in all, {seconds / args.runs:.1f} s per run (model build, compilation, one epoch, validation).\n\n"
        f"| RSS after run 1 | after run 10 | after run {args.runs} | peak | growth, runs 10 to {args.runs} |\n|---|---|---|---|---|\n"
        f"| {first:.0f} MiB | {tenth:.0f} MiB | {last:.0f} MiB | {peak:.0f} MiB | {last - tenth:+.0f} MiB "
        f"({(last - tenth) / max(len(rss) - 10, 1):+.1f} MiB/run) |\n\n"
        f"RSS after each run (MiB): {', '.join(f'{r:.0f}' for r in rss)}\n"
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
