"""The fast Fourier path against the literal one, in one process, interleaved; and where the time goes.

"literal" runs every correction block and eq. (13) through the angle, as the equations read
(``DualDomainBlock.fourier_literal``, ``fourier.swap_amplitude_literal``: what the model did
before the fast path); "fast" is the model as it is. For each precision (fp32, and bf16 where
the CPU computes it natively) it times a d2lnet-s forward pass and a training step, alternating
the two paths, and profiles one forward of each into operator groups: convolutions, matrix
products (eq. 8's 1x1 convolutions among them), FFTs, atan2/cos/sin, dtype copies, and the rest.

    python benchmarks/fourier_path.py --threads 1 --out benchmarks/results/fourier_path_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
import types
from collections.abc import Callable, Iterator

import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet import fourier
from d2lnet import model as model_module
from d2lnet.device import cpu_has_native_bf16
from d2lnet.losses import D2LLoss
from d2lnet.model import DualDomainBlock, build

GROUPS = {  # profiler operator name -> group
    "convolution": (  # every path PyTorch may take for a Conv2d or ConvTranspose2d, oneDNN's or its own
        "conv2d",
        "conv_transpose2d",
        "convolution",
        "_convolution",
        "mkldnn_convolution",
        "convolution_backward",
        "mkldnn_convolution_backward",
        "mkldnn::_convolution_pointwise",
        "mkldnn::_convolution_transpose_pointwise",
        "thnn_conv2d",
        "_slow_conv2d_forward",
        "_slow_conv2d_backward",
        "slow_conv_transpose2d",
        "_nnpack_spatial_convolution",  # d2lnet.winograd's path
    ),
    # Eq. (8)'s 1x1 convolutions over the spectra run as these; so do the means and Linear layers.
    "matrix products": ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "einsum"),
    "fft": ("_fft_r2c", "_fft_c2r", "_fft_c2c"),
    "atan2/cos/sin": ("atan2", "cos", "sin"),
    "copies (dtype, layout)": ("copy_", "_to_copy", "clone", "contiguous"),
}


@contextlib.contextmanager
def literal_path() -> Iterator[None]:
    """Run the model through the literal forms of eqs. (7)-(8) and (13) meanwhile."""
    fast_fourier, fast_swap = DualDomainBlock.fourier, model_module.swap_amplitude
    DualDomainBlock.fourier, model_module.swap_amplitude = DualDomainBlock.fourier_literal, fourier.swap_amplitude_literal
    try:
        yield
    finally:
        DualDomainBlock.fourier, model_module.swap_amplitude = fast_fourier, fast_swap


def inference_layout_of(engine: types.ModuleType | None, precision: str) -> torch.memory_format:
    """The layout a code tree's engine runs the model in on the CPU (``d2lnet.engine.inference_layout``),
    or channels-last for trees from before it chose."""
    choose = getattr(engine, "inference_layout", None)
    return torch.channels_last if choose is None else choose(torch.device("cpu"), precision)


def training_layout_of(device: types.ModuleType | None, precision: str) -> torch.memory_format:
    """The layout a code tree's trainer runs the model in on the CPU (``d2lnet.device.training_channels_last``),
    or channels-last, as every recipe asked, for trees from before ``run.channels_last = "auto"``."""
    pick = getattr(device, "training_channels_last", None)
    channels_last = pick is None or pick(torch.device("cpu"), precision)
    return torch.channels_last if channels_last else torch.contiguous_format


def forward_step(model, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x, 30.0)

    return run


def train_step(
    model, x: torch.Tensor, bf16: bool, train: types.ModuleType | None = None, losses: types.ModuleType | None = None
) -> Callable[[], None]:
    """The trainer's step: forward, loss, backward, gradient clipping, Adam (the tree's own, where
    it has one: ``d2lnet.train.adam``) and the EMA of the weights, the convolutions routed as the
    tree's trainer routes them (``winograd_convolutions``, where it has it); with the
    ``d2lnet.train`` and ``d2lnet.losses`` imported, or those given (another code tree's)."""
    if train is None:
        from d2lnet import train
    optimizer = getattr(train, "adam", torch.optim.Adam)(model.parameters(), lr=1e-6)
    criterion = (D2LLoss if losses is None else losses.D2LLoss)(0.0, model.config.fft_norm)
    ema = copy.deepcopy(model).requires_grad_(False)
    qf = torch.full((x.shape[0],), 30.0)
    routed = getattr(train, "winograd_convolutions", lambda device, precision: contextlib.nullcontext())

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), routed(torch.device("cpu"), "bf16" if bf16 else "fp32"):
            out = model(x, qf)
        loss = criterion(out.out1.float(), out.out2.float(), x).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train.update_ema(ema, model, 0.999)

    return run


def profile(run: Callable[[], None]) -> dict[str, float]:
    """Share of self CPU time per operator group over one call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    totals: dict[str, float] = {group: 0.0 for group in [*GROUPS, "other"]}
    for event in prof.key_averages():
        name = event.key.removeprefix("aten::")
        group = next((g for g, names in GROUPS.items() if name in names), "other")
        totals[group] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {group: value / whole for group, value in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="d2lnet-s")
    parser.add_argument("--size", type=int, default=256, help="forward: one image of SIZE x SIZE")
    parser.add_argument("--train-crop", type=int, default=128, help="training step: batch 4 of crops this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    rows = []
    for precision in precisions:
        bf16 = precision == "bf16"
        for kind, make, shape in (
            ("forward", forward_step, (1, 3, args.size, args.size)),
            ("train step", train_step, (4, 3, args.train_crop, args.train_crop)),
        ):
            model = build(args.config).to(memory_format=torch.channels_last)
            model.eval() if kind == "forward" else model.train()
            x = torch.rand(*shape).contiguous(memory_format=torch.channels_last)
            run = make(model, x, bf16)
            paths = {"literal": literal_path, "fast": contextlib.nullcontext}
            times: dict[str, list[float]] = {p: [] for p in paths}
            for context in paths.values():  # warm-up
                with context():
                    run()
            for _ in range(args.reps):
                for path, context in paths.items():
                    with context():
                        start = time.perf_counter()
                        run()
                        times[path].append(time.perf_counter() - start)
            shares = {}
            for path, context in paths.items():
                with context():
                    shares[path] = profile(run)
            row = {"precision": precision, "kind": kind, "shape": list(shape),
                   **{f"{p}_s": statistics.median(t) for p, t in times.items()}, "profile": shares}  # fmt: skip
            row["speedup"] = row["literal_s"] / row["fast_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    document = {
        "cpu": cpu_name(),
        "isa": cpu_isa(),
        "threads": args.threads,
        "config": args.config,
        "torch": torch.__version__,
        "rows": rows,
    }
    lines = [f"{args.config}, {document['cpu']} ({document['isa']}), {args.threads} thread(s), PyTorch {torch.__version__}; "
             f"median of {args.reps}, the two paths alternating. Profile: share of self CPU time.", "",
             "| precision | step | shape | literal s | fast s | speed-up | " + " | ".join(f"{g} (literal / fast)" for g in [*GROUPS, "other"]) + " |",
             "|---|---|---|---:|---:|---:|" + "---:|" * (len(GROUPS) + 1)]  # fmt: skip
    for r in rows:
        groups = " | ".join(f"{r['profile']['literal'][g]:.0%} / {r['profile']['fast'][g]:.0%}" for g in [*GROUPS, "other"])
        lines.append(
            f"| {r['precision']} | {r['kind']} | {'x'.join(map(str, r['shape']))} | {r['literal_s']:.3f} | {r['fast_s']:.3f} | {r['speedup']:.2f}x | {groups} |"
        )
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
