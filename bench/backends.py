"""Training speed against the hardware limit: the default path of `mnist_core.trainer.train` vs the old one.

The old path is Keras `Model.fit` on the tf.data pipeline, one batch per traced call, no XLA
(`common.train_with_fit`): how the Keras examples train, and what every trial ran before. The default path is
`mnist_core.trainer`'s own loop on resident tensors, several batches per traced call, XLA on the step where
the run repays compiling (`mnist_core.trainer.execution_steps`, `use_xla`). For MLPs from 1 x 64 to the seed
model (5 x 2000): steady-state seconds per epoch, the warm-up epoch and examples/s, each path in its own
process. The FLOP bound of an epoch is 6 x parameters x examples / the matrix-multiply FLOP/s measured in
the same process (best of repeated 2048 x 2048 float32 products); the ratio says how close training gets.
Writes bench/results/backends.{json,md}.

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

from common import RESULTS, ROOT, commit, train_with_fit  # bench/common.py
SIZES = {  # depth, width, batch, epochs
    "1x64": (1, 64, 512, 3),
    "1x256": (1, 256, 128, 3),
    "2x512": (2, 512, 128, 3),
    "4x1024": (4, 1024, 128, 3),
    "5x2000": (5, 2000, 100, 2),
}
PATHS = ("old", "default")


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best measured float32 FLOP/s of an n x n matrix product on the current Keras backend."""
    import keras
    import numpy as np

    a = keras.ops.convert_to_tensor(np.random.default_rng(0).random((n, n), dtype=np.float32))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, a))  # compile / warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, a))
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def measure(data_dir: str, path: str) -> dict:
    """This process's FLOP/s and each size's steady-state speed on `path` ("old" or "default")."""
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, execution_steps, train

    splits = load_splits(resolve_source(data_dir))
    flops = matmul_flops()
    rows = {}
    for name, (depth, width, batch, epochs) in SIZES.items():
        config = TrainConfig(MLPConfig(depth=depth, width=width), epochs=epochs, batch_size=batch)
        result = train_with_fit(config, splits) if path == "old" else train(config, splits)
        bound = 6 * result.param_count * len(splits.train) / flops
        steps = 1 if path == "old" else execution_steps(result.param_count, batch, config.steps_per_epoch(len(splits.train)))
        rows[name] = {
            "shape": f"{depth} x {width}", "batch_size": batch, "params": result.param_count, "epochs": epochs,
            "jit_compile": result.config.model.jit_compile, "steps_per_execution": steps,
            "warmup_seconds": result.warmup_seconds, "seconds_per_epoch": result.seconds_per_epoch,
            "train_seconds": result.seconds, "examples_per_second": result.examples_per_second,
            "flop_bound_seconds_per_epoch": bound, "fraction_of_flop_bound": bound / result.seconds_per_epoch,
            "val_accuracy": result.best_epoch.val_accuracy,
        }
        print(path, name, rows[name], flush=True)
    return {"matmul_flops": flops, "sizes": rows}


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
    measured = commit()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backends.json").write_text(json.dumps({"command": command, "commit": measured, "results": results}, indent=2) + "\n")
    lines = [
        "# Training speed vs the hardware limit: the default path vs the old one", "",
        f"Command: `{command}` (commit {measured})  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPU cores, TensorFlow backend; 54,000 training examples per epoch.", "",
        "Old: Keras `Model.fit` on the tf.data pipeline, one batch per traced call, no XLA. Default: the trainer's "
        "own loop on resident tensors, several batches per traced call (about 0.25 s of work each), XLA on the "
        "step where the run repays compiling. Measured matrix-multiply throughput (float32, "
        "2048 x 2048): " + "; ".join(f"{p}: {r['matmul_flops'] / 1e9:.0f} GFLOP/s" for p, r in results.items()) + ".", "",
        "| size | params | batch | path | XLA | batches per call | warm-up epoch | steady s/epoch | examples/s | FLOP-bound s/epoch | fraction of bound | speed-up | val acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIZES:
        old = results["old"]["sizes"][name]["seconds_per_epoch"]
        for path, r in results.items():
            row = r["sizes"][name]
            lines.append(
                f"| {name} | {row['params']:,} | {row['batch_size']} | {path} | {'yes' if row['jit_compile'] else 'no'} | "
                f"{row['steps_per_execution']} | {row['warmup_seconds']:.1f} s | {row['seconds_per_epoch']:.2f} | "
                f"{row['examples_per_second']:,.0f} | {row['flop_bound_seconds_per_epoch']:.2f} | {row['fraction_of_flop_bound']:.0%} | "
                f"{old / row['seconds_per_epoch']:.2f}x | {row['val_accuracy']:.4f} |")
    (RESULTS / "backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
