"""JPEGs beyond the protocol's: what the default restore gains on each kind users meet.

The protocol compresses once, with libjpeg's standard tables, colour at 4:2:0. Photos met in
the wild were often saved twice (an edited or re-shared picture: the second grid shifted from
the first), at 4:4:4 or 4:2:2 (editors, high-quality camera modes), or with tables of their own
(cameras, phones), for which the quality read from the file is the nearest IJG one.

Each held-out training image that was never a JPEG (the split the recipes validate on; never
the test sets) is cut to a centre crop, encoded each way at each quality, written to a file
and restored as ``d2lnet restore FILE`` does (quality read from the file, the model card's
tiling, the projection onto the file's coefficients). Mean PSNR against the uncompressed crop:

    python benchmarks/degradations.py --model d2lnet-s-color --out benchmarks/results/degradations_color

``--keep-444-chroma-from`` overrides the card's quality from which a 4:4:4 file keeps its own
chroma (``d2lnet.restore.keeps_file_chroma``); ``never`` and ``1`` measure the two choices at
every quality, which is how a card's value is chosen:

    python benchmarks/degradations.py --kinds 4:4:4 --quality 50 60 70 80 90 95 --keep-444-chroma-from never
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import cpu_isa, cpu_name, held_out_images, write_results

from d2lnet import jpeg, metrics
from d2lnet.data import Degradations
from d2lnet.engine import Restorer
from d2lnet.images import center_crop, read_image
from d2lnet.pretrained import load_model
from d2lnet.restore import restore_loaded

Encoder = Callable[[np.ndarray, int, np.random.Generator], bytes]

KINDS: dict[str, Encoder] = {
    "standard (4:2:0)": lambda image, qf, rng: jpeg.compress(image, qf),
    "4:4:4": lambda image, qf, rng: jpeg.compress(image, qf, subsampling=0),
    "4:2:2": lambda image, qf, rng: jpeg.compress(image, qf, subsampling=1),
    # The first quality drawn from 30-95 on a grid shifted by 1-7 pixels, as in training.
    "double, shifted grid": Degradations(double=1.0).encode,
    # The IJG tables of the quality with each entry scaled by 0.75-1.33 (log-uniform).
    "other tables": Degradations(tables=1.0).encode,
}
COLOUR_ONLY = {"4:4:4", "4:2:2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="d2lnet-s-color", help="a bundled name or weights file")
    parser.add_argument("--data", default=os.environ.get("D2LNET_DATA", "../shared/data") + "/train")
    parser.add_argument("--holdout", type=float, default=0.05, help="the recipes' [data] holdout")
    parser.add_argument("--limit", type=int, default=11, help="at most this many held-out images")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side (0: whole images)")
    parser.add_argument("--quality", type=int, nargs="+", default=[10, 30, 50, 90])
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument(
        "--keep-444-chroma-from",
        default="card",
        metavar="card|never|QF",
        help="from which quality a 4:4:4 file keeps its own chroma (default: the model card's)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    if args.keep_444_chroma_from != "card":
        never = args.keep_444_chroma_from == "never"
        model.card.inference["keep_444_chroma_from"] = None if never else int(args.keep_444_chroma_from)
    gray = model.config.in_channels == 1
    restorer = Restorer(model, "cpu", "auto", "auto")
    images = held_out_images(Path(args.data), args.holdout, args.limit, gray, never_jpeg=True)
    crops = [(name, center_crop(image, args.crop) if args.crop else image) for name, image in images]
    kinds = {kind: KINDS[kind] for kind in args.kinds if not (gray and kind in COLOUR_ONLY)}

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, encode in kinds.items():
            for qf in args.quality:
                start, rows = time.perf_counter(), []
                for i, (_, gt) in enumerate(crops):
                    path = Path(tmp) / f"{i}.jpg"
                    path.write_bytes(encode(gt, qf, np.random.default_rng([i, qf])))
                    loaded = read_image(path)
                    restored, _ = restore_loaded(loaded, restorer)
                    rows.append(
                        (metrics.psnr(gt, np.asarray(loaded.image)), metrics.psnr(gt, np.asarray(restored)), loaded.quality)
                    )
                row = {"kind": kind, "quality": qf, "psnr_jpeg": float(np.mean([r[0] for r in rows])),
                       "psnr": float(np.mean([r[1] for r in rows])), "read_quality": [r[2] for r in rows],
                       "seconds": time.perf_counter() - start}  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)

    document = {"model": args.model, "cpu": cpu_name(), "isa": cpu_isa(), "threads": args.threads,
                "keep_444_chroma_from": model.card.keep_444_chroma_from,
                "images": [n for n, _ in crops], "crop": args.crop, "results": results}  # fmt: skip
    write_results(args.out, document, markdown(document))


def markdown(document: dict) -> str:
    """PSNR of the JPEG and of its restoration per kind and quality, and the gain."""
    size = f"centre crops of {document['crop']}px" if document["crop"] else "whole"
    lines = [
        f"# The default restore on JPEGs beyond the protocol's: {document['model']}", "",
        f"{document['cpu']} ({document['isa']}), {document['threads']} thread(s); {len(document['images'])} held-out "
        f"training images that were never JPEGs, {size}. Mean PSNR (dB) against the uncompressed crop; "
        "'read QF': the qualities read from the files (the range over the images). 4:4:4 files keep their own chroma "
        f"from quality {document.get('keep_444_chroma_from') or 'none (never)'}.", "",
        "| kind | QF | JPEG | restored | gain | read QF |", "|---|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in document["results"]:
        low, high = min(r["read_quality"]), max(r["read_quality"])
        read = str(low) if low == high else f"{low}-{high}"
        lines.append(
            f"| {r['kind']} | {r['quality']} | {r['psnr_jpeg']:.3f} | {r['psnr']:.3f} | {r['psnr'] - r['psnr_jpeg']:+.3f} | {read} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
