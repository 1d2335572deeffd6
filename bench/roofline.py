"""The ceiling on the fraction of the FLOP bound that backends.py reports: the fastest epoch this machine's
TensorFlow could run from the pieces a training step is made of, each timed alone.

backends.py divides an epoch's FLOPs (`mnist_core/work.py`) by the matrix throughput of this machine's profile
(`mnist_core/machine.py`), which this bench reads too. A step is not one product. Per dense layer it is a forward product, the input's gradient (not for the first layer) and the
weight's gradient, whose inner dimension is the batch; then Adam's update, which reads each parameter, its
gradient and both moments and writes three of them back (28 bytes a parameter, bound by memory bandwidth);
and each epoch ends with a validation pass. Here each product is timed at its exact shape on random tensors,
and Adam's update as the trainer runs it (TensorFlow's fused kernel) over variables of the net's shapes, each
in whichever of TensorFlow's runtime and XLA's is faster, several to a timed call and the call's dispatch cost
subtracted. Bias, activation, loss and batch gathering count as free. So the ceiling is optimistic on every
count: no schedule that runs these pieces one after another (TensorFlow's executor and XLA's CPU runtime both
do) gets closer to the bound.

Writes bench/results/roofline.{json,md}. Usage: python bench/roofline.py
"""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING

from backends import SIZES  # bench/backends.py
from common import clean_tree, commit, publish

if TYPE_CHECKING:
    from mnist_core.machine import MachineProfile

TRAIN_EXAMPLES, VAL_EXAMPLES = 54_000, 6_000  # the 90/10 split of MNIST's 60,000 training images
ADAM_BYTES_PER_PARAM = 28  # read parameter, gradient, two moments; write parameter, two moments (float32)
RUNS = 3  # the machine is shared: each piece's speed varies from minute to minute
CALL_SECONDS, MAX_COPIES = 0.02, 32  # about this much work in one timed call, in at most this many copies
TARGET, TARGET_SIZES = 0.8, ("2x512", "4x1024", "5x2000")  # issue 9: fraction of the FLOP bound for these


def _call_seconds(fn, args, repeats: int = 7) -> float:
    """Best seconds of one call of `fn(*args)`, after a first call that traces and compiles it."""
    fn(*args).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn(*args).numpy()
        best = min(best, time.perf_counter() - started)
    return best


def _copies(seconds_each: float) -> int:
    """How many copies of an operation one timed call runs: about CALL_SECONDS of work, so that the call's
    dispatch cost is small beside it (and is subtracted as well); the smallest products are overhead-bound
    anyway."""
    return min(MAX_COPIES, max(1, math.ceil(CALL_SECONDS / seconds_each)))


def _dispatch_seconds() -> dict[bool, float]:
    """The cost of calling a traced function that does (almost) nothing, without and with XLA."""
    import tensorflow as tf

    a = tf.ones((1, 1))
    return {jit: _call_seconds(tf.function(lambda a: tf.reduce_sum(tf.matmul(a, a)), jit_compile=jit), (a,), repeats=200)
            for jit in (False, True)}


def _product_seconds(shape_a: tuple[int, int], shape_b: tuple[int, int], transpose_a: bool, transpose_b: bool,
                     flops: float, dispatch: dict[bool, float]) -> float:
    """Seconds of one float32 product at these shapes: the faster of TensorFlow's kernel and XLA's. One call
    loops over several different left operands times the same right one (no two products alike, so none is
    elided), each output summed so that it is computed."""
    import tensorflow as tf

    m, k = shape_a[::-1] if transpose_a else shape_a
    copies = _copies(2 * m * k * shape_b[0 if transpose_b else 1] / flops)
    lefts, right = tf.random.uniform((copies, *shape_a)), tf.random.uniform(shape_b)

    def products(lefts, right):
        total = tf.constant(0.0)
        for i in tf.range(copies):
            total += tf.reduce_sum(tf.matmul(lefts[i], right, transpose_a=transpose_a, transpose_b=transpose_b))
        return total

    return min((_call_seconds(tf.function(products, jit_compile=jit), (lefts, right)) - dispatch[jit]) / copies
               for jit in (False, True))


def _adam_seconds(shapes: list[tuple[int, ...]], bandwidth: float, dispatch: dict[bool, float]) -> float:
    """Seconds of the trainer's Adam update (TensorFlow's fused `ResourceApplyAdam`, one per variable) over
    variables of these shapes: the faster of TensorFlow's kernel and XLA's, several updates a call."""
    import tensorflow as tf

    variables = [[tf.Variable(tf.random.uniform(s)) for s in shapes] for _ in range(3)]  # parameters, m, v
    grads = [tf.random.uniform(s) for s in shapes]
    copies = _copies(ADAM_BYTES_PER_PARAM * sum(math.prod(s) for s in shapes) / bandwidth)
    scalar = lambda x: tf.constant(x, tf.float32)  # noqa: E731

    def updates(grads):
        for _ in tf.range(copies):
            for var, m, v, g in zip(*variables, grads):
                tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=scalar(0.9),
                                             beta2_power=scalar(0.999), lr=scalar(1e-3), beta1=scalar(0.9),
                                             beta2=scalar(0.999), epsilon=scalar(1e-7), grad=g)
        return variables[0][0][0, 0]

    return min((_call_seconds(tf.function(updates, jit_compile=jit), (grads,)) - dispatch[jit]) / copies
               for jit in (False, True))


def ceiling(depth: int, width: int, batch: int, profile: MachineProfile, dispatch: dict[bool, float]) -> dict:
    """The fastest epoch of a depth x width net at this batch from its pieces, and the fraction of the FLOP
    bound (at the profile's throughput) it would reach."""
    from mnist_core.digits import NUM_CLASSES
    from mnist_core.model import MLPConfig, param_count
    from mnist_core.trainer import TrainConfig, _Loop

    config = MLPConfig(depth=depth, width=width)
    run = TrainConfig(config, epochs=1, batch_size=batch).work(TRAIN_EXAMPLES)
    flops = profile.gflops * 1e9
    dims = [config.inputs, *config.widths, NUM_CLASSES]
    layers = list(zip(dims[:-1], dims[1:]))
    params = param_count(config)
    product = lambda a, b, ta=False, tb=False: _product_seconds(a, b, ta, tb, flops, dispatch)  # noqa: E731
    forward = backward = validation = 0.0
    for index, (inputs, outputs) in enumerate(layers):
        forward += product((batch, inputs), (inputs, outputs))
        backward += product((batch, inputs), (batch, outputs), True)  # the weight's gradient
        if index:  # the input's gradient; the images need none
            backward += product((batch, outputs), (inputs, outputs), False, True)
        validation += product((_Loop.EVAL_BATCH, inputs), (inputs, outputs))
    adam = _adam_seconds([s for i, o in layers for s in ((i, o), (o,))], profile.gbps * 1e9, dispatch)
    step = forward + backward + adam
    epoch = math.ceil(TRAIN_EXAMPLES / batch) * step + math.ceil(VAL_EXAMPLES / _Loop.EVAL_BATCH) * validation
    bound_step, bound_epoch = run.flops_per_step / flops, run.flops(1) / flops
    return {
        "shape": f"{depth} x {width}", "batch_size": batch, "params": params, "matmul_flops": flops,
        "flop_bound_step_ms": bound_step * 1e3,
        "products_forward_ms": forward * 1e3, "products_backward_ms": backward * 1e3,
        "products_fraction_of_bound": bound_step / (forward + backward), "adam_ms": adam * 1e3,
        "ceiling_step_ms": step * 1e3, "ceiling_step_fraction": bound_step / step,
        "flop_bound_seconds_per_epoch": bound_epoch, "ceiling_seconds_per_epoch": epoch,
        "ceiling_fraction_of_flop_bound": bound_epoch / epoch, "adam_alone_fraction": bound_step / (bound_step + adam),
    }


def main() -> None:
    import json

    from common import RESULTS

    from mnist_core.machine import current

    profile, runs = current(), []
    for _ in range(RUNS):
        dispatch = _dispatch_seconds()
        runs.append({name: ceiling(depth, width, batch, profile, dispatch) for name, (depth, width, batch, _) in SIZES.items()})
        print(runs[-1], flush=True)
    rows = {name: {**max((run[name] for run in runs), key=lambda r: r["ceiling_fraction_of_flop_bound"]),
                   **{f"{key}_runs": [run[name][key] for run in runs]
                      for key in ("ceiling_fraction_of_flop_bound", "adam_alone_fraction")}}
            for name in SIZES}
    backends = json.loads((RESULTS / "backends.json").read_text())
    measured = backends["results"]["default"]
    command = "python bench/roofline.py"
    lines = [
        "# The ceiling on the fraction of the FLOP bound: a step's pieces, each timed alone", "",
        f"Command: `{command}` (commit {commit()})  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPU cores, TensorFlow backend, random tensors. "
        f"{RUNS} runs, one after another, against this machine's profile, as backends.py: {profile.gflops:.0f} GFLOP/s, "
        f"{profile.gbps:.1f} GB/s (measured {profile.measured}). Each size's row is its run with the highest ceiling (the most optimistic); the ranges are over "
        "the runs. A timed call runs several copies of a piece, less the cost of dispatching an empty call.", "",
        "Products: every matmul of one step at its exact shape, the faster of TensorFlow's and XLA's kernel. Adam: the "
        "trainer's fused update over the net's variables, the faster of TensorFlow's runtime and XLA's. *Ceiling*: "
        "products + Adam a step, plus the validation pass's products an epoch; bias, activation, loss and batch "
        "gathering free, nothing run in parallel with anything else. *With Adam alone*: the fraction if every "
        "product ran at the profile's rate and Adam's update were the only other cost. *Measured*: the default "
        f"path's steady epoch in backends.json (`{backends['command']}`, commit {backends['commit']}, "
        "the same profile).", "",
        "| size | batch | FLOP bound a step | products a step (fraction of bound) | Adam a step | ceiling a step | "
        "ceiling per epoch | with Adam alone | measured | target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        target = "" if name not in TARGET_SIZES else f">= {TARGET:.0%}: " + (
            "out of reach" if r["ceiling_fraction_of_flop_bound"] < TARGET else "not ruled out")
        lines.append(
            f"| {name} | {r['batch_size']} | {r['flop_bound_step_ms']:.2f} ms | "
            f"{r['products_forward_ms'] + r['products_backward_ms']:.2f} ms ({r['products_fraction_of_bound']:.0%}) | "
            f"{r['adam_ms']:.2f} ms | {r['ceiling_step_ms']:.2f} ms ({r['ceiling_step_fraction']:.0%}) | "
            f"**{r['ceiling_fraction_of_flop_bound']:.0%}** ({min(r['ceiling_fraction_of_flop_bound_runs']):.0%}-"
            f"{max(r['ceiling_fraction_of_flop_bound_runs']):.0%}) | {r['adam_alone_fraction']:.0%} "
            f"({min(r['adam_alone_fraction_runs']):.0%}-{max(r['adam_alone_fraction_runs']):.0%}) | "
            f"{measured['sizes'][name]['fraction_of_flop_bound']:.0%} | {target} |")
    publish("roofline", {"command": command, "commit": commit(), "clean_tree": clean_tree(), "profile": profile.fields(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                         "runs": RUNS, "target": TARGET, "sizes": rows}, lines)


if __name__ == "__main__":
    main()
