"""Training speed against the hardware limit: the default path of `mnist_core.trainer.train` vs the old one.

The old path is Keras `Model.fit` on the tf.data pipeline, one batch per traced call, no XLA
(`common.train_with_fit`): how the Keras examples train, and what every trial ran before. The default path is
`mnist_core.trainer`'s own loop on resident tensors, several batches per traced call, XLA on the step where
the run repays compiling (`mnist_core.trainer.execution_steps`, `use_xla`). For MLPs from 1 x 64 to the seed
model (5 x 2000): steady-state seconds per epoch, the warm-up epoch and examples/s, each path in its own
process. Both bounds come from this machine's profile (`mnist_core/machine.py`, the one every run of the tool
uses) and the run's exact work (`mnist_core/work.py`): the FLOP bound of an epoch is its FLOPs / the profile's
matrix throughput; its roofline is, per step, max(FLOPs / throughput, optimizer bytes / bandwidth), times the
steps. The fractions say how close training gets to each. Writes bench/results/backends.{json,md}.

Usage: python bench/backends.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, clean_tree, commit, machine, publish, train_with_fit  # bench/common.py

SIZES = {  # depth, width, batch, epochs
    "1x64": (1, 64, 512, 3),
    "1x256": (1, 256, 128, 3),
    "2x512": (2, 512, 128, 3),
    "4x1024": (4, 1024, 128, 3),
    "5x2000": (5, 2000, 100, 2),
}
PATHS = ("old", "default")


def measure(data_dir: str, path: str) -> dict:
    """This machine's profile and each size's steady-state speed on `path` ("old" or "default")."""
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.machine import current
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, execution_steps, train

    splits = load_splits(resolve_source(data_dir))
    profile = current()
    rows = {}
    for name, (depth, width, batch, epochs) in SIZES.items():
        config = TrainConfig(MLPConfig(depth=depth, width=width), epochs=epochs, batch_size=batch)
        result = train_with_fit(config, splits) if path == "old" else train(config, splits)
        run = config.work(len(splits.train))
        flop_bound = run.flops(1) / (profile.gflops * 1e9)
        roofline = run.steps_per_epoch * max(run.flops_per_step / (profile.gflops * 1e9),
                                             run.optimizer_bytes_per_step / (profile.gbps * 1e9))
        rows[name] = {
            "shape": f"{depth} x {width}", "batch_size": batch, "params": result.param_count, "epochs": epochs,
            "jit_compile": result.config.model.jit_compile,
            "steps_per_execution": 1 if path == "old" else execution_steps(run, profile),
            "warmup_seconds": result.warmup_seconds, "seconds_per_epoch": result.seconds_per_epoch,
            "train_seconds": result.seconds, "examples_per_second": result.examples_per_second,
            "flop_bound_seconds_per_epoch": flop_bound, "fraction_of_flop_bound": flop_bound / result.seconds_per_epoch,
            "roofline_seconds_per_epoch": roofline, "fraction_of_roofline": roofline / result.seconds_per_epoch,
            "val_accuracy": result.best_epoch.val_accuracy,
        }
        print(path, name, rows[name], flush=True)
    return {"profile": profile.fields(), "sizes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, help="(internal) measure one path into this file")
    parser.add_argument("--path", choices=PATHS, help="(internal) with --out: which path")
    args = parser.parse_args()
    if args.out:
        return args.out.write_text(json.dumps(measure(args.data_dir, args.path)))
    results = {}
    for path in PATHS:
        out = Path(tempfile.mktemp(suffix=".json"))
        subprocess.run([sys.executable, __file__, "--data-dir", args.data_dir, "--out", str(out), "--path", path],
                       check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        results[path] = json.loads(out.read_text())
    command = f"python bench/backends.py --data-dir {args.data_dir}"
    measured, profile = commit(), results["default"]["profile"]
    lines = [
        "# Training speed vs the hardware limit: the default path vs the old one", "",
        f"Command: `{command}` (commit {measured})  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {machine()}; TensorFlow backend; 54,000 training examples per epoch.", "",
        "Old: Keras `Model.fit` on the tf.data pipeline, one batch per traced call, no XLA. Default: the trainer's "
        "own loop on resident tensors, several batches per traced call (about 0.25 s of work each), XLA on the "
        "step where the run repays compiling. The machine's profile, which both paths' processes read: "
        f"{profile['gflops']:.0f} GFLOP/s on the products of dense layers, {profile['gbps']:.1f} GB/s on Adam's update "
        f"(measured {profile['measured']}). Roofline: per step the larger of its FLOPs at that throughput and its "
        "optimizer bytes at that bandwidth.", "",
        "| size | params | batch | path | XLA | batches per call | warm-up epoch | steady s/epoch | examples/s | FLOP-bound s/epoch | "
        "fraction of FLOP bound | roofline s/epoch | fraction of roofline | speed-up | val acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIZES:
        old = results["old"]["sizes"][name]["seconds_per_epoch"]
        for path, r in results.items():
            row = r["sizes"][name]
            lines.append(
                f"| {name} | {row['params']:,} | {row['batch_size']} | {path} | {'yes' if row['jit_compile'] else 'no'} | "
                f"{row['steps_per_execution']} | {row['warmup_seconds']:.1f} s | {row['seconds_per_epoch']:.2f} | "
                f"{row['examples_per_second']:,.0f} | {row['flop_bound_seconds_per_epoch']:.2f} | {row['fraction_of_flop_bound']:.0%} | "
                f"{row['roofline_seconds_per_epoch']:.2f} | {row['fraction_of_roofline']:.0%} | "
                f"{old / row['seconds_per_epoch']:.2f}x | {row['val_accuracy']:.4f} |")
    publish("backends", {"command": command, "commit": measured, "clean_tree": clean_tree(), "machine": machine(), "profile": profile,
                         "results": results}, lines)


if __name__ == "__main__":
    main()
