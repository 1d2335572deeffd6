"""Every headline figure, rerun on one version of the code, resumable: `python bench/run.py all --data-dir D`.

    python bench/run.py list                           # each cell: fresh, stale (ran on other code) or not run
    python bench/run.py all --data-dir ../shared/datasets/mnist            # every cell not fresh, then summaries
    python bench/run.py all --data-dir ../shared/datasets/mnist --only coverage   # one bench's cells

A cell is one invocation of a bench script (one method x seed, one condition, ...). Its protocol (seeds,
budgets, study files, repeats) is fixed in that script; the table below only lists the invocations. The run
keeps a ledger, bench/results/run.json: for each cell, the commit and code hash it ran on, the machine, the
command, and its start and end. A cell is fresh when it ran on the current code hash (`common.code_hash`: the
contents of mnist_core/, sweep/ with the study files, bench/ without its results, and pyproject.toml), so a
change to any of them makes every cell stale, and a commit that adds only results does not. A stopped run
picks up at the first cell that is not fresh, and a cell that fails stops it: a bench's summary, its last cell,
runs only after all its other cells ran on the same code, so no summary mixes stale and fresh cells. It refuses
a tree that differs from its commit outside bench/results/.

The table holds the headline cells whose protocols are settled: the map's coverage, both ends of the front,
memory, the cost model and the overhead. The search comparison (bench/peers.py) and the machine profiles
(bench/machines.py) join it once theirs are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, clean_tree, code_hash, commit, machine

LEDGER = Path("bench") / "results" / "run.json"


@dataclass(frozen=True)
class Cell:
    """One invocation of a bench script: `argv` after `python`, plus `--data-dir` when it reads MNIST."""

    name: str  # BENCH/what, e.g. coverage/map/12
    argv: tuple[str, ...]
    minutes: float  # about how long it takes on a 2-core CPU, to plan sessions by
    data: bool = True

    @property
    def bench(self) -> str:
        return self.name.split("/", 1)[0]


def _coverage() -> list[Cell]:
    from coverage import PLAIN, SEEDS, SHIPPED, TODAY

    minutes = {SHIPPED: 30, TODAY: 8, PLAIN: 45}
    return [Cell("coverage/seed-model", ("bench/coverage.py", "cell", "seed-model"), 15),
            Cell("coverage/accuracy-winner", ("bench/coverage.py", "cell", "accuracy-winner"), 16),
            *[Cell(f"coverage/{method}/{seed}", ("bench/coverage.py", "cell", method, "--seed", str(seed)), minutes[method])
              for method in (SHIPPED, TODAY, PLAIN) for seed in SEEDS[method]],
            Cell("coverage/summary", ("bench/coverage.py", "summary"), 1, data=False)]


def _frontier() -> list[Cell]:
    # The fast end's time limit is the seed model's time measured in the same run: `seed` first.
    return [*[Cell(f"frontier/{cell}", ("bench/frontier.py", cell), minutes) for cell, minutes in
              (("seed", 15), ("top", 65), ("plain", 65), ("fast", 65))],
            Cell("frontier/chart", ("bench/frontier.py", "chart"), 1)]


def _single() -> list[Cell]:
    return [Cell("memory", ("bench/memory.py", "--trials", "100"), 40),
            Cell("costmodel", ("bench/costmodel.py", "--minutes", "20"), 25),
            Cell("overhead", ("bench/overhead.py",), 10)]


def cells() -> list[Cell]:
    """Every headline cell, in the order they run."""
    return [*_coverage(), *_frontier(), *_single()]


@dataclass
class Ledger:
    path: Path
    entries: dict[str, dict]

    @classmethod
    def read(cls, root: Path) -> Ledger:
        path = root / LEDGER
        return cls(path, json.loads(path.read_text()) if path.exists() else {})

    def record(self, cell: Cell, entry: dict) -> None:
        """Written after each cell, so a run stopped at any point keeps every cell it finished."""
        self.entries[cell.name] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def state(self, cell: Cell, code: str) -> str:
        entry = self.entries.get(cell.name)
        if entry is None:
            return "not run"
        return "fresh" if entry["code"] == code else f"stale (ran at {entry['commit']})"


def run_cell(cell: Cell, data_dir: str | None, root: Path) -> tuple[int, dict]:
    args = [*cell.argv, *(["--data-dir", data_dir] if cell.data else [])]
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    done = subprocess.run([sys.executable, *args], cwd=root)
    return done.returncode, {"command": " ".join(["python", *args]),
                             "started": started, "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_all(table: list[Cell], data_dir: str | None, root: Path) -> int:
    if not clean_tree(root):
        print("bench/run.py: the tree differs from its commit outside bench/results/; commit or stash first, so that "
              "every figure names the code that made it", file=sys.stderr)
        return 2
    if data_dir is None and any(c.data for c in table):
        print("bench/run.py: pass --data-dir with real MNIST (../shared/datasets/mnist)", file=sys.stderr)
        return 2
    code, ledger = code_hash(root), Ledger.read(root)
    todo = [c for c in table if ledger.state(c, code) != "fresh"]
    print(f"{len(table) - len(todo)} of {len(table)} cells fresh at {commit(root)}; "
          f"{len(todo)} to run, about {sum(c.minutes for c in todo) / 60:.1f} h", flush=True)
    for number, cell in enumerate(todo, start=1):
        print(f"[{number}/{len(todo)}] {cell.name} (about {cell.minutes:g} min)", flush=True)
        returncode, entry = run_cell(cell, data_dir, root)
        if returncode:
            print(f"bench/run.py: {cell.name} failed (exit {returncode}); fix it and run again: the cells done so far "
                  "are kept", file=sys.stderr)
            return 1
        ledger.record(cell, {**entry, "commit": commit(root), "code": code, "machine": machine()})
    return 0


def list_cells(table: list[Cell], root: Path) -> int:
    code, ledger = code_hash(root), Ledger.read(root)
    for cell in table:
        entry = ledger.entries.get(cell.name, {})
        where = f"  {entry['machine']}, {entry['ended']}" if entry else ""
        print(f"{cell.name:32s} {ledger.state(cell, code):28s}{where}")
    return 0


def main(argv: list[str] | None = None, table: list[Cell] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="each cell: fresh, stale or not run")
    run = commands.add_parser("all", help="run every cell that is not fresh, then the summaries")
    run.add_argument("--data-dir", help="real MNIST (the four IDX files)")
    run.add_argument("--only", help="one bench's cells (coverage, frontier, memory, ...)")
    args = parser.parse_args(argv)
    table = cells() if table is None else table
    if args.command == "list":
        return list_cells(table, root)
    if args.only:
        benches = sorted({c.bench for c in table})
        table = [c for c in table if c.bench == args.only]
        if not table:
            parser.error(f"--only {args.only}: no such bench; choose from {', '.join(benches)}")
    return run_all(table, args.data_dir, root)


if __name__ == "__main__":
    sys.exit(main())
