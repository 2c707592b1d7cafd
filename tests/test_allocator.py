"""d2lnet.allocator: freed memory is reused (no page faults on a second allocation), and a user's
own glibc settings win. Each case runs in a fresh process: malloc's settings are per process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from d2lnet.allocator import uses_glibc

pytestmark = pytest.mark.skipif(not uses_glibc(), reason="glibc's malloc only")

# Allocates, fills and frees a 64 MiB block with malloc five times, as a forward pass does with
# its large tensors, and counts the page faults of the last four rounds (the kernel's count).
_PROBE = """
import ctypes, json, resource, sys
from d2lnet.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def round_trip():
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    round_trip()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
_PAGES_PER_ROUND = (64 << 20) // 4096


def _huge_pages_always() -> bool:
    """With transparent huge pages always on, a fresh 64 MiB block faults in 2 MiB at a time, and
    fault counts no longer tell a reused block from a new one."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


counts_faults = pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages are always on here")


def probe(mode: str, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    return {**env, **extra}


@counts_faults
def test_by_default_glibc_maps_a_large_block_afresh_each_time():
    # The premise: without the setting, every round faults its 16,384 pages in again.
    assert probe("default", clean_env())["faults"] >= 4 * _PAGES_PER_ROUND * 0.9


@counts_faults
def test_kept_memory_is_reused_without_page_faults():
    result = probe("keep", clean_env())
    assert result["kept"] is True
    assert result["faults"] < 0.05 * 4 * _PAGES_PER_ROUND


@pytest.mark.parametrize(
    "setting",
    [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"MALLOC_MMAP_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}],
)
@counts_faults
def test_a_users_own_malloc_settings_win(setting):
    result = probe("keep", clean_env(**setting))
    assert result["kept"] is False
    assert result["faults"] >= 4 * _PAGES_PER_ROUND * 0.9


def test_the_commands_keep_freed_memory(monkeypatch):
    import d2lnet.allocator
    from d2lnet import cli

    calls = []
    monkeypatch.setattr(d2lnet.allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["models"]) == 0
    assert calls == [1]
