"""How fast loading MNIST fails with no network and no local data (target: under 10 s).

Times the loader alone and the whole `python -m sweep run` command, with an empty HOME so no
tensorflow-datasets cache can be found. Run it on a machine without internet access.
Writes bench/results/offline.md.

Usage: python bench/offline.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    home = tempfile.mkdtemp(prefix="offline-home-")
    env = {**os.environ, "HOME": home, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MNIST_DATA_DIR", None)
    loader = (
        "import time; from mnist_core.data import DataError, resolve_source\n"
        "t = time.perf_counter()\n"
        "try:\n    resolve_source().read('train')\nexcept DataError as e:\n    print(f'{time.perf_counter() - t:.2f}'); print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", loader], env=env, capture_output=True, text=True)
    loader_seconds, message = done.stdout.splitlines()[:2]
    started = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "sweep", "run", "--trials", "1", "--store", f"{home}/mlruns"],
                         env=env, capture_output=True, text=True)
    cli_seconds = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "offline.md").write_text(
        f"# Offline, no local data\n\nCommand: `python bench/offline.py`  \nDate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n"
        f"| what | seconds | exit code |\n|---|---|---|\n"
        f"| loader alone (`resolve_source().read('train')`) | {float(loader_seconds):.2f} | - |\n"
        f"| `python -m sweep run --trials 1` (imports included) | {cli_seconds:.2f} | {cli.returncode} |\n\n"
        f"Message:\n\n```\n{cli.stderr.strip().splitlines()[-1]}\n```\n"
    )
    print((RESULTS / "offline.md").read_text())


if __name__ == "__main__":
    main()
