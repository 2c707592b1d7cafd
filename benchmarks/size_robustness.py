"""Whole images against tiles, on training images held out of training (never the test sets).

For each model, quality and inference policy (whole image, or tiles of N pixels), the mean PSNR
of the restored held-out images, next to JPEG's. The policy that scores best decides the model
card's ``inference.tile``; a size-robust model loses nothing on whole images.

    python benchmarks/size_robustness.py --model d2lnet-s-color --tiles 0 96 --out benchmarks/results/size_robustness
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_isa, cpu_name, held_out_images, write_results

from d2lnet import jpeg, metrics
from d2lnet.cards import DEFAULT_OVERLAP
from d2lnet.engine import Restorer
from d2lnet.pretrained import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["d2lnet-s-color"], help="bundled names or weights files")
    parser.add_argument("--data", default=os.environ.get("D2LNET_DATA", "../shared/data") + "/train")
    parser.add_argument("--holdout", type=float, default=0.05, help="the recipes' [data] holdout")
    parser.add_argument("--limit", type=int, default=12)
    parser.add_argument("--never-jpeg", action="store_true", help="only held-out images that were never JPEGs")
    parser.add_argument("--match", default="", help="only held-out images whose name contains this")
    parser.add_argument("--quality", type=int, nargs="+", default=[10, 30, 50, 70, 90, 95])
    parser.add_argument("--tiles", type=int, nargs="+", default=[0, 96], help="0: whole images")
    parser.add_argument("--overlap", type=int, nargs="+", default=[32], help="tile overlaps to try (each with every tile)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = []
    for name in args.model:
        model = load_model(name)
        gray = model.config.in_channels == 1
        images = held_out_images(Path(args.data), args.holdout, args.limit, gray, args.never_jpeg, args.match)
        pairs = {qf: [(gt, jpeg.roundtrip(gt, qf)) for _, gt in images] for qf in args.quality}
        policies = [(tile, overlap) for tile in args.tiles for overlap in (args.overlap if tile else [0])]
        for tile, overlap in policies:
            restorer = Restorer(model, "cpu", args.precision, tile or None, overlap)
            for qf in args.quality:
                start = time.perf_counter()
                psnr = [metrics.psnr(gt, restorer.restore(lq, qf)) for gt, lq in pairs[qf]]
                row = {"model": name, "tile": tile or "whole", "overlap": overlap, "quality": qf, "psnr": float(np.mean(psnr)),
                       "psnr_jpeg": float(np.mean([metrics.psnr(gt, lq) for gt, lq in pairs[qf]])),
                       "seconds": time.perf_counter() - start, "psnr_images": [float(v) for v in psnr]}  # fmt: skip
                results.append(row)
                print(json.dumps(row), flush=True)

    document = {"cpu": cpu_name(), "isa": cpu_isa(), "threads": args.threads, "precision": args.precision,
                "images": [n for n, _ in images], "holdout": args.holdout, "never_jpeg": args.never_jpeg,
                "results": results}  # fmt: skip
    write_results(args.out, document, markdown(document))


def policy(row: dict) -> str:
    """A row's inference policy as a column name: ``whole``, or ``tile T`` (``tile T/O`` when
    the overlap O is not the default, DEFAULT_OVERLAP)."""
    if row["tile"] == "whole":
        return "whole"
    overlap = row.get("overlap", DEFAULT_OVERLAP)
    return f"tile {row['tile']}" + ("" if overlap == DEFAULT_OVERLAP else f"/{overlap}")


def markdown(document: dict) -> str:
    """One table per model: PSNR per quality and policy, whole minus the best tiling, and the
    seconds each policy took over all qualities."""
    kind = "that were never JPEGs " if document.get("never_jpeg") else ""
    lines = [f"Held-out training images {kind}({len(document['images'])}), {document['cpu']} ({document['isa']}), "
             f"{document['threads']} thread(s), precision {document['precision']}.", ""]  # fmt: skip
    for name in dict.fromkeys(r["model"] for r in document["results"]):
        rows = [r for r in document["results"] if r["model"] == name]
        policies = list(dict.fromkeys(policy(r) for r in rows))
        lines += [f"### {name}", "", "| QF | JPEG | " + " | ".join(policies) + " | whole - best tile |",
                  "|---:|---:|" + "---:|" * (len(policies) + 1)]  # fmt: skip
        for qf in dict.fromkeys(r["quality"] for r in rows):
            by_policy = {policy(r): r["psnr"] for r in rows if r["quality"] == qf}
            jpeg_psnr = next(r["psnr_jpeg"] for r in rows if r["quality"] == qf)
            tiled = [v for p, v in by_policy.items() if p != "whole"]
            delta = f"{by_policy['whole'] - max(tiled):+.3f}" if "whole" in by_policy and tiled else ""
            lines.append(f"| {qf} | {jpeg_psnr:.3f} | " + " | ".join(f"{by_policy[p]:.3f}" for p in policies) + f" | {delta} |")
        seconds = {p: sum(r["seconds"] for r in rows if policy(r) == p) for p in policies}
        lines += ["| seconds | | " + " | ".join(f"{s:.0f}" for s in seconds.values()) + " | |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
