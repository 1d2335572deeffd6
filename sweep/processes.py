"""Process handling: signals that stop a sweep, and servers that stop with the command that started them.

Ctrl-C and SIGTERM set `STOP` and raise KeyboardInterrupt; long loops also check `STOP`, since the
exception can be swallowed when the signal lands in a finalizer ("Exception ignored in ...").
A server (`sweep ui`) runs in its own process group, so stopping it stops its workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterator, NoReturn, Sequence

STOP = threading.Event()
# How long a stopped server may take to exit before its process group is killed.
GRACE_SECONDS = 10.0


def _stop(signum, frame) -> None:
    STOP.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt here (SIGTERM would otherwise end Python at once)."""
    STOP.clear()
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_stop() -> None:
    if STOP.is_set():
        raise KeyboardInterrupt


def as_interrupt(exc: BaseException) -> BaseException:
    """The exception to act on: once Ctrl-C or SIGTERM has set `STOP`, whatever was raised is that interrupt.
    A signal that lands inside C code can surface as another exception (a SystemError from CPython's list
    code was seen in CI), which must not read as the trial's own failure."""
    if STOP.is_set() and not isinstance(exc, KeyboardInterrupt):
        interrupt = KeyboardInterrupt()
        interrupt.__cause__ = exc
        return interrupt
    return exc


def alive(pid: int, group: bool = False) -> bool:
    """Whether process `pid` (with `group`: any member of process group `pid`) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # owned by another user: still there
        return True
    return True


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the process group `process` leads, then SIGKILL to whatever outlives `grace` seconds."""
    pgid = process.pid  # started with start_new_session: it leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)
    while alive(pgid, group=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()


def serve(argv: Sequence[str]) -> int:
    """Run the server `argv` until it exits, or until Ctrl-C / SIGTERM; either way none of it is left running."""
    with interruptible():
        process = subprocess.Popen(list(argv), start_new_session=True)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
            stop_group(process)


def restart(environment: dict[str, str]) -> NoReturn:
    """Replace this process by a fresh run of the same command line, with `environment` added.

    Same pid, same command: to the user, the journal and the other workers it is the same sweep, and a
    kill -9 or SIGTERM reaches it as before; everything the old image held (TensorFlow's graphs) is gone.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **environment})
