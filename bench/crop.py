"""What cutting the border pixels (`MLPConfig.input_crop`) buys: steady epoch seconds and accuracy.

The first layer of a shallow net is most of its arithmetic, and it shrinks with the picture: 784 inputs
uncropped, 576 with a 2-pixel border cut, 400 with 4. For nets like the default study's fast end: seconds
of the steady epochs (median of epochs 2-4 of a 4-epoch run) with and without XLA, and the validation
accuracy after epoch 4, per crop, side by side in one process. 1 x 32 shows the per-step floor that no
crop moves. Writes bench/results/crop.{json,md}.

Usage: python bench/crop.py --data-dir ../shared/datasets/mnist
"""

from __future__ import annotations

import statistics

from common import commit, publish, warm_splits  # bench/common.py

NETS = {"1x32": (1, 32), "1x208": (1, 208), "1x417": (1, 417), "1x1024": (1, 1024), "2x512": (2, 512)}  # depth, width
CROPS = (0, 2, 4)
BATCH, EPOCHS, LEARNING_RATE = 256, 4, 3e-3


def measure(splits, depth: int, width: int, crop: int, xla: bool) -> dict:
    from mnist_core.model import MLPConfig
    from mnist_core.trainer import TrainConfig, train

    model = MLPConfig(depth=depth, width=width, input_crop=crop, learning_rate=LEARNING_RATE, lr_schedule="linear", jit_compile=xla)
    result = train(TrainConfig(model, epochs=EPOCHS, batch_size=BATCH), splits)
    return {"epoch_seconds": statistics.median(e.seconds for e in result.epochs[1:]), "first_epoch_seconds": result.epochs[0].seconds,
            "val_accuracy": result.epochs[-1].val_accuracy, "params": result.param_count}


def main() -> None:
    data_dir, splits = warm_splits(__doc__.splitlines()[0])
    rows = {}
    for name, (depth, width) in NETS.items():
        rows[name] = {f"crop{crop}_{'xla' if xla else 'plain'}": measure(splits, depth, width, crop, xla) for crop in CROPS for xla in (False, True)}
        print(name, rows[name], flush=True)
    command = f"python bench/crop.py --data-dir {data_dir}"
    result = {"commit": commit(), "command": command, "batch_size": BATCH, "epochs": EPOCHS, "crops": list(CROPS), "rows": rows}
    lines = [
        "# Cropping the border pixels: steady epoch seconds, without / with XLA, and accuracy", "",
        f"Commit {result['commit']}, `{command}`, 2-core CPU VM, one process, runs side by side. Batch {BATCH}, linear decay",
        f"from {LEARNING_RATE:g} over {EPOCHS} epochs; seconds are the median of epochs 2-{EPOCHS} (the first one traces, and with",
        f"XLA compiles: its seconds are in crop.json); accuracy is validation after epoch {EPOCHS} without XLA.", "",
        "| net | " + " | ".join(f"crop {c}" for c in CROPS) + " | " + " | ".join(f"val, crop {c}" for c in CROPS) + " |",
        "|---|" + "---|" * (2 * len(CROPS)),
    ]
    for name, row in rows.items():
        cells = [f"{row[f'crop{c}_plain']['epoch_seconds']:.2f} / {row[f'crop{c}_xla']['epoch_seconds']:.2f} s" for c in CROPS]
        accuracy = [f"{row[f'crop{c}_plain']['val_accuracy']:.4f}" for c in CROPS]
        lines.append(f"| {name} | " + " | ".join(cells + accuracy) + " |")
    publish("crop", result, lines)


if __name__ == "__main__":
    main()
