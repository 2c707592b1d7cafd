"""Other processes' CPU load (d2lnet.cpuload) and the thread count it gives (d2lnet.device.default_threads),
on hand-written /proc/stat readings."""

from __future__ import annotations

import io
import os
from collections import namedtuple

import pytest

from d2lnet import cpuload, device

# user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 1/100 s.
_Times = namedtuple("_Times", "user system children_user children_system elapsed")


def _fake_machine(monkeypatch, stats: list[str], own_seconds: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """Two CPUs whose /proc/stat reads ``stats`` in turn while this process has used ``own_seconds``
    of CPU at each reading; returns the list that records the sleeps asked for."""
    lines, own = iter(stats), iter(own_seconds)
    sleeps: list[float] = []
    monkeypatch.setattr(cpuload, "open", lambda path: io.StringIO(next(lines)), raising=False)
    monkeypatch.setattr(cpuload.time, "sleep", sleeps.append)
    monkeypatch.setattr(cpuload.os, "times", lambda: _Times(next(own), 0.0, 0.0, 0.0, 0.0))
    monkeypatch.setattr(cpuload.os, "sysconf", lambda name: 100 if name == "SC_CLK_TCK" else os.sysconf(name))
    monkeypatch.setattr(cpuload.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpuload.os, "sched_getaffinity", lambda pid: {0, 1})
    return sleeps


def test_one_busy_core_of_two_leaves_one_thread(monkeypatch):
    # 200 ticks pass (1 s on 2 CPUs), 100 of them idle, none of them ours.
    _fake_machine(monkeypatch, ["cpu 1000 0 0 5000 0 0 0 0 0 0\n", "cpu 1100 0 0 5100 0 0 0 0 0 0\n"])
    assert cpuload.idle_cpus() == pytest.approx(1.0)
    _fake_machine(monkeypatch, ["cpu 1000 0 0 5000 0 0 0 0 0 0\n", "cpu 1100 0 0 5100 0 0 0 0 0 0\n"])
    assert device.default_threads() == 1


def test_an_idle_machine_gets_every_core_and_a_busy_one_still_gets_one(monkeypatch):
    _fake_machine(monkeypatch, ["cpu 0 0 0 0 0 0 0 0 0 0\n", "cpu 0 0 0 190 10 0 0 0 0 0\n"])
    assert device.default_threads() == 2
    _fake_machine(monkeypatch, ["cpu 0 0 0 0 0 0 0 0 0 0\n", "cpu 150 0 50 0 0 0 0 0 0 0\n"])
    assert device.default_threads() == 1


def test_this_process_own_work_is_not_load(monkeypatch):
    # Half the machine was busy, all of it this process (1 s of its CPU time = 100 ticks): both CPUs are free.
    _fake_machine(monkeypatch, ["cpu 1000 0 0 5000 0 0 0 0 0 0\n", "cpu 1100 0 0 5100 0 0 0 0 0 0\n"], (2.0, 3.0))
    assert cpuload.idle_cpus() == pytest.approx(2.0)
    # Three quarters busy, a third of that ours (50 of 150 ticks): another process held one CPU.
    _fake_machine(monkeypatch, ["cpu 0 0 0 0 0 0 0 0 0 0\n", "cpu 100 0 50 50 0 0 0 0 0 0\n"], (0.0, 0.5))
    assert cpuload.idle_cpus() == pytest.approx(1.0)


def test_a_reading_taken_at_start_up_needs_no_wait(monkeypatch):
    sleeps = _fake_machine(monkeypatch, ["cpu 0 0 0 0 0 0 0 0 0 0\n", "cpu 0 0 0 200 0 0 0 0 0 0\n"])
    started = cpuload.read_clock()
    monkeypatch.setattr(cpuload.time, "monotonic", lambda: started.wall + 1.5)  # the start-up took 1.5 s
    assert device.default_threads(since=started) == 2
    assert sleeps == [0.0]


def test_without_a_reading_it_measures_over_the_next_interval(monkeypatch):
    sleeps = _fake_machine(monkeypatch, ["cpu 0 0 0 0 0 0 0 0 0 0\n", "cpu 0 0 0 200 0 0 0 0 0 0\n"])
    assert cpuload.idle_cpus() == pytest.approx(2.0)
    assert sleeps and sleeps[0] == pytest.approx(cpuload.MIN_INTERVAL, abs=0.05)


def test_no_proc_stat_means_every_cpu(monkeypatch):
    def missing(path):
        raise OSError("no /proc")

    monkeypatch.setattr(cpuload, "open", missing, raising=False)
    monkeypatch.setattr(cpuload.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpuload.idle_cpus() == 3.0
