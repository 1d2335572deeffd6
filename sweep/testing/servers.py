"""Servers the tests start for real: a free port, the processes below one, and what answers over HTTP."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import time
import urllib.request
from pathlib import Path

from sweep.testing.stores import sweep_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # it ended meanwhile
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


def get_json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def announced_link(process) -> str:
    """The URL a `sweep ui` / `sweep dashboard` process prints first ("... open URL" or "... on URL")."""
    for line in process.stdout:
        found = re.search(r"(?:open|on) (http://\S+)", line)
        if found:
            return found.group(1)
    raise AssertionError("the server ended without announcing its URL")


@contextlib.contextmanager
def serving(*argv, ready: str, stop: signal.Signals = signal.SIGTERM, seconds: float = 120):
    """`python -m sweep ARGV` as a real server: yields (process, announced URL) once `ready` answers; then
    `stop` is sent and nothing it started may be left running."""
    process = sweep_process(*argv)
    started = {process.pid}
    try:
        link = announced_link(process)
        deadline = time.time() + seconds
        while True:
            try:
                urllib.request.urlopen(ready, timeout=5).close()
                break
            except OSError:
                assert process.poll() is None, "the server ended before it answered"
                assert time.time() < deadline, f"{ready} did not answer within {seconds} s"
                time.sleep(0.5)
        started |= descendants(process.pid)
        yield process, link
    finally:
        process.send_signal(stop)
        process.communicate(timeout=60)
    time.sleep(0.5)
    assert not [pid for pid in started if alive(pid)], "processes left running"
