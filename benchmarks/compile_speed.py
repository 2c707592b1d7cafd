"""Does ``--compile`` pay? Its compile time, then a restore compiled against the default eager one.

In one process: the first compiled restore (which compiles, from Inductor's on-disk cache when
a previous run left one), then eager and compiled restores taking turns. The number of photos
after which compiling pays is the compile time over the time it saves per photo. Run it twice
to see the cold and the warm cache. Freed memory is kept for reuse, as the command keeps it
(:mod:`d2lnet.allocator`).

    python benchmarks/compile_speed.py --out benchmarks/results/compile_speed_cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet.allocator import keep_freed_memory
from d2lnet.engine import Restorer
from d2lnet.pretrained import DEFAULT_COLOR, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_COLOR)
    parser.add_argument("--size", type=int, nargs=2, default=[768, 512], metavar=("W", "H"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    keep_freed_memory()  # as `d2lnet restore [--compile]` runs
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 3, args.size[1], args.size[0])
    eager = Restorer(load_model(args.model), "cpu", tile="auto")
    compiled = Restorer(load_model(args.model), "cpu", tile="auto", compile=True)
    start = time.perf_counter()
    compiled.restore_tensor(x, 30)
    first = time.perf_counter() - start
    if compiled.net.error:
        raise SystemExit(f"compiling failed: {compiled.net.error}")
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.reps):
        for name, restorer in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            restorer.restore_tensor(x, 30)
            times[name].append(time.perf_counter() - start)
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    saved = eager_s - compiled_s
    document = {
        "cpu": cpu_name(), "isa": cpu_isa(), "torch": torch.__version__, "threads": args.threads, "note": args.note,
        "model": args.model, "size": args.size, "first_compiled_s": first, "compile_s": compiled.net.compile_seconds,
        "seconds": times, "eager_median_s": eager_s, "compiled_median_s": compiled_s,
        "photos_to_pay_off": compiled.net.compile_seconds / saved if saved > 0 else None,
    }  # fmt: skip
    pays = f"{document['photos_to_pay_off']:.0f} photos" if saved > 0 else "never"
    lines = [
        f"`Restorer(compile=True)` against the default (eager, fused convolutions), {args.model}, a random "
        f"{args.size[0]}x{args.size[1]} image at QF 30 in the card's tiles; {document['cpu']} ({document['isa']}), "
        f"{args.threads} thread(s), PyTorch {torch.__version__}; median of {args.reps}, interleaved. {args.note}",
        "",
        "| compile s | eager s | compiled s | speed-up | pays off after |",
        "|---:|---:|---:|---:|---:|",
        f"| {compiled.net.compile_seconds:.1f} | {eager_s:.3f} | {compiled_s:.3f} | {eager_s / compiled_s:.2f}x | {pays} |",
    ]
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
