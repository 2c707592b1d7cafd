"""Parameters, FLOPs per pixel and forward time of every named configuration.

    python benchmarks/model_cost.py                       # CPU, writes benchmarks/results/model_cost_cpu.{json,md}
    python benchmarks/model_cost.py --device cuda         # GPU: fp32 and bf16, writes model_cost_cuda.*

FLOPs are counted by PyTorch's FlopCounterMode (2 per multiply-add of convolutions and
matrix products) plus the FFTs, counted as 2.5 N log2 N per real transform of N points
(the usual radix-2 estimate); element-wise operations are not counted. Times are the
median of several forward passes after a warm-up, in inference mode.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from common import cpu_name
from torch.utils.flop_counter import FlopCounterMode

from d2lnet.device import cpu_has_native_bf16
from d2lnet.model import CONFIGS, D2LNetConfig, build

RESULTS = Path(__file__).parent / "results"
SIZES = [(256, 256), (512, 768)]  # (H, W): a training crop and a LIVE1-sized photo
aten = torch.ops.aten


def _fft_flops(input_shape, *args, out_shape=None, **kwargs) -> int:
    """2.5 N log2 N per real 2-D transform of N = H x W points, for each of the leading dims."""
    shape = input_shape if out_shape is None or math.prod(out_shape) < math.prod(input_shape) else out_shape
    *lead, h, w = shape
    n = h * w
    return int(2.5 * n * math.log2(max(n, 2)) * math.prod(lead))


def _fft_r2c(input_shape, dim, normalization, onesided, out_shape=None, **kw) -> int:
    return _fft_flops(input_shape)


def _fft_c2r(input_shape, dim, normalization, last_dim_size, out_shape=None, **kw) -> int:
    *lead, h, _ = input_shape
    return _fft_flops((*lead, h, last_dim_size))


def _fft_c2c(input_shape, dim, normalization, forward, out_shape=None, **kw) -> int:
    return _fft_flops(input_shape) * 2  # complex data: twice the real work


FFT_MAPPING = {aten._fft_r2c: _fft_r2c, aten._fft_c2r: _fft_c2r, aten._fft_c2c: _fft_c2c}


def count_flops(model: torch.nn.Module, channels: int, h: int, w: int) -> tuple[int, int]:
    """(convolution/matmul FLOPs, FFT FLOPs) of one forward pass on a 1 x C x H x W input."""
    x = torch.rand(1, channels, h, w)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as plain:
            model(x, 50)
        with FlopCounterMode(display=False, custom_mapping=FFT_MAPPING) as with_fft:
            model(x, 50)
    total_plain, total = plain.get_total_flops(), with_fft.get_total_flops()
    return total_plain, total - total_plain


def released_unused_parameters(config: D2LNetConfig) -> int:
    """Parameters of the authors' released model file that no forward pass uses, which its
    29.6M count includes: in every HinResBlock a 1x1 ``identity`` and a 3x3 ``conv_3``
    (2C -> C); in every decoder FFTConvBlock (built without FFT) the two 1x1 spectral
    convs and the spatial attention's 2 -> 1 3x3 conv."""
    c = config.width
    widths = [c * 2**i for i in range(config.depth - 1)]  # skip and decoder levels
    hin = lambda ch: (ch * ch + ch) + (2 * ch * ch * 9 + ch)  # noqa: E731
    hin_blocks = 5 * hin(c) + 2 * sum(hin(w) for w in widths)  # conv_01 (2), conv_02 (2), pre_re (1), 2 x skips
    decoder = 2 * sum(2 * (w * w + w) + 2 * 9 for w in widths)  # both stages
    return hin_blocks + decoder


def time_forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None, runs: int) -> float:
    """Median seconds of a forward pass (after one warm-up)."""
    device = x.device
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for i in range(runs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, 50)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first run is the warm-up
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    device = torch.device(args.device)
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    precisions = {"fp32": None, "bf16": torch.bfloat16} if native_bf16 else {"fp32": None}

    rows = []
    for name in args.configs:
        model = build(name).eval()
        params = sum(p.numel() for p in model.parameters())
        plain, fft = count_flops(model, 3, 256, 256)
        row = {
            "config": name,
            "params": params,
            "gflops_per_megapixel": round((plain + fft) / (256 * 256) * 1e6 / 1e9, 2),
            "fft_share": round(fft / (plain + fft), 4),
            "released_unused_params": released_unused_parameters(model.config)
            if name in ("d2lnet-paper", "d2lnet-released")
            else None,
            "seconds": {},
        }
        model.to(device, memory_format=torch.channels_last)  # as the inference engine runs it
        for h, w in SIZES:
            x = torch.rand(1, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
            for label, dtype in precisions.items():
                row["seconds"][f"{h}x{w}_{label}"] = round(time_forward(model, x, dtype, args.runs), 4)
        rows.append(row)
        print(json.dumps(row))

    environment = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"model_cost_{device.type}"
    stem.with_suffix(".json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=1) + "\n")

    columns = [f"{h}x{w}_{p}" for h, w in SIZES for p in precisions]
    lines = [
        f"# Model cost ({device.type})",
        "",
        f"Device: {environment['device']}; PyTorch {environment['torch']}; {environment['threads']} threads; "
        f"1-minute load average at the end: {environment['load_average_1min']:.2f}. "
        f"Forward pass of one RGB image with a quality factor (channels-last), median of {args.runs} runs after a warm-up; "
        "bf16 is autocast, measured where the device computes bf16 natively. "
        "GFLOPs count convolutions, matrix products and FFTs (2.5 N log2 N per real transform).",
        "",
        "| config | parameters | GFLOPs / megapixel | FFT share | " + " | ".join(f"{c} (s)" for c in columns) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(columns),
    ]
    for r in rows:
        params = f"{r['params'] / 1e6:.2f}M"
        if r["released_unused_params"]:
            params += f" (+{r['released_unused_params'] / 1e6:.2f}M unused in the released file = {(r['params'] + r['released_unused_params']) / 1e6:.2f}M)"
        cells = " | ".join(f"{r['seconds'][c]:.3f}" for c in columns)
        lines.append(f"| {r['config']} | {params} | {r['gflops_per_megapixel']:.1f} | {100 * r['fft_share']:.1f}% | {cells} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
