"""The machine (d2lnet.device): CPU thread counts (their defaults: tests/test_cpuload.py); compilation with a fallback."""

from __future__ import annotations

import pytest
import torch
from helpers import torch_threads

from d2lnet import device


def test_set_threads_obeys_an_explicit_count_and_refuses_zero():
    with torch_threads(torch.get_num_threads()):
        assert device.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            device.set_threads(0)


def test_compiled_falls_back_to_the_module_with_one_warning(monkeypatch, capsys):
    def broken_compile(module, **options):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nlong backend trace")

        return run

    monkeypatch.setattr(device.torch, "compile", broken_compile)
    module = torch.nn.Linear(3, 2)
    compiled = device.Compiled(module)
    x = torch.randn(4, 3)
    torch.testing.assert_close(compiled(x), module(x))
    torch.testing.assert_close(compiled(x), module(x))  # and stays eager, without warning again
    err = capsys.readouterr().err
    assert err.count("warning: torch.compile failed") == 1 and "no C++ compiler found" in err and "trace" not in err
    assert compiled.error.startswith("RuntimeError") and compiled.compile_seconds is None


def test_no_native_bf16_when_onednn_is_held_to_avx2():
    """``ONEDNN_MAX_CPU_ISA=AVX2`` (an AMD EPYC's ISA, or a user's choice) means fp32 for "auto",
    whatever the CPU: oneDNN would emulate bf16 there, slower than fp32."""
    import os
    import subprocess
    import sys

    code = "from d2lnet.device import cpu_has_native_bf16; print(cpu_has_native_bf16())"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("device_type", "capability", "precision", "expected"),
    [
        ("cpu", "AVX512", "fp32", True),  # oneDNN's AVX-512 kernels train faster in channels-last
        ("cpu", "AVX2", "fp32", False),  # its AVX2 backward is slower there: the plain layout
        ("cpu", "DEFAULT", "fp32", False),
        ("cpu", "AVX2", "bf16", True),  # under autocast channels-last wins everywhere
        ("cuda", "AVX2", "fp32", False),
        ("cuda", "AVX512", "bf16", True),
        ("cuda", "AVX2", "fp16", True),
    ],
)
def test_training_layout_is_channels_last_except_fp32_without_avx512(monkeypatch, device_type, capability, precision, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert device.training_channels_last(torch.device(device_type), precision) is expected
