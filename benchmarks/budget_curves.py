"""Validation PSNR against CPU hours, for training runs compared at equal CPU time.

Reads each run folder's ``config.json`` and ``log.jsonl`` (written by ``d2lnet train``) and
tabulates every validation record at the CPU hours it was reached (wall time of the run,
validation included, times its threads), with a plot of the curves. A run cut by its time
budget (``run.max_minutes``) ends with a validation of the weights it releases:

    python benchmarks/budget_curves.py s96=RUNS/s96 t96=RUNS/t96 --out benchmarks/results/budget_color
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import cpu_isa, cpu_name, named, write_results


def read_run(folder: Path) -> dict:
    """The run's recipe essentials and its validation records, each with the CPU hours reached."""
    config = json.loads((folder / "config.json").read_text())
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    trained = [(r["step"], r["elapsed_s"]) for r in records if "elapsed_s" in r]
    if not trained:
        raise SystemExit(f"{folder}: no training records in log.jsonl")
    steps, seconds = (np.array(v, dtype=float) for v in zip(*trained))
    threads = config["run"]["threads"]
    points = []
    for r in records:
        if "val" not in r:
            continue
        # Older logs time only the training records (every log_every steps): interpolate.
        hours = r.get("elapsed_s", float(np.interp(r["step"], steps, seconds))) * threads / 3600
        by_qf = {k[1:]: v["psnr"] for k, v in r["val"].items() if k.startswith("q") and k[1:].isdigit()}
        points.append({"step": r["step"], "cpu_hours": hours, "psnr": r["val"]["psnr"], "by_quality": by_qf})
    return {
        "model": config["model"]["name"], "crop": config["data"]["crop"], "batch": config["optim"]["batch_size"],
        "steps": config["optim"]["steps"], "precision": config["run"]["precision"], "points": points,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="NAME=FOLDER", help="run folders of d2lnet train")
    parser.add_argument("--out", default="", help="write OUT.json, OUT.md and OUT.png")
    parser.add_argument("--machine", default=f"{cpu_name()} ({cpu_isa()})", help="where the runs trained (default: here)")
    parser.add_argument("--note", default="", help="a line on how the runs were made, for OUT.md")
    args = parser.parse_args()
    runs = {name: read_run(Path(folder)) for name, folder in named(args.runs).items()}
    document = {"machine": args.machine, "note": args.note, "runs": runs}
    write_results(args.out, document, markdown(document))
    if args.out:
        plot(document, Path(args.out + ".png"))


def markdown(document: dict) -> str:
    """Every validation point of every run: PSNR per quality and their mean."""
    qualities = sorted({q for run in document["runs"].values() for p in run["points"] for q in p["by_quality"]}, key=int)
    lines = [
        "# Validation PSNR against CPU hours",
        "",
        f"Trained on {document['machine']}. {document['note']}".rstrip(),
        "",
        "| run | model | crop | batch | step | CPU hours | " + " | ".join(f"QF{q}" for q in qualities) + " | mean |",
        "|---|---|---|---:|---:|---:|" + "---:|" * (len(qualities) + 1),
    ]
    for name, run in document["runs"].items():
        for p in run["points"]:
            cells = " | ".join(f"{p['by_quality'].get(q, float('nan')):.3f}" for q in qualities)
            lines.append(
                f"| {name} | {run['model']} | {run['crop']} | {run['batch']} | {p['step']} | {p['cpu_hours']:.2f} | {cells} | {p['psnr']:.3f} |"
            )
    return "\n".join(lines)


def plot(document: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in document["runs"].items():
        ax.plot([p["cpu_hours"] for p in run["points"]], [p["psnr"] for p in run["points"]], marker="o", label=name)
    ax.set_xlabel("CPU hours (one thread)")
    ax.set_ylabel("validation PSNR, mean over QFs (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
