"""The trainer's step in the plain (NCHW) layout against channels-last, in one process, call by call.

``run.channels_last = "auto"`` (:func:`d2lnet.device.training_channels_last`) follows these
figures: channels-last under bf16, and in fp32 only where PyTorch runs AVX-512 kernels. Held to
AVX2 (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) this measures an AVX2-only CPU's kernels.

    python benchmarks/train_layout.py --precision fp32 bf16 --crops 128 --out benchmarks/results/train_layout_cpu
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import cpu_isa, cpu_name, write_results
from fourier_path import train_step
from paired_speed import paired

from d2lnet.model import build

LAYOUTS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="d2lnet-s")
    parser.add_argument("--precision", nargs="+", default=["fp32"])
    parser.add_argument("--crops", nargs="+", type=int, default=[128, 256], help="batch of 4 crops this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7, help="calls per layout, taking turns")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rows = []
    for precision in args.precision:
        for crop in args.crops:
            calls = {}
            for name, layout in LAYOUTS.items():
                torch.manual_seed(0)
                model = build(args.config).to(memory_format=layout).train()
                x = torch.rand(4, 3, crop, crop).contiguous(memory_format=layout)
                calls[name] = train_step(model, x, precision == "bf16")
            rows.append({"precision": precision, "crop": crop, **paired(calls, args.rounds)})
            print(rows[-1], file=sys.stderr, flush=True)

    document = {"cpu": cpu_name(), "isa": cpu_isa(), "capability": torch.backends.cpu.get_cpu_capability(),
                "threads": args.threads, "torch": torch.__version__, "config": args.config,
                "rounds": args.rounds, "note": args.note, "rows": rows}  # fmt: skip
    lines = [
        f"{args.config} training step (the trainer's: forward, loss, backward, clipping, Adam, EMA; batch 4), "
        f"{document['cpu']} ({document['isa']}; PyTorch's kernels: {document['capability']}), {args.threads} "
        f"thread(s), PyTorch {torch.__version__}; both layouts in one process, taking turns for {args.rounds} "
        f"rounds: seconds are medians per call, the ratio the median over rounds. " + args.note,
        "",
        "| precision | crop | NCHW s | channels-last s | channels-last vs NCHW |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["seconds"]
        lines.append(
            f"| {r['precision']} | {r['crop']} | {s['nchw']:.3f} | {s['channels-last']:.3f} | {r['speedup']['channels-last']:.2f}x |"
        )
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
