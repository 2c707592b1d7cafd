"""ONNX Runtime beside PyTorch on the CPU: one image through the exported file and through d2lnet's engine.

    python benchmarks/onnx_speed.py                          # d2lnet-s-color, 256x256 and 512x512, 1 thread

Writes ``benchmarks/results/onnx_speed_cpu.json`` and ``.md``. The model is exported with
:func:`d2lnet.export.export_onnx` (dynamic sizes, float32) into a temporary folder, unless
``--onnx`` names a file exported already. Both run float32 on one thread (``--threads``), on the
same random image with a known quality: PyTorch through :class:`d2lnet.engine.Restorer` as
``d2lnet restore --precision fp32 --tile 0`` runs it (whole image, in the layout the engine picks,
with freed memory kept for reuse as the command keeps it), ONNX Runtime through a CPU session with
its default graph optimisations. After one warm-up each, the two
alternate for ``--repeats`` runs each, so that a change in the machine's load falls on both; the
median is reported, with the load average before and after, and the largest difference between
the two outputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import onnxruntime
import torch
from common import cpu_isa, cpu_name, write_results

from d2lnet.allocator import keep_freed_memory
from d2lnet.engine import Restorer
from d2lnet.export import export_onnx, onnxruntime_session
from d2lnet.pretrained import load_model

RESULTS = Path(__file__).parent / "results"
QUALITY = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="d2lnet-s-color")
    parser.add_argument("--onnx", type=Path, default=None, help="an exported file of --model (default: export it now)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512], help="square image sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    keep_freed_memory()  # as `d2lnet restore` runs
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        path = args.onnx or export_onnx(load_model(args.model), Path(folder) / "model.onnx")
        session = onnxruntime_session(path, threads=args.threads)
        restorer = Restorer(model, "cpu", "fp32", tile=None)
        layout = "channels-last" if restorer.memory_format == torch.channels_last else "NCHW (Winograd convolutions)"
        load_before = os.getloadavg()
        rows = [measure(restorer, session, size, model.config.in_channels, args.repeats) for size in args.sizes]
        load_after = os.getloadavg()

    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(),
            "isa": cpu_isa(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "settings": {"model": args.model, "precision": "fp32", "quality": QUALITY, "repeats": args.repeats, "layout": layout},
        "results": rows,
    }
    write_results(args.out / "onnx_speed_cpu", report, markdown(report))


def measure(restorer: Restorer, session, size: int, channels: int, repeats: int) -> dict:
    """Median seconds of PyTorch and ONNX Runtime on one size x size image, alternating runs."""
    torch.manual_seed(0)
    image = torch.rand(1, channels, size, size)
    feed = {"image": image.numpy(), "quality": torch.tensor([QUALITY]).numpy()}
    runs = {
        "pytorch": lambda: restorer.restore_tensor(image, int(QUALITY)),
        "onnxruntime": lambda: torch.from_numpy(session.run(None, feed)[0]),
    }
    outputs = {name: run() for name, run in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    difference = (outputs["onnxruntime"] - outputs["pytorch"].clamp(0, 1)).abs().max().item()
    print(f"{size}x{size}: PyTorch {seconds['pytorch']:.2f} s, ONNX Runtime {seconds['onnxruntime']:.2f} s", flush=True)
    return {"size": size, "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "megapixels_per_second": {k: round(size * size / 1e6 / v, 4) for k, v in seconds.items()},
            "onnxruntime_over_pytorch": round(seconds["pytorch"] / seconds["onnxruntime"], 2),
            "max_abs_difference": difference}  # fmt: skip


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = [
        f"# ONNX Runtime beside PyTorch: {s['model']}, {s['precision']}, CPU",
        "",
        f"{report['date']}; {m['cpu']} ({m['isa']}; {m['cpu_count']} CPUs), {m['threads']} thread(s) each; torch "
        f"{m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}. Median of {s['repeats']} alternating runs "
        f"after a warm-up, one random RGB image, quality {s['quality']:g}. PyTorch: d2lnet's engine, whole image, "
        f"{s.get('layout', 'channels-last')}. ONNX Runtime: the file of `d2lnet export` (dynamic sizes), default optimisations.",
        f"Load average (1, 5, 15 min) before: {m['loadavg_before']}, after: {m['loadavg_after']}: with a load above the "
        "number of CPUs, other processes shared them and both columns are slower than on an idle machine.",
        "",
        "| image | PyTorch: s | ONNX Runtime: s | PyTorch: MP/s | ONNX Runtime: MP/s | ONNX Runtime speed-up | max abs difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        t, mp = r["seconds"], r["megapixels_per_second"]
        lines.append(f"| {r['size']}x{r['size']} | {t['pytorch']:.2f} | {t['onnxruntime']:.2f} | {mp['pytorch']:.4f} | "
                     f"{mp['onnxruntime']:.4f} | {r['onnxruntime_over_pytorch']:.2f}x | {r['max_abs_difference']:.1e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
