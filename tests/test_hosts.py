"""Several machines for real: a server host, worker hosts and an outsider as Linux network namespaces on a
private subnet, each with its own address and hostname (`sweep/testing/hosts.py`).

The server host is set up once for the module by the README's own commands (`deploy/sweep-server start`,
PostgreSQL and MLflow's basic-auth app), and the workers run the README's worker commands, with its
variables. Each fault ends with what a user relies on: exact totals, nothing RUNNING in Optuna or MLflow, a
lost trial's configuration trained once more. What the test process asks of the services it asks from a
worker host, the only place PostgreSQL admits.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from sweep.testing.hosts import SUBNET, Host, Network, unavailable
from sweep.testing.stores import ROOT, study_text
from sweep.workers import CLOCK_OFFSET_ENV, STALE_ENV

SERVER, WORKERS_SUBNET = f"{SUBNET}.1", f"{SUBNET}.16/28"
# The README's example addresses and folders, and what they stand for on the test hosts.
DOCUMENTED = {"10.0.0.5": SERVER, "10.0.0.16/28": WORKERS_SUBNET}
STALE = "4"  # seconds: a lost trial is recovered in seconds, not minutes
SLOW = {"epochs": "{ low = 24, high = 28 }"}  # trials of a few seconds: a fault lands while one trains


def readme_block() -> list[str]:
    """The commands of the README's several-machines block, without comments."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Crashes, parallel workers and several machines"):]
    block = section[section.index("```bash\n") + len("```bash\n"):section.index("```\n", section.index("```bash\n") + 8)]
    return [line.split("   #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _postgres_missing() -> str | None:
    return None if glob.glob("/usr/lib/postgresql/*/bin/postgres") else "needs PostgreSQL: apt-get install postgresql"


class Sweep:
    """`python -m sweep run` on a worker host, as the README runs it; its output read as it comes."""

    def __init__(self, host: Host, argv: list[str], env: dict[str, str]):
        self.host, self.lines = host, []
        self.process = host.popen(argv, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, after: int = 0, seconds: float = 240) -> re.Match:
        """The first line from the `after`-th on that matches `pattern`, once it comes."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"{self.host.hostname}'s sweep ended before {pattern!r}:\n{self.output[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} from {self.host.hostname} in {seconds} s:\n{self.output[-3000:]}")

    def finish(self, seconds: float = 600) -> str:
        self.process.wait(timeout=seconds)
        self._reader.join(timeout=10)
        assert self.process.returncode == 0, f"{self.host.hostname}: exit {self.process.returncode}\n{self.output[-3000:]}"
        return self.output


# Run on a worker host with the README's variables: the study and its MLflow runs, checked through the real
# clients (`check_consistent`), and dumped for the test's own checks.
INSPECT = """
import json, os, sys
import optuna
from mlflow.tracking import MlflowClient
from sweep.testing.stores import check_consistent

name, finished = sys.argv[1], int(sys.argv[2])
study = optuna.load_study(study_name=name, storage=os.environ["SWEEP_STORAGE"])
client = MlflowClient()
runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
check_consistent(study, runs, finished)
manifests = [open(client.download_artifacts(r.info.run_id, "manifest.json")).read() for r in runs
             if any(a.path == "manifest.json" for a in client.list_artifacts(r.info.run_id))]
print(json.dumps({
    "study_attrs": study.user_attrs,
    "trials": [{"number": t.number, "state": t.state.name, "params": t.params, "attrs": {**t.user_attrs, **t.system_attrs}}
               for t in study.trials],
    "runs": [{"status": r.info.status, "params": r.data.params, "tags": r.data.tags} for r in runs],
    "manifests": manifests,
}, default=str))
"""


class Site:
    """The server host set up by the README's commands, its worker hosts and an outsider."""

    def __init__(self, network: Network, directory: Path, idx_dir: Path):
        self.network, self.directory, self.idx_dir = network, directory, idx_dir
        self.server = network.add("server", 1)
        self.workers = [network.add(f"worker-{letter}", 17 + i) for i, letter in enumerate("ab")]
        self.outsider = network.add("outsider", 100)  # on the subnet, outside the workers' range
        self.start, self.add_worker, *self.exports, self.run_line = readme_block()
        self.server.run(["bash", "-c", f"cd {ROOT} && {self.documented(self.start)}"], timeout=300)

    def documented(self, line: str, study: str = "") -> str:
        """A README line with the test site's addresses, folder and study."""
        for example, here in {**DOCUMENTED, "/srv/mnist-sweep": str(self.directory)}.items():
            line = line.replace(example, here)
        return line.replace("--study map", f"--study {study}") if study else line

    def study(self, tmp_path: Path, **values: str) -> tuple[str, Path]:
        """A fresh tiny study on the site, and the worker user granted EDIT on it (`add-worker`)."""
        name = f"tiny-{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.toml"
        path.write_text(study_text(name, **values))
        self.server.run(["bash", "-c", f"cd {ROOT} && {self.documented(self.add_worker, name)}"], timeout=120)
        return name, path

    def home(self, host: Host) -> Path:
        """The worker host's folder, holding the two password files copied from the server, as the README says."""
        home = self.directory / f"home-{host.hostname}"
        if not home.exists():
            home.mkdir(mode=0o700)
            for name in ("sweep", "worker"):
                shutil.copy(self.directory / "secrets" / f"{name}.password", home / f"{name}.password")
                (home / f"{name}.password").chmod(0o600)
        return home

    def env(self, **extra: str) -> dict[str, str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SWEEP_", "MLFLOW_", "PG"))}
        return {**clean, "PYTHONUNBUFFERED": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", STALE_ENV: STALE, **extra}

    def shell(self, host: Host, command: str) -> list[str]:
        """`command` after the README's exports, in the host's folder."""
        exports = " && ".join(self.documented(line) for line in self.exports)
        return ["bash", "-c", f"cd {self.home(host)} && {exports} && {command}"]

    def sweep(self, host: Host, name: str, path: Path, trials: int, **extra_env: str) -> Sweep:
        """The README's `python -m sweep run`, for this study, with a line per epoch to follow it by."""
        line = self.documented(self.run_line).replace("python ", f"{sys.executable} ", 1)
        line = line.replace("--trials 200", f"--study {path} --name {name} --trials {trials} --epoch-lines 0")
        return Sweep(host, self.shell(host, f"exec {line.replace('/data/mnist', str(self.idx_dir))}"), self.env(**extra_env))

    def inspect(self, name: str, finished: int) -> dict:
        script = self.directory / "check_study.py"
        script.write_text(INSPECT)
        done = self.workers[-1].run(self.shell(self.workers[-1], f"exec {sys.executable} {script} {name} {finished}"),
                                    env=self.env(), timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def secrets(self) -> dict[str, str]:
        return {p.stem: p.read_text().strip() for p in (self.directory / "secrets").glob("*.password")}


@pytest.fixture(scope="module")
def site(idx_dir):
    if reason := unavailable() or _postgres_missing():
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="mnist-sweep-server-"))
    directory.chmod(0o755)  # the postgres user runs its cluster inside
    network = Network()
    try:
        yield Site(network, directory, idx_dir)
    finally:
        if network.hosts:  # the server host: stop its services before its namespace goes
            subprocess.run(network.hosts[0].command([ROOT / "deploy/sweep-server", "stop", "--dir", directory]),
                           capture_output=True, timeout=120)
        network.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert not network.leftovers(), f"a test host was left behind: {network.leftovers()}"


def test_a_network_checks_its_own_leftovers_not_those_of_networks_beside_it():
    # Tests in other xdist workers build networks at the same time: a machine-wide before/after comparison of
    # namespaces would blame one test for another's hosts.
    if reason := unavailable():
        pytest.skip(reason)
    with Network() as mine, Network() as other:
        mine.add("probe", 9)
        other.add("probe", 9)
        assert sorted(mine.leftovers()) == sorted([f"probe-{mine.tag}", mine.switch])  # the veth pair is inside them
        mine.close()
        assert mine.leftovers() == [] and sorted(other.leftovers()) == sorted([f"probe-{other.tag}", other.switch])
    assert other.leftovers() == []


def retried_once(facts: dict, victim: int, reason: str) -> None:
    trials = {t["number"]: t for t in facts["trials"]}
    assert trials[victim]["state"] == "FAIL" and trials[victim]["attrs"]["reason"].startswith(reason), trials[victim]
    (retry,) = [t for t in trials.values() if t["attrs"].get("retry_of") == victim]
    assert retry["params"] == trials[victim]["params"] and retry["state"] in ("COMPLETE", "PRUNED")


def test_the_readme_setup_runs_two_workers_behind_locked_doors(site, tmp_path):
    name, path = site.study(tmp_path)
    sweeps = [site.sweep(host, name, path, trials=4) for host in site.workers]
    outputs = [s.finish() for s in sweeps]
    facts = site.inspect(name, finished=4)
    hosts = {t["attrs"].get("host") for t in facts["trials"] if t["state"] in ("COMPLETE", "PRUNED")}
    assert hosts == {"worker-a", "worker-b"}  # two machines, each under its own name, shared the study

    # The tracking server refuses a request without the right password; the worker's own login works.
    url = f"http://{SERVER}:5000/api/2.0/mlflow/experiments/search?max_results=5"
    worker = site.workers[0]
    codes = [worker.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", *auth, url]).stdout
             for auth in ([], ["-u", "worker:wrong"], ["-u", f"worker:{site.secrets()['worker']}"])]
    assert codes[0] in ("401", "403") and codes[1] in ("401", "403") and codes[2] == "200", codes
    # PostgreSQL admits the workers' subnet only, even with the right password.
    connect = f"import os, psycopg; psycopg.connect(host='{SERVER}', user='sweep', dbname='sweep_optuna', connect_timeout=10).close()"
    env = {**site.env(), "PGPASSWORD": site.secrets()["sweep"]}
    worker.run([sys.executable, "-c", connect], env=env, timeout=60)
    refused = subprocess.run(site.outsider.command([sys.executable, "-c", connect]), env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.stderr, refused.stderr[-2000:]

    # No password anywhere a user or a log would see it.
    shown = "\n".join([*outputs, json.dumps(facts)] + [p.read_text(errors="replace") for s in sweeps
                                                        for p in site.home(s.host).rglob("*") if p.is_file() and p.suffix != ".password"])
    for secret_name, secret in site.secrets().items():
        assert secret not in shown, f"the {secret_name} password is visible"


def test_a_worker_cut_off_mid_trial_loses_it_to_another_after_the_stale_interval(site, tmp_path):
    name, path = site.study(tmp_path, **SLOW)
    cut, other = site.workers
    lost = site.sweep(cut, name, path, trials=3)
    victim = int(lost.wait_line(r"^trial (\d+) epoch 2/")[1])
    cut.unplug()  # and it stays unplugged: the process hangs on its connections until it is killed
    try:
        out = site.sweep(other, name, path, trials=3).finish()
        assert f"trial {victim:4d} FAIL     (worker died: no heartbeat from worker-a for" in out, out
        retried_once(site.inspect(name, finished=3), victim, "worker died: no heartbeat from worker-a")
    finally:
        cut.signal_all(signal.SIGKILL)
        cut.plug()


def test_a_frozen_worker_host_loses_its_trial_and_drops_its_late_result(site, tmp_path):
    name, path = site.study(tmp_path, **SLOW)
    frozen_host, other = site.workers
    frozen = site.sweep(frozen_host, name, path, trials=3)
    victim = int(frozen.wait_line(r"^trial (\d+) epoch 2/")[1])
    frozen_host.freeze()
    try:
        out = site.sweep(other, name, path, trials=3).finish()
    finally:
        frozen_host.thaw()
    assert f"trial {victim:4d} FAIL     (worker died: no heartbeat from worker-a" in out, out
    late = frozen.finish()
    assert late.count(f"trial {victim:4d} dropped") == 1 and "Traceback" not in late, late
    retried_once(site.inspect(name, finished=3), victim, "worker died: no heartbeat from worker-a")


def test_workers_wait_out_restarts_of_postgresql_and_of_the_tracking_server(site, tmp_path):
    name, path = site.study(tmp_path, **SLOW)
    sweeps = [site.sweep(host, name, path, trials=4) for host in site.workers]
    for s in sweeps:
        s.wait_line(r"^trial \d+ epoch 2/")
    for service in ("postgres", "mlflow"):
        seen = [len(s.lines) for s in sweeps]
        site.server.run([str(ROOT / "deploy/sweep-server"), "restart", service, "--dir", str(site.directory)], timeout=180)
        for s, count in zip(sweeps, seen):  # each goes on training after the restart
            s.wait_line(r"^trial \d+ epoch", after=count)
    outputs = [s.finish() for s in sweeps]
    facts = site.inspect(name, finished=4)
    assert not [t for t in facts["trials"] if t["state"] == "FAIL"], outputs  # nothing lost, nothing retried


def test_a_worker_whose_clock_is_minutes_off_keeps_its_trials(site, tmp_path):
    name, path = site.study(tmp_path, **SLOW)
    behind, other = site.workers
    sweeps = [site.sweep(behind, name, path, trials=4, **{CLOCK_OFFSET_ENV: "-300"}), site.sweep(other, name, path, trials=4)]
    outputs = [s.finish() for s in sweeps]
    assert not any("worker died" in out for out in outputs), outputs
    facts = site.inspect(name, finished=4)
    assert not [t for t in facts["trials"] if t["state"] == "FAIL"]
    assert {t["attrs"]["host"] for t in facts["trials"]} == {"worker-a", "worker-b"}
