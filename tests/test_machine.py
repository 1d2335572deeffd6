"""The machine profile and the work of a run: counted by hand, measured for real, cached per machine."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from types import SimpleNamespace

import pytest

from mnist_core import machine
from mnist_core.model import MLPConfig
from mnist_core.work import work

RATES = {"gflops": 50.0, "gbps": 8.0, "call_us": 90.0, "batch_us": 300.0, "layer_us": 80.0, "augment_us": 15.0}


def test_flops_and_optimizer_bytes_of_two_small_nets_by_hand():
    # 1 x 8 on 784 pixels, Adam: forward 2 x (784 x 8 + 8 x 10) = 12,704 FLOPs; the weights' gradients as
    # much; the inputs' gradients of the second layer only, 2 x 80. 6,370 parameters x 7 values x 4 bytes.
    one = work(MLPConfig(depth=1, width=8), examples=1000, batch_size=100)
    assert one.flops_per_example == 12_704 + 12_704 + 160
    assert one.optimizer_bytes_per_step == 6_370 * 7 * 4
    assert one.flops_per_step == one.flops_per_example * 100 and one.steps_per_epoch == 10
    # 2 x 16 on 20 x 20 pixels (4 cropped from each border), AdamW (decay reads and writes the weight again).
    two = work(MLPConfig(depth=2, width=16, input_crop=4, optimizer="adamw"), examples=1000, batch_size=300)
    forward = 2 * (400 * 16 + 16 * 16 + 16 * 10)
    assert two.flops_per_example == 2 * forward + 2 * (16 * 16 + 16 * 10)
    assert two.optimizer_bytes_per_step == (400 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10) * 9 * 4
    assert two.steps_per_epoch == 4  # the last batch is short
    assert two.flops(2.5) == two.flops_per_example * 1000 * 2.5 and two.optimizer_bytes(2) == two.optimizer_bytes_per_step * 8


def test_each_layer_is_timed_at_the_rate_of_its_own_products_size():
    # One thread: 40 GFLOP/s at every size. Two threads: slower than that on small products, faster on large.
    one = machine.nominal({"cpu": "x", "cores": (0,), "threads": 1})
    one = dataclasses.replace(one, gflops=40.0)
    two = dataclasses.replace(one, cores=(0, 1), threads=2, gflops=80.0, gflops_by_size=(20.0, 40.0, 60.0, 80.0))
    sizes = [b * i * o for b, i, o in machine.RATE_SHAPES]
    assert two.rate(sizes[0]) == 20.0 and two.rate(sizes[0] // 10) == 20.0 and two.rate(sizes[-1] * 10) == 80.0
    assert two.rate(int((sizes[1] * sizes[2]) ** 0.5)) == pytest.approx(50.0)  # halfway in log size
    assert one.rate(sizes[0]) == one.rate(sizes[-1]) == 40.0
    # 1 x 64 at batch 128: its first layer's products are the smallest measured (its last layer's smaller still).
    small = work(MLPConfig(depth=1, width=64), examples=12_800, batch_size=128)
    assert small.product_sizes == (sizes[0], 128 * 64 * 10)
    assert two.compute_seconds(small, 1) == pytest.approx(2 * one.compute_seconds(small, 1))
    # The seed's hidden layers are the largest measured: nearly twice as fast on two threads.
    seed = work(MLPConfig(depth=5, width=2000), examples=10_000, batch_size=100)
    assert 1.9 < one.compute_seconds(seed, 1) / two.compute_seconds(seed, 1) < 2.0
    with pytest.raises(ValueError, match="gflops_by_size"):
        machine.MachineProfile.from_fields({**two.fields(), "gflops_by_size": [1.0, 2.0]})
    assert machine.MachineProfile.from_fields(two.fields()) == two


def test_under_a_cpu_quota_a_timing_counts_the_cpu_time_the_quota_divides(monkeypatch):
    clock = {"wall": 0.0, "cpu": 0.0}

    def call():  # 10 ms of wall clock in which the process's threads used 20 ms of CPU
        clock["wall"] += 0.01
        clock["cpu"] += 0.02

    monkeypatch.setattr(machine, "time", SimpleNamespace(perf_counter=lambda: clock["wall"], process_time=lambda: clock["cpu"]))
    monkeypatch.setattr(machine, "_cpu_quota", lambda: None)
    assert machine.median_seconds(call) == pytest.approx(0.01)
    monkeypatch.setattr(machine, "_cpu_quota", lambda: 0.4)  # its wall clock whatever part of a period it fell in
    assert machine.median_seconds(call) == pytest.approx(0.05)
    monkeypatch.setattr(machine, "_cpu_quota", lambda: 4.0)  # a quota that does not bind
    assert machine.median_seconds(call) == pytest.approx(0.01)


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """No pinned profile, a cache of this test's own, and a measurement that counts its calls."""
    monkeypatch.delenv(machine.PIN_ENV)
    monkeypatch.setenv(machine.CACHE_ENV, str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(machine, "measure", lambda: calls.append(1) or dict(RATES))
    return calls


def test_a_profile_is_measured_once_then_read_from_the_cache(unpinned, tmp_path):
    first = machine.load()
    assert first.source == "measured" and first.gflops == RATES["gflops"] and unpinned == [1]
    again = machine.load()
    assert again.source == "cached" and dataclasses.replace(again, source="measured") == first and unpinned == [1]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [machine.cache_path(machine._identity()).name]  # no temporary left


def test_a_corrupt_or_foreign_cached_profile_is_measured_again_with_one_line(unpinned, caplog):
    path = machine.cache_path(machine._identity())
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger=machine.__name__):
        assert machine.load().source == "measured"
    assert len(caplog.records) == 1 and "unreadable" in caplog.records[0].getMessage()
    # The same file name from another host (a home directory copied over): not this machine's rates.
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "host": "elsewhere", "gflops": 1e6}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=machine.__name__):
        profile = machine.load()
    assert profile.source == "measured" and profile.gflops == RATES["gflops"] and unpinned == [1, 1]
    assert len(caplog.records) == 1 and "another machine" in caplog.records[0].getMessage()


def test_a_stale_cached_profile_is_measured_again(unpinned):
    machine.load()
    path = machine.cache_path(machine._identity())
    path.write_text(json.dumps({**json.loads(path.read_text()), "measured": "2020-01-01T00:00:00Z"}))
    assert machine.load().source == "measured" and unpinned == [1, 1]


def test_a_failed_measurement_falls_back_to_nominal_rates_with_one_warning(unpinned, monkeypatch, caplog):
    def broken():
        raise RuntimeError("device lost\nmore detail")

    monkeypatch.setattr(machine, "measure", broken)
    with caplog.at_level(logging.WARNING, logger=machine.__name__):
        profile = machine.load()
    assert profile.source == "nominal" and profile.gflops == machine.nominal().gflops
    assert [r.getMessage() for r in caplog.records] == ["could not measure this machine (device lost): using nominal rates"]


def test_a_pinned_profile_is_used_as_is_and_a_bad_one_is_refused(monkeypatch, tmp_path):
    pinned = machine.load()  # tests/fixtures/machine.json: rates; this process's identity
    assert pinned.source == "pinned" and pinned.gflops == 100.0 and pinned.host == socket.gethostname()
    assert pinned.cores == tuple(sorted(os.sched_getaffinity(0)))
    bad = tmp_path / "profile.json"
    bad.write_text(json.dumps({"gflops": 1}))
    monkeypatch.setenv(machine.PIN_ENV, str(bad))
    with pytest.raises(ValueError, match="MNIST_SWEEP_PROFILE=.* is not a machine profile"):
        machine.load()


def test_measuring_this_machine_gives_positive_rates_and_fixed_costs():
    measured = machine.measure()
    by_size = measured.pop("gflops_by_size")
    assert set(measured) == set(RATES)
    assert measured["gflops"] > 0 and measured["gbps"] > 0 and measured["batch_us"] > 0
    assert all(value >= 0 for value in measured.values())
    assert len(by_size) == len(machine.RATE_SHAPES) and min(by_size) > 0 and measured["gflops"] == max(by_size)
