"""Training throughput: samples per second of a full training step at 256x256, per configuration.

    python benchmarks/train_throughput.py                      # CPU, fp32: results/train_throughput_cpu.*
                                                               # (another CPU: --out results/train_throughput_NAME)
    python benchmarks/train_throughput.py --device cuda        # GPU: fp32 and bf16, with and without
                                                               # channels-last, and the peak memory

A step is what the trainer does: forward with a quality factor (3x3 convolutions through
Winograd where the trainer sends them there, :func:`d2lnet.winograd.winograd_convolutions`), the
loss of eq. (22), backward, gradient clipping, Adam (the trainer's), with freed memory kept for
reuse as the command keeps it (:mod:`d2lnet.allocator`). Inputs are random (data loading is not measured: the
trainer overlaps it with compute in worker processes). The rate is the median over
several timed steps after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from common import cpu_isa, cpu_name

from d2lnet.allocator import keep_freed_memory
from d2lnet.device import cpu_has_native_bf16
from d2lnet.losses import D2LLoss
from d2lnet.model import CONFIGS, build
from d2lnet.train import adam
from d2lnet.winograd import winograd_convolutions

RESULTS = Path(__file__).parent / "results"


def measure(
    name: str, device: torch.device, batch: int, crop: int, bf16: bool, channels_last: bool, warmup: int, runs: int
) -> dict:
    """Samples per second (median over ``runs`` steps) and, on CUDA, peak memory in GiB."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build(name).to(device, memory_format=memory_format).train()
    optimizer = adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999))
    criterion = D2LLoss(fft_norm=model.config.fft_norm)
    lq = torch.rand(batch, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
    gt = torch.rand(batch, 3, crop, crop, device=device).contiguous(memory_format=memory_format)
    qf = torch.full((batch,), 30.0, device=device)
    precision = "bf16" if bf16 else "fp32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), winograd_convolutions(device, precision):
            out = model(lq, qf)
        loss = criterion(out.out1.float(), out.out2.float(), gt).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    row = {
        "config": name, "batch": batch, "crop": crop, "bf16": bf16, "channels_last": channels_last,
        "samples_per_s": round(batch / statistics.median(times), 3),
    }  # fmt: skip
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: 1 on CPU, 8 on CUDA)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md (default: results/train_throughput_DEVICE)")
    args = parser.parse_args()
    keep_freed_memory()  # as `d2lnet train` runs
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (8 if cuda else 1)
    warmup, runs = args.warmup or (5 if cuda else 1), args.runs or (20 if cuda else 3)
    # bf16 autocast where the device computes it natively (CUDA; CPUs with AMX or AVX512-BF16)
    native_bf16 = cuda or cpu_has_native_bf16()
    variants = [(False, False), (False, True)] + ([(True, False), (True, True)] if native_bf16 else [])

    rows = []
    for name in args.configs:
        for bf16, channels_last in variants:
            row = measure(name, device, batch, args.crop, bf16, channels_last, warmup, runs)
            rows.append(row)
            print(json.dumps(row), flush=True)

    environment = {
        "device": torch.cuda.get_device_name(device) if cuda else f"{cpu_name()} ({cpu_isa()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    stem = Path(args.out) if args.out else RESULTS / f"train_throughput_{device.type}"  # another CPU: its own --out
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")
    memory = " peak memory (GiB) |" if cuda else ""
    lines = [
        f"# Training throughput ({device.type}, {args.crop}x{args.crop} crops)",
        "",
        f"Device: {environment['device']}; PyTorch {environment['torch']}; {environment['threads']} threads; "
        f"1-minute load average at the end: {environment['load_average_1min']:.2f}. One step = forward, eq. (22), "
        f"backward, clipping, Adam; batch {batch}; median of {runs} steps after {warmup} warm-up.",
        "",
        "| config | bf16 | channels-last | samples/s |" + memory,
        "|---|---|---|---:|" + ("---:|" if cuda else ""),
    ]
    for r in rows:
        extra = f" {r['peak_memory_gib']:.2f} |" if cuda else ""
        lines.append(
            f"| {r['config']} | {'yes' if r['bf16'] else 'no'} | {'yes' if r['channels_last'] else 'no'} | {r['samples_per_s']:.3f} |"
            + extra
        )
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
