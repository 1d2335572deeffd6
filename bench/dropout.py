"""Dropout compiled by XLA on a CPU: Keras' own layer against `mnist_core.network.Dropout`.

Both draw the same masks (tests/test_model.py); Keras' layer leaves TensorFlow to pick the random
generator, ours names Philox. For nets with dropout like the studies' winners: seconds of the second
(steady) epoch with XLA and Keras' layer, with XLA and ours, and without XLA, side by side in one process,
plus the final validation accuracy of each (equal where the masks are). Writes bench/results/dropout.{json,md}.

Usage: python bench/dropout.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

from common import commit, publish, warm_splits  # bench/common.py

NETS = {  # depth, width, dropout, input dropout, batch
    "1x417": (1, 417, 0.18, 0.0, 128),
    "2x512": (2, 512, 0.2, 0.0, 128),
    "2x1147": (2, 1147, 0.16, 0.04, 128),
}
PATHS = {"xla_keras_dropout": (True, "keras"), "xla_ours": (True, "ours"), "no_xla": (False, "ours")}


def measure(splits, net: tuple, xla: bool, layer: str) -> dict:
    import keras

    import mnist_core.network
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train

    depth, width, dropout, input_dropout, batch = net
    config = TrainConfig(MLPConfig(depth=depth, width=width, dropout=dropout, input_dropout=input_dropout, jit_compile=xla),
                         epochs=2, batch_size=batch)
    ours = mnist_core.network.Dropout
    mnist_core.network.Dropout = keras.layers.Dropout if layer == "keras" else ours
    try:
        result = train(config, splits)
    finally:
        mnist_core.network.Dropout = ours
    return {"epoch_seconds": result.epochs[-1].seconds, "val_accuracy": result.epochs[-1].val_accuracy}


def main() -> None:
    data_dir, splits = warm_splits(__doc__.splitlines()[0])
    rows = {}
    for name, net in NETS.items():
        rows[name] = {path: measure(splits, net, *how) for path, how in PATHS.items()}
        print(name, rows[name], flush=True)
    command = f"python bench/dropout.py --data-dir {data_dir}"
    result = {"commit": commit(), "command": command, "nets": {k: list(v) for k, v in NETS.items()}, "rows": rows}
    lines = [
        "# Dropout under XLA on a CPU: Keras' layer vs ours (Philox named)", "",
        f"Commit {result['commit']}, `{command}`, 2-core CPU VM, one process, runs side by side. Seconds of the second",
        "(steady) epoch of a 2-epoch run at batch 128; the last column is validation accuracy after epoch 2 with",
        "XLA: Keras' layer / ours (the same masks give the same figure).", "",
        "| net (dropout, input dropout) | XLA, Keras' Dropout | XLA, ours | no XLA | speed-up of ours | val accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        keras_xla, ours_xla, plain = (row[p] for p in PATHS)
        _, _, dropout, input_dropout, _ = NETS[name]
        lines.append(f"| {name} ({dropout}, {input_dropout}) | {keras_xla['epoch_seconds']:.2f} s | {ours_xla['epoch_seconds']:.2f} s | "
                     f"{plain['epoch_seconds']:.2f} s | {keras_xla['epoch_seconds'] / ours_xla['epoch_seconds']:.1f}x | "
                     f"{keras_xla['val_accuracy']:.4f} / {ours_xla['val_accuracy']:.4f} |")
    publish("dropout", result, lines)


if __name__ == "__main__":
    main()
