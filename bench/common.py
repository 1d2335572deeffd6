"""What the benches share: where results go, which commit measured them, and the tests' helpers on the path.

Benches run as scripts from the project root (`python bench/NAME.py`), so this folder is on `sys.path`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the tests' helpers (tests/stores.py) serve the benches too


def commit() -> str:
    """The short commit being measured."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def publish(name: str, result: dict, lines: list[str]) -> None:
    """bench/results/NAME.json (the figures) and NAME.md (`lines`), and the markdown on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
