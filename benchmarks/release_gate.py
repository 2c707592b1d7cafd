"""Does a candidate replace the bundled model? The release rule, image by image.

Each view is a pair of ``size_robustness.py --out`` documents on the same held-out images, the
bundled model's and the candidate's, each run with its own card's policy (one policy per file).
A candidate passes when, on every view,

- it is ahead on the mean over the qualities measured, and
- at no quality is it behind by more than ``--tolerance`` dB (0.01, the precision of the
  README's tables).

Both views are held-out *training* images, and grey release 1 trained on all of them (the
hold-out came later), so a strict win at every quality on them is biased toward it: the
tolerance keeps that bias from vetoing a model that is as good there and better elsewhere. The
paired standard error of each difference (over images) is printed beside it, for scale.

    python benchmarks/size_robustness.py --model d2lnet-s-gray --tiles 96 --overlap 32 --limit 8 --out OLD8
    python benchmarks/size_robustness.py --model RUN/release.safetensors --tiles 256 --overlap 16 --limit 8 --out NEW8
    python benchmarks/release_gate.py --view "first 8" OLD8.json NEW8.json --view "never-JPEG 11" OLD11.json NEW11.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from common import write_results


def per_image(document: dict) -> dict[int, np.ndarray]:
    """Quality -> the PSNR of each image, from a document with one model and one policy."""
    rows = document["results"]
    if len({(r["model"], r["tile"], r.get("overlap")) for r in rows}) != 1:
        raise SystemExit("each document must hold one model in one policy (run size_robustness.py once per model)")
    if any("psnr_images" not in r for r in rows):
        raise SystemExit("a document without per-image PSNR (psnr_images): re-run size_robustness.py")
    return {r["quality"]: np.asarray(r["psnr_images"]) for r in rows}


def compare(bundled: dict, candidate: dict, tolerance: float) -> dict:
    """The paired differences (candidate - bundled) per quality, their mean and standard error,
    and whether this view passes the rule."""
    if bundled["images"] != candidate["images"]:
        raise SystemExit("the two documents of a view are not on the same images")
    old, new = per_image(bundled), per_image(candidate)
    if old.keys() != new.keys():
        raise SystemExit("the two documents of a view are not at the same qualities")
    rows = []
    for qf in sorted(old):
        d = new[qf] - old[qf]
        error = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
        rows.append(
            {
                "quality": qf,
                "difference": float(d.mean()),
                "standard_error": error,
                "ahead": int((d > 0).sum()),
                "images": int(d.size),
            }
        )
    mean = float(np.mean([r["difference"] for r in rows]))
    worst = min(r["difference"] for r in rows)
    return {"rows": rows, "mean": mean, "worst": worst, "passes": mean > 0 and worst >= -tolerance}


def markdown(views: dict[str, dict], tolerance: float) -> str:
    lines = [f"Candidate - bundled, mean PSNR over images (dB); paired standard error in brackets; tolerance {tolerance} dB.", ""]
    qualities = [r["quality"] for r in next(iter(views.values()))["rows"]]
    lines += [
        "| view | " + " | ".join(f"QF {q}" for q in qualities) + " | mean | passes |",
        "|---|" + "---:|" * (len(qualities) + 2),
    ]
    for name, view in views.items():
        cells = [f"{r['difference']:+.3f} ({r['standard_error']:.3f})" for r in view["rows"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {view['mean']:+.3f} | {'yes' if view['passes'] else 'no'} |")
    verdict = all(v["passes"] for v in views.values())
    lines += ["", "**Passes** the release rule on every view." if verdict else "**Does not pass** the release rule."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--view", nargs=3, action="append", required=True, metavar=("NAME", "BUNDLED_JSON", "CANDIDATE_JSON"))
    parser.add_argument("--tolerance", type=float, default=0.01, help="the largest loss at one quality that passes (dB)")
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md")
    args = parser.parse_args()
    views = {}
    for name, old, new in args.view:
        views[name] = compare(json.loads(Path(old).read_text()), json.loads(Path(new).read_text()), args.tolerance)
    write_results(args.out, {"tolerance": args.tolerance, "views": views}, markdown(views, args.tolerance))
    sys.exit(0 if all(v["passes"] for v in views.values()) else 1)


if __name__ == "__main__":
    main()
