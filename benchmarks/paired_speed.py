"""A d2lnet-s forward pass and training step under several code trees in one process, call by call.

``code_speed.py`` gives each measurement a fresh process; on a machine whose speed drifts by up to
1.5x within minutes (the 2-core CPUs this project gets), its medians can move more than the
change being measured. Here every tree's model code is loaded into the same process, and the
variants take turns call by call, so that both sides of a comparison run within a second of
each other; each round gives a ratio against the first variant, and the median of those ratios
is the figure to read. Freed memory is kept for reuse for all of them (``d2lnet.allocator`` of the
first tree that has it), so this compares the model code alone, not what the commands around it do.

Each variant is ``NAME=SRC`` (a ``src`` folder, e.g. ``git archive COMMIT src | tar -x -C /tmp/old``).
The training step is the trainer's: forward, loss, backward, gradient clipping, Adam (the tree's
own, ``d2lnet.train.adam`` where it has one) and the EMA of the weights.

    python benchmarks/paired_speed.py --variant before=/tmp/old/src after=src --out benchmarks/results/paired_speed_cpu
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from common import cpu_isa, cpu_name, named, write_results
from fourier_path import forward_step, inference_layout_of, train_step, training_layout_of


def load_tree(src: str) -> dict[str, types.ModuleType]:
    """The modules of the d2lnet package under ``src``, imported afresh beside any loaded before.

    Each tree's functions keep their own module globals, so trees coexist once their modules are
    out of ``sys.modules``; the package's modules import one another at the top only.
    """
    for name in [n for n in sys.modules if n == "d2lnet" or n.startswith("d2lnet.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        modules = {name: importlib.import_module(f"d2lnet.{name}") for name in ("model", "losses", "train", "device")}
        for optional in ("fusion", "allocator", "engine"):
            with contextlib.suppress(ImportError):
                modules[optional] = importlib.import_module(f"d2lnet.{optional}")
    finally:
        sys.path.pop(0)
    return modules


def forward_call(tree: dict, size: int, bf16: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    layout = inference_layout_of(tree.get("engine"), "bf16" if bf16 else "fp32")  # inference as the engine runs it
    model = tree["model"].build("d2lnet-s").to(memory_format=layout).eval()
    if "fusion" in tree:
        model = tree["fusion"].fuse_activations(model)
    return forward_step(model, torch.rand(1, 3, size, size).contiguous(memory_format=layout), bf16)


def train_call(tree: dict, crop: int, bf16: bool) -> Callable[[], None]:
    """The trainer's step in the layout the tree's trainer picks (channels-last, as every recipe
    asked, before ``run.channels_last = "auto"``)."""
    torch.manual_seed(0)
    layout = training_layout_of(tree["device"], "bf16" if bf16 else "fp32")
    model = tree["model"].build("d2lnet-s").to(memory_format=layout).train()
    x = torch.rand(4, 3, crop, crop).contiguous(memory_format=layout)
    return train_step(model, x, bf16, tree["train"], tree["losses"])


def paired(calls: dict[str, Callable[[], None]], rounds: int) -> dict:
    """Seconds per call (median) of each variant, and the median over rounds of each one's time
    relative to the first variant's in the same round. The order within a round rotates."""
    names = list(calls)
    for run in calls.values():  # warm-up: oneDNN primitives, first touch of the memory
        run()
        run()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    first = seconds[names[0]]
    return {
        "seconds": {name: statistics.median(s) for name, s in seconds.items()},
        "speedup": {name: statistics.median(a / b for a, b in zip(first, s)) for name, s in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", required=True, metavar="NAME=SRC")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--size", type=int, default=256, help="forward: one image of SIZE x SIZE")
    parser.add_argument("--train-crop", type=int, default=128, help="training step: batch 4 of crops this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15, help="calls per variant, taking turns")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    variants = named(args.variant)
    trees = {name: load_tree(src) for name, src in variants.items()}
    if keeper := next((t["allocator"] for t in trees.values() if "allocator" in t), None):
        keeper.keep_freed_memory()
    torch.set_num_threads(args.threads)
    rows = []
    for precision in args.precision:
        for kind, make, size in (("forward", forward_call, args.size), ("train step", train_call, args.train_crop)):
            calls = {name: make(tree, size, precision == "bf16") for name, tree in trees.items()}
            rows.append({"precision": precision, "kind": kind, "size": size, **paired(calls, args.rounds)})
            del calls
            print(rows[-1], file=sys.stderr, flush=True)

    names = list(variants)
    document = {"cpu": cpu_name(), "isa": cpu_isa(), "threads": args.threads, "torch": torch.__version__,
                "variants": variants, "rounds": args.rounds, "note": args.note, "rows": rows}  # fmt: skip
    lines = [
        f"d2lnet-s (random weights), {document['cpu']} ({document['isa']}), {args.threads} thread(s), PyTorch "
        f"{torch.__version__}; all trees in one process, taking turns call by call for {args.rounds} rounds: "
        f"seconds are medians per call, speed-ups the median over rounds of {names[0]}'s time over each one's "
        f"in the same round. Forward: 1x3x{args.size}x{args.size}; train step: 4x3x{args.train_crop}x"
        f"{args.train_crop}, the trainer's (forward, loss, backward, clipping, the tree's Adam, EMA, in the layout "
        f"its trainer picks). " + args.note,
        "",
        f"| precision | step | {' | '.join(f'{n} s' for n in names)} | "
        + " | ".join(f"{n} vs {names[0]}" for n in names[1:])
        + " |",
        "|---|---|" + "---:|" * (2 * len(names) - 1),
    ]
    for r in rows:
        cells = " | ".join(f"{r['seconds'][n]:.3f}" for n in names)
        ratios = " | ".join(f"{r['speedup'][n]:.2f}x" for n in names[1:])
        lines.append(f"| {r['precision']} | {r['kind']} | {cells} | {ratios} |")
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
