"""A d2lnet-s forward pass and training step under several code trees, interleaved; and where the time goes.

The forward pass is the engine's: with convolutions fused with their activations where the tree
has :mod:`d2lnet.fusion`, in NCHW memory where its Winograd convolutions pay (one thread, float32,
AVX2 kernels); and each worker keeps freed memory as the commands do where the tree
has :mod:`d2lnet.allocator`.

Each variant is ``NAME=SRC``: the package under SRC (for the previous commit,
``git archive HEAD src | tar -x -C /tmp/old``). Every measurement runs in a fresh process with
that tree first on the path, the variants taking turns, so that a change in the machine's load
hits all of them alike; the last turn also profiles one call into operator groups (those of
``fourier_path.py``).

    python benchmarks/code_speed.py --variant before=/tmp/old/src after=src --out benchmarks/results/code_speed_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(kind: str, precision: str, size: int, threads: int, calls: int) -> dict:
    """Time ``calls`` calls (after one warm-up) in this process, then profile one."""
    try:  # as the commands run, in trees that keep freed memory for reuse
        from d2lnet.allocator import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    import torch
    from fourier_path import GROUPS, forward_step, inference_layout_of, profile, train_step, training_layout_of

    from d2lnet import device, engine
    from d2lnet.model import build

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:  # inference as the engine runs it, in trees that fuse convolutions with their activations
        from d2lnet import fusion
    except ImportError:
        fusion = None
    # the layouts the tree's engine and trainer pick
    layout = inference_layout_of(engine, precision) if kind == "forward" else training_layout_of(device, precision)
    model = build("d2lnet-s").to(memory_format=layout)
    model.eval() if kind == "forward" else model.train()
    if kind == "forward" and fusion is not None:
        model = fusion.fuse_activations(model)
    shape = (1, 3, size, size) if kind == "forward" else (4, 3, size, size)
    x = torch.rand(*shape).contiguous(memory_format=layout)
    run = (forward_step if kind == "forward" else train_step)(model, x, precision == "bf16")
    run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "profile": profile(run), "groups": list(GROUPS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", required=True, metavar="NAME=SRC")
    parser.add_argument("--precision", nargs="+", default=None, help="default: fp32, and bf16 where native")
    parser.add_argument("--size", type=int, default=256, help="forward: one image of SIZE x SIZE")
    parser.add_argument("--train-crop", type=int, default=128, help="training step: batch 4 of crops this size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="turns per variant (a process each)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per turn (median)")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "PRECISION", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, precision, size = args.worker
        print(json.dumps(worker(kind.replace("_", " "), precision, int(size), args.threads, args.calls)))
        return

    import torch
    from common import cpu_isa, cpu_name, named, write_results

    from d2lnet.device import cpu_has_native_bf16

    variants = named(args.variant)
    precisions = args.precision or (["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])
    rows = []
    for precision in precisions:
        for kind, size in (("forward", args.size), ("train step", args.train_crop)):
            seconds: dict[str, list[float]] = {name: [] for name in variants}
            shares: dict[str, dict[str, float]] = {}
            for _ in range(args.reps):
                for name, src in variants.items():
                    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(src).resolve()), str(HERE)])}
                    command = [sys.executable, str(HERE / "code_speed.py"), "--variant", "x", "--threads", str(args.threads),
                               "--calls", str(args.calls), "--worker", kind.replace(" ", "_"), precision, str(size)]  # fmt: skip
                    result = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
                    seconds[name].append(result["seconds"])
                    shares[name], groups = result["profile"], result["groups"]
            row = {"precision": precision, "kind": kind, "size": size,
                   "seconds": {n: statistics.median(s) for n, s in seconds.items()}, "profile": shares}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    names = list(variants)
    document = {"cpu": cpu_name(), "isa": cpu_isa(), "threads": args.threads, "torch": torch.__version__,
                "variants": variants, "note": args.note, "rows": rows}  # fmt: skip
    head = [
        f"d2lnet-s (random weights), {document['cpu']} ({document['isa']}), {args.threads} thread(s), PyTorch "
        f"{torch.__version__}; each cell the median over {args.reps} processes per variant, taking turns, of the "
        f"median of {args.calls} calls. Forward: 1x3x{args.size}x{args.size}; train step: 4x3x{args.train_crop}x"
        f"{args.train_crop}, forward, loss, backward, gradient clipping, Adam (the tree's own), EMA. Profile: share of self CPU time, {' / '.join(names)}. "
        + args.note,
        "",
        f"| precision | step | {' | '.join(f'{n} s' for n in names)} | speed-up ({names[-1]} vs {names[0]}) | "
        + " | ".join([*groups, "other"])
        + " |",
        "|---|---|" + "---:|" * (len(names) + 1 + len(groups) + 1),
    ]
    for r in rows:
        cells = " | ".join(f"{r['seconds'][n]:.3f}" for n in names)
        speedup = r["seconds"][names[0]] / r["seconds"][names[-1]]
        profile = " | ".join(" / ".join(f"{r['profile'][n][g]:.0%}" for n in names) for g in [*groups, "other"])
        head.append(f"| {r['precision']} | {r['kind']} | {cells} | {speedup:.2f}x | {profile} |")
    write_results(args.out, document, "\n".join(head))


if __name__ == "__main__":
    main()
