"""The machine a process trains on, measured: what arithmetic, memory traffic and fixed costs take here.

    step seconds = batch_us + layer_us x layers + sum over layers of the layer's FLOPs / rate(its product's size)
                   + optimizer bytes per step / gbps (+ augment_us per image moved)    and each traced call adds call_us

A small net's step is its fixed costs (kernel launches, the loop, per-variable updates); a large one's is
its matrix products and then the optimizer's pass over every parameter, in that order, so the terms add up.
The same study run on two machines, or on one machine shared by two workers, differs by these rates and not
alike for every net: no single factor converts one's seconds to the other's, a profile can
(`mnist_core/work.py` counts the work). Matrix throughput is measured at several product sizes, as more threads
speed large products up and can slow small ones down (bench/results/machines.md).

Each process measures its machine once (`current()`, a few seconds), or reads a fresh copy cached under
`cache_dir()` for the same host, CPU, CPU affinity and quota, thread counts, TensorFlow version and device. A test
pins a profile with the environment variable MNIST_SWEEP_PROFILE (a JSON file), measuring nothing.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mnist_core.work import Work

log = logging.getLogger(__name__)

PIN_ENV = "MNIST_SWEEP_PROFILE"
CACHE_ENV = "MNIST_SWEEP_CACHE"
# A cached profile older than this is measured again: the same host may have been resized or upgraded.
MAX_AGE_SECONDS = 7 * 24 * 3600
# Of the profile's fields and how they are measured: a cached profile of another version is measured again.
VERSION = 3


@dataclass(frozen=True)
class MachineProfile:
    """Measured rates and fixed costs of one machine (as one process sees it: its cores and threads)."""

    gflops: float  # matrix products of dense layers, GFLOP/s: the best of `gflops_by_size` (the roofline's ceiling)
    gbps: float  # an optimizer update's stream over parameters and slots, GB/s
    call_us: float  # one traced call (an execution of several batches)
    batch_us: float  # one batch of a one-layer net inside a traced call: gather, step, update, sums
    layer_us: float  # each further layer's share of a batch's fixed cost
    augment_us: float  # moving (augmenting) one training image
    cpu: str
    cores: tuple[int, ...]  # the CPUs this process may run on
    threads: int  # TensorFlow's intra-op threads
    cpu_quota: float | None = None  # CPUs' worth of time its cgroup allows, if it is limited
    gpu: str | None = None
    gpu_memory_mib: int | None = None
    tensorflow: str = ""
    host: str = ""
    measured: str = ""  # UTC, ISO 8601
    version: int = VERSION
    source: str = "measured"  # measured, cached, pinned or nominal (the fallback constants)
    # GFLOP/s at each of RATE_SHAPES, smallest first; none: `gflops` at every size
    gflops_by_size: tuple[float, ...] = ()

    def rate(self, size: int) -> float:
        """GFLOP/s of a dense layer's products of `size` multiply-adds (batch x inputs x outputs): interpolated in
        log size between the measured ones, the nearest beyond them."""
        if not self.gflops_by_size:
            return self.gflops
        return float(np.interp(math.log(size), RATE_LOG_SIZES, self.gflops_by_size))

    def _compute_seconds_per_step(self, work: Work) -> float:
        steps_flops = (f * work.examples / work.steps_per_epoch for f in work.layer_flops)
        return sum(f / (self.rate(size) * 1e9) for f, size in zip(steps_flops, work.product_sizes, strict=True))

    def epoch_terms(self, work: Work, calls: int) -> tuple[float, float, float, float]:
        """Seconds of one epoch of `work` in `calls` traced calls, by term: fixed costs (calls, batches and
        their layers), matrix products, the optimizer's stream, moving the images."""
        steps = work.steps_per_epoch
        fixed = calls * self.call_us + steps * (self.batch_us + self.layer_us * (work.layers - 1))
        return (fixed * 1e-6, steps * self._compute_seconds_per_step(work), work.optimizer_bytes(1) / (self.gbps * 1e9),
                work.examples * self.augment_us * 1e-6 if work.augmented else 0.0)

    def step_seconds(self, work: Work) -> float:
        """Seconds of one batch of `work` inside a traced call."""
        return sum(self.epoch_terms(work, calls=0)) / work.steps_per_epoch

    def compute_seconds(self, work: Work, epochs: float) -> float:
        """Seconds of `epochs` epochs of `work`'s matrix products alone."""
        return work.steps_per_epoch * epochs * self._compute_seconds_per_step(work)

    @property
    def label(self) -> str:
        """One line naming the machine: CPU (or GPU), cores and threads (and a CPU quota)."""
        quota = f", {self.cpu_quota:.0%} CPU quota" if self.cpu_quota else ""
        return f"{self.gpu or self.cpu}, {len(self.cores)} core(s), {self.threads} thread(s){quota}"

    def fields(self) -> dict[str, Any]:
        """The profile as flat values, for user attrs, MLflow params and JSON."""
        values = dataclasses.asdict(self)
        values["cores"] = list(self.cores)
        values["gflops_by_size"] = list(self.gflops_by_size)
        return values

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> MachineProfile:
        """The profile `fields` wrote; ValueError if it is not one (foreign, corrupt or of another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict) or values.get("version") != VERSION or set(values) - names:
            raise ValueError("not a machine profile of this version")
        try:
            profile = cls(**{**values, "cores": tuple(values["cores"]), "gflops_by_size": tuple(values.get("gflops_by_size", ()))})
        except (TypeError, KeyError) as exc:
            raise ValueError(f"not a machine profile: {exc}") from None
        rates = (profile.gflops, profile.gbps, profile.call_us, profile.batch_us, profile.layer_us, profile.augment_us)
        if not all(isinstance(r, (int, float)) and r >= 0 for r in rates) or profile.gflops <= 0 or profile.gbps <= 0:
            raise ValueError("a machine profile with rates that are not positive numbers")
        by_size = profile.gflops_by_size
        if by_size and (len(by_size) != len(RATE_SHAPES) or not all(isinstance(r, (int, float)) and r > 0 for r in by_size)):
            raise ValueError(f"a machine profile whose gflops_by_size is not {len(RATE_SHAPES)} positive rates")
        return profile


def nominal(identity: dict[str, Any] | None = None) -> MachineProfile:
    """The fallback when nothing can be measured: rates of a 2-core CPU (bench/results/backends.md), erring fast."""
    return MachineProfile(gflops=100.0, gbps=10.0, call_us=100.0, batch_us=400.0, layer_us=100.0, augment_us=20.0,
                          **(identity or _identity()), source="nominal")


def _identity() -> dict[str, Any]:
    """What the profile's cache is keyed by: host, CPU, affinity, threads, TensorFlow and device."""
    import tensorflow as tf

    cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else tuple(range(os.cpu_count() or 1))
    intra = tf.config.threading.get_intra_op_parallelism_threads() or len(cores)
    gpus = tf.config.list_physical_devices("GPU")
    gpu, memory = None, None
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        gpu = details.get("device_name", gpus[0].name)
        memory = _gpu_memory_mib()
    return {"cpu": _cpu_model(), "cores": cores, "threads": intra, "cpu_quota": _cpu_quota(), "gpu": gpu,
            "gpu_memory_mib": memory, "tensorflow": tf.__version__, "host": socket.gethostname()}


def _cpu_quota() -> float | None:
    """CPUs' worth of time this process's cgroup allows (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), if it is limited."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                quota, period = (Path("/sys/fs/cgroup") / path.lstrip("/") / "cpu.max").read_text().split()
            elif "cpu" in controllers.split(","):
                folder = Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
                quota, period = ((folder / name).read_text().strip() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
            else:
                continue
            if quota not in ("max", "-1"):
                return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_memory_mib() -> int | None:
    """The first GPU's total memory, as its driver reports it (TensorFlow reports only what it uses)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def cache_dir() -> Path:
    """Where profiles are cached: $MNIST_SWEEP_CACHE, else $XDG_CACHE_HOME/mnist-sweep (~/.cache/mnist-sweep)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mnist-sweep"


def cache_path(identity: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps({**identity, "cores": list(identity["cores"])}, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"machine-{key}.json"


def _read(path: Path, identity: dict[str, Any]) -> MachineProfile | None:
    """The cached profile at `path` if it is fresh and of this machine; None (with one line) if it is not."""
    if not path.exists():
        return None
    try:
        profile = MachineProfile.from_fields(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        log.warning("machine profile %s is unreadable (%s): measuring again", path, exc)
        return None
    if any(getattr(profile, k) != v for k, v in identity.items()):
        log.warning("machine profile %s is of another machine (%s): measuring again", path, profile.label)
        return None
    age = time.time() - calendar.timegm(time.strptime(profile.measured, "%Y-%m-%dT%H:%M:%SZ"))
    if age > MAX_AGE_SECONDS:
        return None
    return dataclasses.replace(profile, source="cached")


def _write(path: Path, profile: MachineProfile) -> None:
    """Atomically: a process reading the cache sees a whole profile or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
        json.dump(profile.fields(), tmp, indent=1)
    os.replace(tmp.name, path)


def share(number: int, count: int, threads: int | None = None) -> tuple[int, ...]:
    """The CPUs worker `number` of `count` runs on: an equal share of this process's, `threads` each if given
    (wrapping round when they are more than there are)."""
    cores = sorted(os.sched_getaffinity(0))
    size = threads or max(len(cores) // count, 1)
    return tuple(cores[(number * size + i) % len(cores)] for i in range(size))


def pin(cores: tuple[int, ...], threads: int | None = None) -> None:
    """Run this process on `cores` with TensorFlow on `threads` threads (one per core by default): its trials'
    seconds then depend on its own share, not on what other workers do. Before TensorFlow runs anything."""
    import tensorflow as tf

    os.sched_setaffinity(0, cores)
    tf.config.threading.set_intra_op_parallelism_threads(threads or len(cores))
    tf.config.threading.set_inter_op_parallelism_threads(threads or len(cores))


_current: MachineProfile | None = None


def current() -> MachineProfile:
    """This process's profile: pinned, cached or measured once (then kept for the process)."""
    global _current
    if _current is None:
        _current = load()
    return _current


def load() -> MachineProfile:
    """The pinned profile (MNIST_SWEEP_PROFILE: its rates, and this process's identity where the file gives
    none), or a fresh cached one of this machine, or a new measurement (cached). A measurement that fails
    falls back to `nominal()` with one warning."""
    identity = _identity()
    if os.environ.get(PIN_ENV):  # rates pinned; what the file leaves out (the cores, ...) is this process's own
        path = Path(os.environ[PIN_ENV])
        try:
            return dataclasses.replace(MachineProfile.from_fields({**identity, **json.loads(path.read_text())}), source="pinned")
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{PIN_ENV}={path} is not a machine profile: {exc}") from None
    path = cache_path(identity)
    cached = _read(path, identity)
    if cached is not None:
        return cached
    try:
        profile = MachineProfile(**measure(), **identity, measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    except Exception as exc:  # a device error, an out-of-memory: the constants stand in, the run goes on
        log.warning("could not measure this machine (%s): using nominal rates", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return nominal(identity)
    try:
        _write(path, profile)
    except OSError as exc:
        log.warning("could not cache the machine profile in %s (%s)", path.parent, exc.strerror)
    return profile


def measure() -> dict[str, float]:
    """The rates and fixed costs of this process's machine, in a few seconds (see each part)."""
    from mnist_core.trainer import measure_overheads

    by_size = _gflops_by_size()
    return {"gflops": max(by_size), "gflops_by_size": by_size, "gbps": _gbps(), **measure_overheads()}


def median_seconds(fn: Callable[[], object], repeats: int = 3, span: float = 0.15) -> float:
    """Median seconds of one call of `fn` over `repeats` timings, each of as many calls as last `span` seconds.
    The first call traces; the second sizes the timings (sized by the first, a timing of a fast `fn` would
    last a few milliseconds, and its median would be noise). Neither is counted.

    Under a CPU quota a timing counts max(wall clock, the process's CPU time / quota): the quota hands out
    time per period (100 ms), so a short timing's wall clock depends on where it falls in its period (one
    starting with the period's time unspent ran at full speed), while the CPU time it took, its own and its
    helper threads', is what the quota divides over time."""
    quota = _cpu_quota()

    def elapsed(wall: float, cpu: float) -> float:
        seconds = time.perf_counter() - wall
        return max(seconds, (time.process_time() - cpu) / quota) if quota else seconds

    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    calls = max(1, math.ceil(span / max(elapsed(wall, cpu), 1e-6)))
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            fn()
        times.append(elapsed(wall, cpu) / calls)
    return sorted(times)[len(times) // 2]


# (batch, inputs, outputs) of the dense layers whose products `_gflops_by_size` times, smallest first: from a
# narrow first layer to the seed's hidden layers. More threads can run the small products slower while they
# speed the large ones up (the small nets' raw ratios in bench/results/machines.md): one rate cannot stand for both.
RATE_SHAPES = ((128, 784, 64), (128, 512, 512), (128, 1024, 1024), (100, 2000, 2000))
RATE_LOG_SIZES = tuple(math.log(b * i * o) for b, i, o in RATE_SHAPES)


def _gflops_by_size() -> tuple[float, ...]:
    """GFLOP/s of a dense layer's products at each of RATE_SHAPES: forward, the weights' and the input's
    gradients. Every product has operands of its own: TensorFlow computes repeated identical products once."""
    import tensorflow as tf

    def rate(b: int, i: int, o: int) -> float:
        x, w, g = (tf.random.normal(s) for s in ((b, i), (i, o), (b, o)))

        @tf.function(autograph=False)
        def products():
            return (tf.reduce_sum(tf.matmul(x, w)) + tf.reduce_sum(tf.matmul(x, g, transpose_a=True))
                    + tf.reduce_sum(tf.matmul(g, w, transpose_b=True)))

        return 3 * 2 * b * i * o / median_seconds(lambda: products().numpy()) / 1e9

    return tuple(rate(*shape) for shape in RATE_SHAPES)


def _gbps() -> float:
    """Adam's fused update (`ResourceApplyAdam`, the trainer's) over 4 M parameters: 7 float32 values each."""
    import tensorflow as tf

    n, rounds = 4 * 2**20, 4
    var, m, v = (tf.Variable(tf.zeros(n)) for _ in range(3))
    grad = tf.ones(n)

    @tf.function(autograph=False)
    def updates():
        for _ in range(rounds):
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=0.9, beta2_power=0.999,
                                         lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7, grad=grad)
        return var[0]

    seconds = median_seconds(lambda: updates().numpy())
    return rounds * 7 * 4 * n / seconds / 1e9
