"""How busy the machine's CPUs are with other processes, read from /proc/stat without PyTorch.

Kept free of PyTorch so that a command can take its first reading before it imports PyTorch
(a second): the load is then measured over the start-up itself, and choosing a thread count
costs no wait. This process's own CPU time over the interval is subtracted, so that its own
start-up does not count as load.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

# The least interval a load is measured over; a shorter one is extended by sleeping.
MIN_INTERVAL = 0.2


class CpuClock(NamedTuple):
    """One reading: wall time (s), the machine's idle and total CPU time (ticks) and this process's CPU time (s)."""

    wall: float
    idle: int
    total: int
    own: float


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def read_clock() -> CpuClock | None:
    """Read the clocks now; None where /proc/stat is not available (not Linux)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle, total = values[3] + values[4], sum(values[:8])  # idle + iowait, total (without guest time)
    except (OSError, ValueError, IndexError):
        return None
    own = os.times()
    return CpuClock(time.monotonic(), idle, total, own.user + own.system)


def idle_cpus(since: CpuClock | None = None) -> float:
    """How many of this process's CPUs other processes left idle since the reading ``since``
    (None: over the next MIN_INTERVAL seconds); all of them where that is not known.

    Busy time is the machine's busy time less this process's own, so a process that reads
    ``since`` when it starts and asks here once it has loaded measures the others' load over
    its start-up, at no cost.
    """
    usable = usable_cpus()
    start = since if since is not None else read_clock()
    if start is None:
        return float(usable)
    time.sleep(max(0.0, MIN_INTERVAL - (time.monotonic() - start.wall)))
    end = read_clock()
    if end is None:
        return float(usable)
    machine = os.cpu_count() or usable
    total = max(end.total - start.total, 1)
    busy = total - (end.idle - start.idle) - (end.own - start.own) * os.sysconf("SC_CLK_TCK")
    return min(float(usable), max(0.0, machine * (1 - busy / total)))
