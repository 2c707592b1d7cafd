"""The authors' released model file beside ``d2lnet-released``, in one process, call by call.

Issue 10's equal-configuration target: the same network size (width 64, depth 4, colour) as the
authors' ``D2LNet`` class, timed as each is run. The authors' file is not part of this repository
(``JPEG/JPEG/D2LNet.py`` of github.com/YeunkSuzy/Dual_Domain_Learning); pass its path. It imports
BasicSR only for its registry decorator and three unused names, which are stood in for when
BasicSR is not installed.

    python benchmarks/released_speed.py --authors-file PATH/D2LNet.py --out benchmarks/results/released_speed_cpu

Variants, taking turns call by call (``paired_speed.paired``):

- ``authors``: their module as a user runs it, ``model(x)`` on a contiguous tensor, under
  ``torch.autocast`` for bf16;
- ``authors-cl``: the same with weights and input in channels-last (oneDNN's fast layout), the
  best their file does without changing its code;
- ``ours``: ``d2lnet-released`` restored whole by :class:`d2lnet.engine.Restorer`, which is what
  ``d2lnet restore --tile 0`` runs (fused convolutions, fp32 FFTs under bf16; channels-last, or NCHW
  with Winograd convolutions on one thread of AVX2 kernels: :func:`d2lnet.engine.inference_layout`),
  though without the command's kept memory (:mod:`d2lnet.allocator`), a process-wide setting that
  would speed up the authors' module too (on two threads held to AVX2: 1.32x with it, 1.36x without).

The training step is the same for all: forward, an L1 loss on both stages' outputs, backward
and Adam; ours in the layout the trainer picks (:func:`d2lnet.device.training_channels_last`).
Before timing, the script checks that the two networks are the same size: ours has exactly the
authors' parameters less those their forward pass never uses
(``model_cost.released_unused_parameters``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from common import cpu_isa, cpu_name, write_results
from model_cost import released_unused_parameters
from paired_speed import paired

from d2lnet.device import training_channels_last
from d2lnet.engine import Restorer
from d2lnet.model import CONFIGS, D2LNetConfig, build


def stand_in_for_basicsr() -> None:
    """Modules named as the authors' file imports them, unless BasicSR itself is installed."""
    if importlib.util.find_spec("basicsr") is not None:
        return

    class Registry:
        def register(self) -> Callable[[type], type]:
            return lambda cls: cls

    names = {
        "basicsr": {},
        "basicsr.archs": {},
        "basicsr.archs.arch_util": {"ResidualBlockNoBN": None, "Upsample": None, "make_layer": None},
        "basicsr.utils": {},
        "basicsr.utils.registry": {"ARCH_REGISTRY": Registry()},
    }
    for name, attributes in names.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


def load_authors_class(path: Path) -> type[torch.nn.Module]:
    stand_in_for_basicsr()
    spec = importlib.util.spec_from_file_location("authors_d2lnet", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.D2LNet


def check_equal_size(authors: torch.nn.Module, ours: torch.nn.Module) -> dict:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    unused = released_unused_parameters(ours.config)
    sizes = {"authors": count(authors), "authors_unused": unused, "ours": count(ours)}
    if sizes["authors"] - unused != sizes["ours"]:
        raise SystemExit(f"not the same network size: {sizes}")
    return sizes


def authors_forward(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return run


def ours_forward(restorer: Restorer, x: torch.Tensor) -> Callable[[], None]:
    return lambda: restorer.restore_tensor(x)


def train_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, outputs: Callable) -> Callable[[], None]:
    """Forward, L1 on both stages' outputs against the input, backward, Adam."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out1, out2 = outputs(model(x))
        loss = F.l1_loss(out1.float(), x) + F.l1_loss(out2.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def forward_row(authors_class: type, config: D2LNetConfig, precision: str, size: int, rounds: int) -> dict:
    bf16, cl = precision == "bf16", torch.channels_last
    x = torch.rand(1, 3, size, size)
    make = lambda: authors_class(in_chn=3, wf=config.width, depth=config.depth).eval()  # noqa: E731
    calls = {
        "authors": authors_forward(make(), x, bf16),
        "authors-cl": authors_forward(make().to(memory_format=cl), x.contiguous(memory_format=cl), bf16),
        "ours": ours_forward(Restorer(build("d2lnet-released"), device="cpu", precision=precision, tile=None), x),
    }
    row = {"precision": precision, "kind": "forward", "size": size, **paired(calls, rounds)}
    print(row, file=sys.stderr, flush=True)
    return row


def train_row(authors_class: type, config: D2LNetConfig, precision: str, crop: int, rounds: int) -> dict:
    bf16, cl = precision == "bf16", torch.channels_last
    ours_layout = cl if training_channels_last(torch.device("cpu"), precision) else torch.contiguous_format
    crops = torch.rand(4, 3, crop, crop)
    make = lambda: authors_class(in_chn=3, wf=config.width, depth=config.depth).train()  # noqa: E731
    theirs = lambda out: (out[0], out[3])  # noqa: E731  [out_1, amp, phase, out_2]
    ours = build("d2lnet-released").to(memory_format=ours_layout).train()
    calls = {
        "authors": train_step(make(), crops, bf16, theirs),
        "authors-cl": train_step(make().to(memory_format=cl), crops.contiguous(memory_format=cl), bf16, theirs),
        "ours": train_step(ours, crops.contiguous(memory_format=ours_layout), bf16, lambda out: (out.out1, out.out2)),
    }
    row = {"precision": precision, "kind": "train step", "size": crop, "ours_channels_last": ours_layout == cl}
    row.update(paired(calls, rounds))
    print(row, file=sys.stderr, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--authors-file", type=Path, required=True, help="the authors' D2LNet.py")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--size", type=int, default=256, help="forward: one image of SIZE x SIZE")
    parser.add_argument("--train-crop", type=int, default=128, help="training step: batch 4 of crops this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9, help="calls per variant, taking turns")
    parser.add_argument("--steps", nargs="+", choices=["forward", "train"], default=["forward", "train"])
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if not args.authors_file.is_file():
        raise SystemExit(f"no such file: {args.authors_file}")

    torch.set_num_threads(args.threads)
    config = CONFIGS["d2lnet-released"]
    authors_class = load_authors_class(args.authors_file)
    torch.manual_seed(0)
    sizes = check_equal_size(authors_class(in_chn=3, wf=config.width, depth=config.depth), build("d2lnet-released"))
    rows = []
    for precision in args.precision:
        if "forward" in args.steps:
            rows.append(forward_row(authors_class, config, precision, args.size, args.rounds))
        if "train" in args.steps:
            rows.append(train_row(authors_class, config, precision, args.train_crop, args.rounds))

    names = ["authors", "authors-cl", "ours"]
    document = {"cpu": cpu_name(), "isa": cpu_isa(), "threads": args.threads, "torch": torch.__version__,
                "authors_file": args.authors_file.name, "parameters": sizes, "rounds": args.rounds,
                "note": args.note, "rows": rows}  # fmt: skip
    lines = [
        f"The authors' released D2LNet (width {config.width}, depth {config.depth}, colour) beside d2lnet-released, "
        f"{document['cpu']} ({document['isa']}), {args.threads} thread(s), PyTorch {torch.__version__}; one process, "
        f"taking turns call by call for {args.rounds} rounds: seconds are medians per call, speed-ups the median over "
        f"rounds of the authors' time over each one's in the same round. Parameters: authors {sizes['authors']:,} "
        f"({sizes['authors_unused']:,} unused), ours {sizes['ours']:,}. Forward: 1x3x{args.size}x{args.size} "
        f"(ours: `Restorer`, whole image); train step: 4x3x{args.train_crop}x{args.train_crop}, L1 on both "
        f"outputs, backward, Adam. " + args.note,
        "",
        "| precision | step | " + " | ".join(f"{n} s" for n in names) + " | authors-cl vs authors | ours vs authors |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['seconds'][n]:.3f}" for n in names)
        kind = r["kind"] + (" (ours NCHW)" if r.get("ours_channels_last") is False else "")
        lines.append(f"| {r['precision']} | {kind} | {cells} | {r['speedup']['authors-cl']:.2f}x | {r['speedup']['ours']:.2f}x |")
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
