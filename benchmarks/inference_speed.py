"""Inference speed of each named D2LNet configuration, whole-image and tiled, in megapixels per second.

    python benchmarks/inference_speed.py                                # CPU, fp32
    python benchmarks/inference_speed.py --precision bf16               # CPU with AMX/AVX512-BF16, or CUDA

Writes ``benchmarks/results/inference_speed_<device>[_<precision>].json`` and ``.md``.
Every configuration in ``d2lnet.model.CONFIGS`` runs with untrained weights (speed does
not depend on them) through the engine, :class:`d2lnet.restore.Restorer`, on one
768x512 RGB image: whole, and in tiles (``--tiles``, default 256 and 96, overlapping by
32: the 256-pixel tiles cover about twice the image's pixels, the 96-pixel ones, the
bundled models' training crop and default, about 2.6 times). Each measurement is one warm-up on a 256x256
crop (one tile: the first call's one-off costs), then up to ``--repeats`` timed runs,
fewer once ``--budget`` seconds are spent (always at least one); the median is reported.
Freed memory is kept for reuse, as the commands keep it (:mod:`d2lnet.allocator`): without
that, a d2lnet-s restore of the whole image took 1.2-1.4x as long on two threads.

The load average is recorded before and after: on a shared machine (a training run
beside it, say) the numbers are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet.allocator import keep_freed_memory
from d2lnet.device import resolve_device
from d2lnet.engine import Restorer
from d2lnet.model import CONFIGS, build

RESULTS = Path(__file__).parent / "results"
OVERLAP = 32


def measure(restorer: Restorer, image: torch.Tensor, quality: int | None, repeats: int, budget: float) -> list[float]:
    """Seconds per run of ``restorer`` on ``image``, after a warm-up on a 256x256 crop."""
    restorer.restore_tensor(image[..., :256, :256], quality)
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < budget):
        start = time.perf_counter()
        restorer.restore_tensor(image, quality)  # returns on the CPU, so CUDA work is finished
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp16 needs CUDA; bf16 runs on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16)",
    )
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--tiles", nargs="+", type=int, default=[256, 96], help="tile sizes to measure besides whole images")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, at most")
    parser.add_argument("--budget", type=float, default=40.0, help="seconds per measurement after which no run is added")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's)")
    parser.add_argument("--note", default="", help="a line about the conditions, for the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    kept = keep_freed_memory()  # as `d2lnet restore` runs: no fresh pages for each large tensor
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    image = torch.rand(1, 3, args.height, args.width)
    megapixels = args.height * args.width / 1e6
    load_before = os.getloadavg()
    rows = []
    for name in args.configs:
        model = build(name)
        quality = 50 if model.config.quality_conditioning else None
        for mode, tile in (("whole", None), *((f"tiled {t}", t) for t in args.tiles)):
            restorer = Restorer(model, device, args.precision, tile=tile, overlap=OVERLAP)
            times = measure(restorer, image, quality, args.repeats, args.budget)
            seconds = statistics.median(times)
            rows.append({"config": name, "mode": mode, "tile": tile, "runs": len(times), "seconds": round(seconds, 3),
                         "megapixels_per_second": round(megapixels / seconds, 4)})  # fmt: skip
            print(f"{name:16s} {mode:9s} {megapixels / seconds:8.4f} MP/s  ({seconds:.2f} s, median of {len(times)})", flush=True)
        del model, restorer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    load_after = os.getloadavg()

    machine = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {cpu_isa()}",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    settings = {"device": str(device), "precision": args.precision, "image": [args.height, args.width],
                "tiles": args.tiles, "overlap": OVERLAP, "repeats": args.repeats, "budget_s": args.budget,
                "keep_freed_memory": kept}  # fmt: skip
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine, "settings": settings,
              "note": args.note, "results": rows}  # fmt: skip
    stem = f"inference_speed_{device.type}" + ("" if args.precision == "fp32" else f"_{args.precision}")
    write_results(args.out / stem, report, markdown(report))


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    threads = f"{m['torch_threads']} thread" + "s" * (m["torch_threads"] != 1)
    lines = [
        f"# Inference speed: {s['device']}, {s['precision']}",
        "",
        f"{report['date']}; {m['device']} ({m['cpu_count']} CPUs), torch {m['torch']} with {threads}, Python {m['python']}.",
        f"One {s['image'][1]}x{s['image'][0]} RGB image, whole and in tiles of {', '.join(map(str, s['tiles']))} pixels "
        f"overlapping by {s['overlap']}. Median of up to {s['repeats']} runs after a warm-up (fewer once {s['budget_s']:g} s "
        "are spent); untrained weights"
        + ("; freed memory kept for reuse, as the commands keep it." if s.get("keep_freed_memory") else "."),
        f"Load average (1, 5, 15 min) before: {m['loadavg_before']}, after: {m['loadavg_after']}. A load above the "
        f"number of CPUs means other processes shared them: then these are lower bounds.",
        *([report["note"]] if report["note"] else []),
        "",
    ]
    modes = list(dict.fromkeys(r["mode"] for r in report["results"]))
    lines += ["| configuration | " + " | ".join(f"{mode}: MP/s | {mode}: s" for mode in modes) + " | runs |"]
    lines += ["| --- |" + " ---: | ---: |" * len(modes) + " --- |"]
    by_key = {(r["config"], r["mode"]): r for r in report["results"]}
    for name in dict.fromkeys(r["config"] for r in report["results"]):
        rows = [by_key[name, mode] for mode in modes]
        cells = " | ".join(f"{r['megapixels_per_second']:.4f} | {r['seconds']:.2f}" for r in rows)
        lines.append(f"| {name} | {cells} | {', '.join(str(r['runs']) for r in rows)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
