"""The machine: which device, which precision, which process of a torchrun launch.

One meaning of ``"auto"`` everywhere (restore, eval, train):

* device ``"auto"``: the CUDA device when PyTorch has one, else the CPU; under torchrun,
  process ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``;
* precision ``"auto"``: bf16 autocast where the device computes bf16 natively (CUDA devices
  that support it, CPUs with Intel AMX or AVX512-BF16), else fp32. On such CPUs bf16 runs
  d2lnet-s 2.3x faster at inference and 1.6x faster in training, and moves restored images
  by a few thousandths of a dB. FFTs always run in fp32 (:mod:`d2lnet.fourier`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import torch

from d2lnet.cpuload import CpuClock, idle_cpus

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ... as a device that exists here.

    Raises ValueError with a one-line reason for a name PyTorch does not know, or a CUDA
    device that this machine (or this PyTorch build) does not have.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was asked for but is not available (no GPU, or a CPU-only PyTorch build)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"there is no {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" and not _backend_available(device):
        raise ValueError(f"device {str(device)!r} is not available on this machine: use auto, cpu, cuda or cuda:N")
    return device


def _backend_available(device: torch.device) -> bool:
    """Whether a device type other than CPU and CUDA (mps, xpu, ...) can be used here."""
    backend = getattr(torch, device.type, None) or getattr(torch.backends, device.type, None)
    available = getattr(backend, "is_available", None)
    return bool(available and available())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16), read from /proc/cpuinfo,
    and oneDNN may use it (``ONEDNN_MAX_CPU_ISA=AVX2`` holds it to AVX2, as on an AMD EPYC)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return ("amx_bf16" in flags or "avx512_bf16" in flags) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> Precision:
    """The precision ``precision`` means on ``device``: ``"auto"`` resolved (see the module
    docstring), anything else checked. fp16 is for CUDA only (CPUs have no fast fp16 path)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 needs a CUDA device; use fp32 or bf16 on {device}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def training_channels_last(device: torch.device, precision: Precision) -> bool:
    """Whether training should keep tensors in channels-last memory on ``device`` at ``precision``
    (a resolved one): yes under bf16/fp16 autocast, and in fp32 on CPUs whose kernels are AVX-512;
    no in fp32 on CUDA and on CPUs that run AVX2 kernels (an AVX2-only CPU, or one held to AVX2 by
    ``ATEN_CPU_CAPABILITY``), where oneDNN's channels-last convolution backward is slower than
    the plain layout's: a d2lnet-s training step (4 crops of 128px to 256px) took 1.10x to 1.24x
    longer in channels-last there, and 1.03x to 1.28x shorter with AVX-512 kernels
    (``benchmarks/train_layout.py``). Inference gains from channels-last on every CPU, so
    ``Restorer`` uses it there, except on one thread in float32 of an AVX2 CPU, where NNPACK's
    Winograd convolutions, which read the plain layout, are faster (``d2lnet.winograd``)."""
    if precision != "fp32":
        return True
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: bf16/fp16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


def available_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's free memory, or the system's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch: ``Launch()`` (rank 0 of 1) when not launched by it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str = "auto") -> str:
        """``cuda:LOCAL_RANK`` for ``auto`` or ``cuda`` under torchrun with CUDA available;
        otherwise ``device`` unchanged (an explicit ``cuda:N`` is obeyed)."""
        if self.local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device


def launch() -> Launch:
    """This process's :class:`Launch`, from torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    except ValueError as error:
        raise ValueError(f"bad WORLD_SIZE, RANK or LOCAL_RANK in the environment: {error}") from None
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    return Launch(rank, world_size, local_rank)


def join_process_group(launch: Launch, device: torch.device) -> None:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU) and pin the CUDA device;
    nothing to do for a single process."""
    if launch.world_size == 1:
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


# --------------------------------------------------------------------------- CPU threads


def default_threads(since: CpuClock | None = None) -> int:
    """The CPU threads to use when none are asked for: the CPUs that other processes left idle
    since the reading ``since`` (:func:`d2lnet.cpuload.idle_cpus`), at least one.

    PyTorch's default is every core, and every operator waits for its slowest thread: where
    another process keeps a core busy, that thread runs at a fraction of its share and the
    whole forward pass slows down many times (6.5x was measured on 2 cores with one busy),
    while one thread per idle core loses nothing.
    """
    return max(1, int(idle_cpus(since) + 0.5))


def set_threads(threads: int | None, since: CpuClock | None = None) -> int:
    """Use ``threads`` CPU threads (None: :func:`default_threads` since ``since``); returns the number set."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    threads = threads or default_threads(since)
    torch.set_num_threads(threads)
    return threads


# --------------------------------------------------------------------------- compilation


class Compiled:
    """``torch.compile(module)`` where it works, ``module`` itself where it does not.

    Inductor fuses the elementwise work around the convolutions (the Fourier branches, norms
    and attention gates), which is most of a D2LNet's CPU time in bf16. Compiling costs
    minutes on a small CPU the first time; Inductor's on-disk cache makes later processes
    faster. The first call compiles (``compile_seconds``); if compilation fails (no C++
    compiler, an unsupported backend), a one-line warning goes to stderr and every call
    runs ``module`` eagerly (``error`` says why).
    """

    def __init__(self, module: torch.nn.Module, **options) -> None:
        self.module = module
        self._compiled = torch.compile(module, **options)
        self.compile_seconds: float | None = None
        self.error: str | None = None

    def __call__(self, *args, **kwargs):
        if self._compiled is None:
            return self.module(*args, **kwargs)
        start = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler or backend failure: run eagerly
            self.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            self._compiled = None
            print(f"warning: torch.compile failed, running without it ({self.error})", file=sys.stderr)
            return self.module(*args, **kwargs)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - start
        return out
