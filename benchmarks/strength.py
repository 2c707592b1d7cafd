"""What ``d2lnet restore --strength S`` costs in PSNR: the bundled colour model's output blended
with its input, ``input + S * (restored - input)``, against the uncompressed original.

    python benchmarks/strength.py      # 256x256 centre crops of the first 8 LIVE1 colour images, QF 10 and 50

Each crop (on the JPEG grid) is written as a JPEG file by the protocol's encoder
(:func:`d2lnet.jpeg.compress`), read back as ``d2lnet restore`` reads it, and restored as it
restores it (:func:`d2lnet.restore.restore_loaded`: the quality read from the file, the engine's
defaults, the projection onto the file's coefficients after the blend), once per strength.
PSNR and SSIM on uint8 RGB (:mod:`d2lnet.metrics`), mean over the images; one CPU thread.
Writes ``benchmarks/results/strength.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet import jpeg
from d2lnet.engine import Restorer
from d2lnet.images import center_crop, find_images, read_array, read_image
from d2lnet.metrics import psnr, ssim
from d2lnet.pretrained import DEFAULT_COLOR, load_model
from d2lnet.restore import restore_loaded

RESULTS = Path(__file__).parent / "results"
DATA = Path(os.environ.get("D2LNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "test" / "LIVE1_color"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="folder of ground-truth images")
    parser.add_argument("--images", type=int, default=8, help="the first N images of the folder, by name")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in pixels; 0: whole images")
    parser.add_argument("--quality", nargs="+", type=int, default=[10, 50])
    parser.add_argument("--strength", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    paths = find_images(args.data, recursive=False)[: args.images]
    restorer = Restorer(load_model(DEFAULT_COLOR), "cpu", tile="auto")
    load_before, start = os.getloadavg(), time.perf_counter()
    scores: dict[tuple[int, float], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            truth = read_array(path)
            truth = center_crop(truth, args.crop) if args.crop else truth
            for quality in args.quality:
                file = Path(tmp) / f"{path.stem}_q{quality}.jpg"
                file.write_bytes(jpeg.compress(truth, quality))
                loaded = read_image(file)
                scores.setdefault((quality, -1.0), []).append(
                    (psnr(truth, np.asarray(loaded.image)), ssim(truth, np.asarray(loaded.image)))
                )
                for strength in args.strength:
                    restored, _ = restore_loaded(loaded, restorer, strength=strength)
                    scores.setdefault((quality, strength), []).append(
                        (psnr(truth, np.asarray(restored)), ssim(truth, np.asarray(restored)))
                    )
    seconds = time.perf_counter() - start

    def mean(key: tuple[int, float]) -> list[float]:
        return [round(float(np.mean([s[i] for s in scores[key]])), 4) for i in range(2)]

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/strength.py", *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_name(),
            "isa": cpu_isa(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": DEFAULT_COLOR,
            "images": [p.name for p in paths],
            "crop": args.crop or None,
            "tile": restorer.tile_for(args.crop or 10_000, args.crop or 10_000),
            "overlap": restorer.overlap,
            "precision": restorer.precision,
            "projection": True,
            "seconds": round(seconds, 1),
        },
        "cells": "[PSNR dB, SSIM], mean over the images",
        "results": [
            {"quality": q, "jpeg": mean((q, -1.0)), "strength": {str(s): mean((q, s)) for s in args.strength}}
            for q in args.quality
        ],
    }
    write_results(args.out / "strength", report, markdown(report))


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    strengths = list(report["results"][0]["strength"])
    lines = [
        f"# Restoration strength: {s['model']}",
        "",
        f"`{report['command']}`; {report['date']}; {m['cpu']} ({m['isa']}), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), load average {m['loadavg_before'][0]:.1f} before; {len(s['images'])} LIVE1 colour "
        f"images ({', '.join(s['images'])})"
        + (f", centre crops of {s['crop']}x{s['crop']}" if s["crop"] else ", whole")
        + f"; tiles of {s['tile']} overlapping by {s['overlap']}, precision {s['precision']}, projection on; {s['seconds']:g} s.",
        "",
        "Each output is `input + S * (restored - input)` (in float, before rounding and the projection), as "
        "`d2lnet restore --strength S` writes it. Mean PSNR (dB) / SSIM against the uncompressed crops:",
        "",
        "| QF | JPEG | " + " | ".join(f"S = {float(x):g}" for x in strengths) + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in strengths) + " |",
    ]
    for row in report["results"]:
        cells = [row["jpeg"], *(row["strength"][x] for x in strengths)]
        lines.append(f"| {row['quality']} | " + " | ".join(f"{p:.2f} / {q:.4f}" for p, q in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
