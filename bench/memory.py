"""Memory of a long sweep: resident memory of the whole `sweep run` process tree, trial after trial.

Runs `--trials` short trials of a small study on real MNIST, once with the default process recycling
(`--recycle-every 25`) and once without (`--recycle-every 0`, what every sweep did before), sampling the
resident memory of the sweep's process and all its children every 0.5 s; the figure for trial n is the
last sample taken while n trials were done. Growth is the slope of a least-squares line through the figures of
trials FIRST_TRIAL to the last but one (the last is sampled while the process exits), with its standard error.
Writes bench/results/memory.{json,md,png}.

Usage: python bench/memory.py --data-dir ../shared/datasets/mnist [--trials 100]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import RESULTS, clean_tree, commit, machine, parse_args, publish
from stats import growth_slope

from sweep.testing.stores import finished, study_text, sweep_process

NAME = "memory"
# Growth is read from here on: the first trials still trace and cache (bench/results/memory.png).
FIRST_TRIAL = 10
# The tests' tiny study, sized for short trials on real MNIST.
STUDY = study_text(NAME, width="{ low = 32, high = 256, log = true }", epochs="{ choices = [1] }", batch_size="512")


def tree_rss_mib(process: psutil.Process) -> float:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:  # a worker that just ended
            pass
    return total / 2**20


def sweep_memory(root: Path, data_dir: str, trials: int, recycle_every: int) -> dict:
    store = root / f"store-{recycle_every}"
    process = sweep_process("run", "--study", root / "memory.toml", "--store", store, "--data-dir", data_dir,
                            "--trials", trials, "--recycle-every", recycle_every, stdout=subprocess.DEVNULL)
    tree = psutil.Process(process.pid)
    by_trial: dict[int, float] = {}
    peak = 0.0
    while process.poll() is None:
        try:
            rss = tree_rss_mib(tree)
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        by_trial[len(finished(store, NAME))] = rss
        time.sleep(0.5)
    if process.returncode:
        sys.exit(f"the sweep failed (exit {process.returncode}): run it by hand to see why")
    counts = sorted(by_trial)
    last = counts[-1]
    fitted = [n for n in counts if FIRST_TRIAL <= n < last]
    slope, stderr = growth_slope(fitted, [by_trial[n] for n in fitted]) if len(fitted) >= 3 else (None, None)
    return {"recycle_every": recycle_every, "trials": last, "peak_rss_mib": peak, "rss_after_10_mib": by_trial.get(FIRST_TRIAL),
            "rss_at_end_mib": by_trial[last], "growth_slope_mib_per_trial": slope, "growth_slope_stderr": stderr,
            "rss_by_trial": {str(n): round(by_trial[n], 1) for n in counts}}


def chart(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for run in runs:
        points = sorted((int(n), rss) for n, rss in run["rss_by_trial"].items())
        label = f"recycled every {run['recycle_every']} trials" if run["recycle_every"] else "never recycled (before)"
        ax.plot([n for n, _ in points], [rss for _, rss in points], marker=".", label=label)
    ax.set_xlabel("trials finished")
    ax.set_ylabel("resident memory of the process tree (MiB)")
    ax.set_title("Memory of one `sweep run` over its trials")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], trials=100)
    command = f"python bench/memory.py --data-dir {args.data_dir} --trials {args.trials}"
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "memory.toml").write_text(STUDY)
        runs = [sweep_memory(root, args.data_dir, args.trials, recycle) for recycle in (25, 0)]
    default = runs[0]
    result = {"command": command, "commit": commit(), "clean_tree": clean_tree(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
              "machine": machine(), "trials": default["trials"], "growth_slope_mib_per_trial": default["growth_slope_mib_per_trial"],
              "growth_slope_stderr": default["growth_slope_stderr"], "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    chart(runs, RESULTS / "memory.png")
    lines = [
        "# Memory of one sweep over its trials", "",
        f"Command: `{command}` (commit {result['commit']}, {(time.time() - started) / 60:.1f} min)  ",
        f"Date: {result['date']}; machine: {result['machine']}.", "",
        f"{args.trials} one-epoch trials (1-2 x 32-256, batch 512) per run; resident memory of the whole process tree.", "",
        f"| process | trials | after trial {FIRST_TRIAL} | at the end | peak | growth per trial (least squares, trials {FIRST_TRIAL} "
        f"to {args.trials - 1}) |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        label = f"recycled every {run['recycle_every']} trials (default)" if run["recycle_every"] else "never recycled (before)"
        slope, stderr = run["growth_slope_mib_per_trial"], run["growth_slope_stderr"]
        growth = f"{slope:+.3f} ± {stderr:.3f} MiB" if slope is not None else "-"
        lines.append(f"| {label} | {run['trials']} | {run['rss_after_10_mib']:.0f} MiB | {run['rss_at_end_mib']:.0f} MiB | "
                     f"{run['peak_rss_mib']:.0f} MiB | {growth} |")
    lines += ["", "![memory](memory.png)"]
    publish("memory", result, lines)


if __name__ == "__main__":
    main()
