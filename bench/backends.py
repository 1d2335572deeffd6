"""Training speed against the hardware limit: TensorFlow, TensorFlow with XLA, and JAX.

For small (2 x 512), medium (4 x 1024) and seed-sized (5 x 2000) MLPs: steady-state seconds per
epoch and examples/s through `mnist_core.trainer.train`, each variant in its own process (XLA:
`jit_compile=True`, which Keras leaves off for TensorFlow on a CPU). The FLOP
bound of an epoch is 6 x parameters x examples / the matrix-multiply FLOP/s measured on the same
backend (best of repeated 2048 x 2048 float32 products); the ratio says how close training gets.
Writes bench/results/backends.{json,md}. JAX is a bench-only dependency (`pip install jax`).

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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SIZES = {"small": (2, 512, 128, 3), "medium": (4, 1024, 128, 3), "seed": (5, 2000, 100, 2)}  # depth, width, batch, epochs
VARIANTS = {"tensorflow": ("tensorflow", False), "tensorflow+xla": ("tensorflow", True), "jax": ("jax", False)}  # backend, XLA


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


def measure(data_dir: str, xla: bool) -> dict:
    """This process's backend: FLOP/s and each size's steady-state speed."""
    import keras

    import mnist_core.trainer
    from mnist_core.data import load_splits, resolve_source
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train

    if xla:
        build = mnist_core.trainer.build_mlp

        def build_xla(config):
            model = build(config)
            model.jit_compile = True
            return model

        mnist_core.trainer.build_mlp = build_xla
    splits = load_splits(resolve_source(data_dir))
    flops = matmul_flops()
    rows = {}
    for name, (depth, width, batch, epochs) in SIZES.items():
        result = train(TrainConfig(MLPConfig(depth=depth, width=width), epochs=epochs, batch_size=batch, seed=0), splits)
        bound = 6 * result.param_count * len(splits.train) / flops
        rows[name] = {
            "shape": f"{depth} x {width}", "batch_size": batch, "params": result.param_count, "epochs": epochs,
            "warmup_seconds": result.warmup_seconds, "seconds_per_epoch": result.seconds_per_epoch,
            "examples_per_second": result.examples_per_second, "flop_bound_seconds_per_epoch": bound,
            "fraction_of_flop_bound": bound / result.seconds_per_epoch,
            "val_accuracy": result.best_epoch.val_accuracy,
        }
        print(keras.backend.backend(), name, rows[name], flush=True)
    return {"backend": keras.backend.backend(), "matmul_flops": flops, "sizes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, help="(internal) measure this process's backend into this file")
    parser.add_argument("--xla", action="store_true", help="(internal) with --out: jit_compile=True")
    args = parser.parse_args()
    if args.out:
        return args.out.write_text(json.dumps(measure(args.data_dir, args.xla)))
    results = {}
    for variant, (backend, xla) in VARIANTS.items():
        out = Path(tempfile.mktemp(suffix=".json"))
        subprocess.run([sys.executable, __file__, "--data-dir", args.data_dir, "--out", str(out), *(["--xla"] if xla else [])],
                       check=True, env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)})
        results[variant] = json.loads(out.read_text())
    command = f"python bench/backends.py --data-dir {args.data_dir}"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backends.json").write_text(json.dumps({"command": command, "results": results}, indent=2) + "\n")
    lines = [
        "# Training speed vs the hardware limit: TensorFlow, TensorFlow + XLA, JAX", "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPU cores; 54,000 training examples per epoch.", "",
        "Measured matrix-multiply throughput (float32, 2048 x 2048): "
        + "; ".join(f"{b}: {r['matmul_flops'] / 1e9:.0f} GFLOP/s" for b, r in results.items()) + ".", "",
        "| size | params | batch | variant | warm-up epoch | steady s/epoch | examples/s | FLOP-bound s/epoch | fraction of bound | val acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIZES:
        for backend, r in results.items():
            row = r["sizes"][name]
            lines.append(f"| {name} ({row['shape']}) | {row['params']:,} | {row['batch_size']} | {backend} | {row['warmup_seconds']:.1f} s | "
                         f"{row['seconds_per_epoch']:.2f} | {row['examples_per_second']:,.0f} | {row['flop_bound_seconds_per_epoch']:.2f} | "
                         f"{row['fraction_of_flop_bound']:.0%} | {row['val_accuracy']:.4f} |")
    (RESULTS / "backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
