"""Keep freed memory in the process for reuse, instead of handing it back to the kernel.

PyTorch's CPU tensors are plain ``malloc`` blocks. glibc serves blocks of more than 128 KiB
(and, as its threshold adapts, up to 32 MiB) with a fresh ``mmap`` and unmaps them when they
are freed, so every forward pass of a network touches its whole working set as new pages: a
page fault and a zeroed 4 KiB page each time. A d2lnet-s forward pass of one 256x256 image
took 30,000-40,000 faults, and a restore of a 768x512 photo 300,000-450,000; with freed
memory kept, the faults after the first pass disappear, and a bf16 forward pass ran 15% faster
(``docs/speed.md``, ``benchmarks/results/code_speed_xeon-amx_session10.md``).

The cost is that the process keeps its peak memory until it exits, as PyTorch's CUDA
allocator does on a GPU. The commands (``d2lnet restore``, ``eval``, ``train``, ``serve``) do
this at start-up; a program that calls the Python API can call :func:`keep_freed_memory`
itself. No PyTorch here: the CLI calls it before importing PyTorch.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1

# Settings a user may have given glibc through the environment; theirs win.
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def uses_glibc() -> bool:
    """Whether this process's C library is glibc (whose malloc :func:`keep_freed_memory` tunes)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve every block from its heap (no ``mmap`` per large block) and
    never to trim the heap's free top back to the kernel, so that freed tensors' pages are
    reused. Returns whether it did: not on other C libraries (musl, macOS, Windows), nor when
    the environment already sets glibc's malloc (``MALLOC_*_`` or ``GLIBC_TUNABLES``).

    A request the heap cannot grow for still falls back to ``mmap`` (glibc does so whenever
    ``brk`` fails), so this never makes an allocation fail that would otherwise succeed.
    """
    if not uses_glibc():
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _INT_MAX))
