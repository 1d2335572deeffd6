"""`sweep ui` as a user runs it: a real server on the store, and nothing left running after Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.stores import sweep_process


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


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_ui_serves_the_store_and_leaves_nothing_behind(tmp_path, stop):
    port = free_port()
    process = sweep_process("ui", "--store", tmp_path / "store", "--port", port)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            experiments = get_json(f"{base}/ajax-api/2.0/mlflow/experiments/search", {"max_results": 10})
            break
        except OSError:
            assert process.poll() is None, process.stdout.read()
            assert time.time() < deadline, "the UI did not answer within 120 s"
            time.sleep(0.5)
    assert [e["name"] for e in experiments["experiments"]] == ["Default"]
    assert (tmp_path / "store" / "mlflow.db").is_file()  # the server is on this store
    started = descendants(process.pid)
    assert started, "mlflow ui runs as a child process"

    process.send_signal(stop)
    process.communicate(timeout=60)
    time.sleep(0.5)
    assert not [pid for pid in started if alive(pid)], "processes left running"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
