"""`sweep ui` as a user runs it: a real server on the store, and nothing left running after Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import socket

import pytest

from sweep.testing.servers import descendants, free_port, get_json, serving


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_ui_serves_the_store_and_leaves_nothing_behind(tmp_path, stop):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serving("ui", "--store", tmp_path / "store", "--port", port, ready=f"{base}/health", stop=stop) as (process, link):
        experiments = get_json(f"{base}/ajax-api/2.0/mlflow/experiments/search", {"max_results": 10})
        assert [e["name"] for e in experiments["experiments"]] == ["Default"]
        assert (tmp_path / "store" / "mlflow.db").is_file()  # the server is on this store
        assert link == base  # no study yet: the front page
        assert descendants(process.pid), "mlflow ui runs as child processes"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
