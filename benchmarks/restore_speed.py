"""Wall time of ``d2lnet restore`` on one photo, for several code trees and options, interleaved.

Each variant is ``NAME=SRC[:ARGS]``: the package under SRC (a ``src`` folder, e.g. an older
commit's, from ``git archive COMMIT src | tar -x -C /tmp/old``) run as the command a user
types, start-up included, with extra restore ARGS. Variants take turns, so that a change in
the machine's load hits all of them alike. ``--busy 1`` keeps one core busy with another
process meanwhile, as on a desktop doing other work.

    python benchmarks/restore_speed.py --variant before=/tmp/old/src after=src after-whole=src:--tile=0
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_isa, cpu_name, named, write_results
from PIL import Image


def spin(stop) -> None:  # noqa: ANN001 - a multiprocessing Event
    x = 0
    while not stop.is_set():
        x += 1


def test_photo(path: Path, size: tuple[int, int], quality: int, folder: Path, gray: bool = False) -> Path:
    """``path`` cropped to ``size`` (W, H) from its centre and saved as a JPEG of ``quality`` (grey: its luma)."""
    image = Image.open(path).convert("L" if gray else "RGB")
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    out = folder / f"photo_{size[0]}x{size[1]}_q{quality}.jpg"
    image.crop((left, top, left + size[0], top + size[1])).save(out, quality=quality)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", required=True, metavar="NAME=SRC[:ARGS]")
    parser.add_argument("--image", default=os.environ.get("D2LNET_DATA", "../shared/data") + "/test/LIVE1_color/bikes.png")
    parser.add_argument("--size", type=int, nargs=2, default=[768, 512], metavar=("W", "H"))
    parser.add_argument("--quality", type=int, default=30)
    parser.add_argument("--gray", action="store_true", help="a grey JPEG (restored by the grey model)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--busy", type=int, default=0, help="cores kept busy by other processes meanwhile")
    parser.add_argument("--note", default="", help="what else the machine was doing, for the record")
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = parser.parse_args()

    variants = {}
    for name, rest in named(args.variant).items():
        src, _, extra = rest.partition(":")
        variants[name] = (str(Path(src).resolve()), extra.split() if extra else [])
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    times: dict[str, list[float]] = {name: [] for name in variants}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            photo = test_photo(Path(args.image), tuple(args.size), args.quality, Path(tmp), args.gray)
            for rep in range(args.reps):
                for name, (src, extra) in variants.items():
                    env = {**os.environ, "PYTHONPATH": src}
                    command = [
                        sys.executable,
                        "-m",
                        "d2lnet",
                        "restore",
                        str(photo),
                        "-o",
                        f"{tmp}/{name}.png",
                        "--overwrite",
                        *extra,
                    ]
                    start = time.perf_counter()
                    subprocess.run(command, env=env, check=True, capture_output=True)
                    times[name].append(time.perf_counter() - start)
                    print(f"rep {rep} {name}: {times[name][-1]:.2f} s", flush=True)
            reference = np.asarray(Image.open(f"{tmp}/{next(iter(variants))}.png"), dtype=np.float64)
            agreement = {
                name: float(np.abs(np.asarray(Image.open(f"{tmp}/{name}.png"), dtype=np.float64) - reference).mean())
                for name in variants
            }
    finally:
        stop.set()
        for p in spinners:
            p.join()

    document = {
        "cpu": cpu_name(), "isa": cpu_isa(), "busy_cores": args.busy, "note": args.note, "photo": f"{args.size[0]}x{args.size[1]}, {'grey ' if args.gray else ''}JPEG QF {args.quality}",
        "variants": {name: {"args": " ".join(extra), "seconds": times[name], "median_s": statistics.median(times[name]),
                            "mean_abs_diff_to_first": agreement[name]} for name, (_, extra) in variants.items()},
    }  # fmt: skip
    first = statistics.median(next(iter(times.values())))
    lines = [f"`d2lnet restore` of a {document['photo']} photo, start-up included; {document['cpu']} ({document['isa']}); "
             f"{args.busy} core(s) kept busy by another process; median of {args.reps}, interleaved."
             + (f" {args.note}" if args.note else ""), "",
             "| variant | args | median s | speed-up vs first | mean abs diff to first (0-255) |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for name, row in document["variants"].items():
        lines.append(
            f"| {name} | {row['args'] or '(defaults)'} | {row['median_s']:.2f} | {first / row['median_s']:.2f}x | {row['mean_abs_diff_to_first']:.3f} |"
        )
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
