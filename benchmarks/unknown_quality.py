"""What hosts that give pixels only (spandrel, ONNX with quality 0) lose: the bundled blind model told the
JPEG quality factor, told the quality its pixels show (d2lnet.jpeg.estimate_quality_from_pixels: what
`d2lnet restore` does for a PNG and the spandrel call does), and told nothing (its learned
unknown-quality embedding).

    python benchmarks/unknown_quality.py      # 256x256 centre crops of the first 8 LIVE1 colour images, QF 10 30 50 70 90

Writes ``benchmarks/results/unknown_quality.json`` and ``.md``. The images go through
d2lnet's evaluation protocol (:func:`d2lnet.evaluation.protocol.evaluate_set`: Pillow JPEG at
each QF, PSNR / SSIM / PSNR-B on uint8 RGB; centre crops, on the JPEG grid, keep it to a few
minutes of one CPU thread) with the engine's defaults (``tile="auto"``: the
model card's tile, 96 with a 32-pixel overlap; ``precision="auto"``), on one CPU thread. The
model columns differ only in the quality handed to the model: the one each image was compressed
at (what ``d2lnet restore`` reads from a JPEG file), the one estimated from the decoded pixels,
or None (unknown).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet.evaluation.methods import JPEG_METHOD, Method, load_method
from d2lnet.evaluation.protocol import evaluate_set, mean_scores
from d2lnet.evaluation.testsets import image_set
from d2lnet.jpeg import estimate_quality_from_pixels

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "test" / "LIVE1_color"
KNOWN, PIXELS, UNKNOWN = "known QF", "QF from pixels", "unknown QF"


@dataclass
class UnknownQuality(Method):
    """A model column that is never told the quality factor."""

    def restore(self, image: np.ndarray, quality: int) -> np.ndarray:
        return self.restorer.restore(image, None)


@dataclass
class PixelQuality(Method):
    """A model column told the quality the decoded pixels show; counts the estimates that are right."""

    right: dict[int, int] = field(default_factory=dict)

    def restore(self, image: np.ndarray, quality: int) -> np.ndarray:
        estimate = estimate_quality_from_pixels(image)
        self.right[quality] = self.right.get(quality, 0) + (estimate == quality)
        return self.restorer.restore(image, estimate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="d2lnet-s-color")
    parser.add_argument("--data", type=Path, default=DATA, help="folder of ground-truth images")
    parser.add_argument("--images", type=int, default=8, help="the first N images of the folder, by name")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side in pixels; 0: whole images")
    parser.add_argument("--quality", nargs="+", type=int, default=[10, 30, 50, 70, 90])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images = image_set(args.data, gray=False)
    images = replace(images, paths=images.paths[: args.images], crop=args.crop or None)
    known = load_method(args.model, torch.device("cpu"), tile="auto")
    known.name = KNOWN
    unknown = UnknownQuality(UNKNOWN, known.model, known.device, known.tile, known.precision, source=args.model)
    pixels = PixelQuality(PIXELS, known.model, known.device, known.tile, known.precision, source=args.model)
    baseline = load_method("jpeg", torch.device("cpu"), tile="auto")
    load_before, start = os.getloadavg(), time.perf_counter()
    means = mean_scores(evaluate_set(images, [baseline, known, pixels, unknown], args.quality))
    seconds = time.perf_counter() - start

    by_key = {(m.quality, m.method): m for m in means}
    rows = [
        {
            "quality": q,
            **{name: [round(v, 4) for v in by_key[q, name].scores] for name in (JPEG_METHOD, KNOWN, PIXELS, UNKNOWN)},
            "pixel_estimates_right": pixels.right.get(q, 0),
        }
        for q in args.quality
    ]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "isa": cpu_isa(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "model": args.model,
            "images": [p.name for p in images.paths],
            "qualities": args.quality,
            "crop": images.crop,
            "tile": known.restorer.tile_for(512, 768),
            "overlap": known.restorer.overlap,
            "precision": known.restorer.precision,
            "seconds": round(seconds, 1),
        },
        "cells": "[PSNR dB, SSIM, PSNR-B dB], mean over the images",
        "results": rows,
    }
    write_results(args.out / "unknown_quality", report, markdown(report))


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"# Known against unknown JPEG quality: {s['model']}",
        "",
        f"{report['date']}; {m['cpu']} ({m['isa']}), torch {m['torch']} with {m['torch_threads']} thread(s); "
        f"{len(s['images'])} LIVE1 colour images ({', '.join(s['images'])})"
        + (f", centre crops of {s['crop']}x{s['crop']}" if s["crop"] else ", whole")
        + f"; tiles of {s['tile']} overlapping by "
        f"{s['overlap']} (the engine's default for this model), precision {s['precision']}; {s['seconds']:g} s.",
        "Mean PSNR (dB) / SSIM / PSNR-B (dB). 'known QF': the model is told the quality each image was compressed "
        "at; 'QF from pixels': the quality the decoded pixels show (`estimate_quality_from_pixels`, as `d2lnet restore` "
        "does for a PNG and the spandrel call does; 'right': how many images it found exactly); 'unknown QF': it is "
        "told nothing, as ONNX callers with quality 0 do.",
        "",
        "| QF | JPEG | known QF | QF from pixels | right | unknown QF | from pixels - known, PSNR | unknown - known, PSNR |",
        "| ---: | --- | --- | --- | ---: | --- | ---: | ---: |",
    ]
    n = len(s["images"])
    for row in report["results"]:
        columns = (JPEG_METHOD, KNOWN, PIXELS, UNKNOWN)
        jpeg, known, pixels, unknown = (" / ".join((f"{a:.2f}", f"{b:.4f}", f"{c:.2f}")) for a, b, c in (row[k] for k in columns))
        lines.append(
            f"| {row['quality']} | {jpeg} | {known} | {pixels} | {row['pixel_estimates_right']}/{n} | {unknown} "
            f"| {row[PIXELS][0] - row[KNOWN][0]:+.3f} | {row[UNKNOWN][0] - row[KNOWN][0]:+.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
