"""Which training images are themselves decoded JPEGs, and at what quality (issue: BSDS500 as targets).

    python benchmarks/training_data_jpeg.py --out benchmarks/results/training_data_jpeg

Reads every image of ``$D2LNET_DATA/train`` and estimates the JPEG quality its pixels show
(:func:`d2lnet.jpeg.estimate_quality_from_pixels`: the quantization of the luma's 8x8 DCT on
the grid of the top-left pixel; None when there is none). A training target that is a decoded
JPEG teaches the model that its artifacts are clean, and a validation target of quality 95
makes "restoring" its own re-compression at 95 look like a loss. Grouped by source (the file
name's prefix, as ``../shared/DATA.md`` names them).
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from common import cpu_isa, cpu_name, write_results

from d2lnet.data import split_holdout
from d2lnet.evaluation.testsets import DATA_ENV
from d2lnet.images import find_images, read_array
from d2lnet.jpeg import estimate_quality_from_pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help=f"training images (default: ${DATA_ENV}/train)")
    parser.add_argument("--holdout", type=float, default=0.05, help="the recipes' held-out fraction, to mark those images")
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    if args.data is None and DATA_ENV not in os.environ:
        parser.error(f"give --data or set ${DATA_ENV}")
    folder = args.data or Path(os.environ[DATA_ENV]) / "train"

    files = find_images(folder)
    _, held = split_holdout(files, args.holdout)
    start = time.perf_counter()
    by_source: dict[str, list[int | None]] = collections.defaultdict(list)
    held_found: dict[str, int | None] = {}
    for path in files:
        quality = estimate_quality_from_pixels(read_array(path))
        by_source[path.name.split("_")[0]].append(quality)
        if path in held:
            held_found[path.name] = quality
    rows = []
    for source, found in sorted(by_source.items()):
        jpeg = sorted(q for q in found if q is not None)
        rows.append({
            "source": source,
            "images": len(found),
            "decoded_jpegs": len(jpeg),
            "qualities": dict(sorted(collections.Counter(jpeg).items())),
        })  # fmt: skip
    document = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_name(), "isa": cpu_isa()},
        "data": str(folder),
        "seconds": round(time.perf_counter() - start, 1),
        "sources": rows,
        "held_out": held_found,
    }
    lines = [
        "# Training images that are decoded JPEGs",
        "",
        f"{document['date']}; `python benchmarks/training_data_jpeg.py` over {len(files)} images of `$D2LNET_DATA/train` "
        f"in {document['seconds']:g} s ({document['machine']['cpu']}). The quality each image's pixels show "
        "(`d2lnet.jpeg.estimate_quality_from_pixels`); images that show none were never compressed, or were resized since.",
        "",
        "| source | images | decoded JPEGs | their qualities (quality: images) |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        qualities = ", ".join(f"{q}: {n}" for q, n in row["qualities"].items()) or "-"
        lines.append(f"| {row['source']} | {row['images']} | {row['decoded_jpegs']} | {qualities} |")
    jpeg_held = sum(q is not None for q in held_found.values())
    lines += ["", f"Held out for validation ({args.holdout:g}): {len(held_found)} images, {jpeg_held} of them decoded JPEGs."]
    write_results(args.out, document, "\n".join(lines))


if __name__ == "__main__":
    main()
