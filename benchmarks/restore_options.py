"""Gain and cost of the two restore options: the self-ensemble (``--tta``) and the DCT
quantization-constraint projection (``--project``), each against the plain restoration.

    python benchmarks/restore_options.py projection --data $D2LNET_DATA/train --images 12
    python benchmarks/restore_options.py tta --data $D2LNET_DATA/test/Classic5 --gray --quality 10

``projection`` decides whether the projection is on by default, so it is measured on images
held out of nothing but this decision: training images (never the test sets), centre crops.
Each image is compressed by the protocol's JPEG (:func:`d2lnet.jpeg.compress`), the file's
coefficients are read back, and PSNR (against the uncompressed crop) is measured for the JPEG,
the restoration, and the projected restoration. Results go to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name

from d2lnet import jpeg
from d2lnet.engine import Restorer
from d2lnet.images import center_crop, find_images_in, read_array, to_mode
from d2lnet.metrics import psnr
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY, load_model
from d2lnet.projection import project, read_components

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("option", choices=["projection", "tta"])
    parser.add_argument("--data", required=True, help="a folder of clean images (searched recursively)")
    parser.add_argument("--images", type=int, default=12, help="how many images (spread over the sorted folder)")
    parser.add_argument("--crop", type=int, default=256, help="centre crop side (0: whole images)")
    parser.add_argument("--quality", type=int, nargs="+", default=[10, 30, 50, 90])
    parser.add_argument("--gray", action="store_true", help="the grey model on the BT.601 Y channel")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="result name (default: restore_<option>_<color|gray>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    files = find_images_in([args.data])
    picks = [files[i] for i in np.linspace(0, len(files) - 1, min(args.images, len(files))).round().astype(int)]
    mode = "gray" if args.gray else "color"
    model = DEFAULT_GRAY if args.gray else DEFAULT_COLOR
    plain = Restorer(load_model(model), "cpu", tile="auto")
    ensemble = Restorer(load_model(model), "cpu", tile="auto", tta=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in picks:
            truth = to_mode(read_array(path), args.gray)
            truth = center_crop(truth, args.crop) if args.crop else truth
            for quality in args.quality:
                file = Path(tmp) / "x.jpg"
                file.write_bytes(jpeg.compress(truth, quality))
                degraded = jpeg.decompress(file.read_bytes())
                start = time.perf_counter()
                restored = plain.restore(degraded, quality)
                seconds = time.perf_counter() - start
                row = {
                    "image": path.name,
                    "quality": quality,
                    "jpeg": psnr(truth, degraded),
                    "restored": psnr(truth, restored),
                    "seconds": seconds,
                }
                if args.option == "projection":
                    start = time.perf_counter()
                    projected = project(restored, read_components(file))
                    row |= {"option": psnr(truth, projected), "option_seconds": time.perf_counter() - start}
                else:
                    start = time.perf_counter()
                    row |= {
                        "option": psnr(truth, ensemble.restore(degraded, quality)),
                        "option_seconds": time.perf_counter() - start,
                    }
                rows.append(row)
                print(
                    f"{path.name} q{quality}: jpeg {row['jpeg']:.3f} restored {row['restored']:.3f} {args.option} {row['option']:.3f}",
                    flush=True,
                )

    summary = []
    for quality in args.quality:
        sel = [r for r in rows if r["quality"] == quality]
        gains = np.array([r["option"] - r["restored"] for r in sel])
        summary.append({
            "quality": quality, "images": len(sel), "jpeg": np.mean([r["jpeg"] for r in sel]),
            "restored": np.mean([r["restored"] for r in sel]), "option": np.mean([r["option"] for r in sel]),
            "gain_mean": gains.mean(), "gain_min": gains.min(), "gain_max": gains.max(),
            "seconds": np.mean([r["seconds"] for r in sel]), "option_seconds": np.mean([r["option_seconds"] for r in sel]),
        })  # fmt: skip
    name = args.out or f"restore_{args.option}_{mode}"
    document = {
        "option": args.option, "model": model, "data": args.data, "crop": args.crop, "threads": args.threads,
        "cpu": cpu_name(), "torch": torch.__version__, "precision": plain.precision, "summary": summary, "images": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=1, default=float) + "\n")
    label = "projected" if args.option == "projection" else "x8 ensemble"
    lines = [
        f"# {args.option}: {model} on {len(picks)} images of {args.data} ({'centre ' + str(args.crop) + 'px' if args.crop else 'whole'})",
        "",
        f"Mean PSNR (dB); gain of the {label} restoration over the plain one, mean [min, max] over the images;",
        f"seconds per image for the restoration and for the option alone ({cpu_name()}, {args.threads} thread(s), {plain.precision}).",
        "",
        f"| QF | JPEG | restored | {label} | gain (dB) | restore s | option s |",
        "|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['quality']} | {s['jpeg']:.3f} | {s['restored']:.3f} | {s['option']:.3f} | "
            f"{s['gain_mean']:+.3f} [{s['gain_min']:+.3f}, {s['gain_max']:+.3f}] | {s['seconds']:.2f} | {s['option_seconds']:.2f} |"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
