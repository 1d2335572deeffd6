"""Test hosts: Linux network namespaces on one private subnet, each process with its own hostname.

A `Network` is a switch (a bridge in a namespace of its own) and hosts plugged into it by veth pairs, on
SUBNET, which exists only inside these namespaces. A host runs processes under `ip netns exec`, each in a
fresh UTS namespace with the host's name as its hostname, so that a sweep on it sees another machine: another
address, another hostname. A host's cable can be pulled (`unplug`: its switch port goes down) and all its
processes frozen (`freeze`: SIGSTOP) or thawed. `Network.close` kills every process left in its namespaces,
frozen or cut off ones too, and deletes the namespaces. Needs root; `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

# A private /24 that only the test's own namespaces route: nothing outside the machine is reached.
SUBNET = "10.213.7"


def unavailable() -> str | None:
    """Why test hosts cannot be made here (not root, no `ip` or `unshare`), else None."""
    if os.geteuid() != 0:
        return "test hosts are network namespaces: run the tests as root (CI does)"
    missing = [tool for tool in ("ip", "unshare", "runuser") if shutil.which(tool) is None]
    if missing:
        return f"test hosts need {', '.join(missing)} (iproute2, util-linux)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    """One machine of the network: a namespace, its address on SUBNET and its hostname."""

    namespace: str
    address: str
    hostname: str
    port: str  # its veth end on the switch
    switch: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run on this host: in its network namespace, under its own hostname."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *map(str, argv)]

    def popen(self, argv: Sequence[str], **options) -> subprocess.Popen:
        """Start `argv` on this host (output captured as text unless `options` say otherwise)."""
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, **options}
        process = subprocess.Popen(self.command(argv), **options)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], **options) -> subprocess.CompletedProcess:
        """Run `argv` on this host to its end; raise on a non-zero exit, with its output."""
        done = subprocess.run(self.command(argv), capture_output=True, text=True, **options)
        if done.returncode:
            raise RuntimeError(f"{' '.join(map(str, argv))} on {self.hostname}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        listed = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True).stdout
        return [int(pid) for pid in listed.split()]

    def signal_all(self, signum: int) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def freeze(self) -> None:
        """Stop every process of the host (SIGSTOP): alive, but silent, as a frozen machine."""
        self.signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal_all(signal.SIGCONT)

    def unplug(self) -> None:
        """Pull the host's cable: its switch port goes down, and nothing it sends arrives."""
        _ip("-n", self.switch, "link", "set", self.port, "down")

    def plug(self) -> None:
        _ip("-n", self.switch, "link", "set", self.port, "up")


class Network:
    """A switch and the hosts plugged into it; a context manager that leaves nothing behind."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]  # namespace and link names unique to this network
        self.switch = f"sw-{self.tag}"
        self.hosts: list[Host] = []
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add(self, name: str, number: int) -> Host:
        """A host called `name` at SUBNET.`number`, plugged in."""
        namespace, inside, port = f"{name}-{self.tag}", f"h{self.tag}{number}", f"s{self.tag}{number}"
        host = Host(namespace, f"{SUBNET}.{number}", name, port, self.switch)
        _ip("netns", "add", namespace)
        self.hosts.append(host)  # from here on, close() deletes it
        _ip("link", "add", inside, "type", "veth", "peer", "name", port)
        _ip("link", "set", inside, "netns", namespace)
        _ip("link", "set", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", namespace, "link", "set", inside, "name", "eth0")
        _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        """Kill every process left on the hosts (thawed first, so that they can die) and delete the namespaces."""
        for host in self.hosts:
            host.thaw()
            host.signal_all(signal.SIGKILL)
        for host in self.hosts:
            for process in host.processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + 10
        while any(host.pids() for host in self.hosts) and time.monotonic() < deadline:
            time.sleep(0.1)
        for namespace in [host.namespace for host in self.hosts] + [self.switch]:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)

    def leftovers(self) -> list[str]:
        """This network's namespaces and links still on the machine: none once it is closed. Only its own (by
        its tag), so that tests running networks side by side, in other processes, each check their own."""
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        names = namespaces() + [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.count(":") >= 2]
        return [name for name in names if self.tag in name]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def namespaces() -> list[str]:
    """Every network namespace on the machine."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]
