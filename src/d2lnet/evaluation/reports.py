"""Reports: Markdown tables, JSON documents, PSNR-against-quality plots, and images for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, features

from d2lnet import __version__
from d2lnet.atomic import atomic_write
from d2lnet.evaluation import EvalError
from d2lnet.evaluation.methods import JPEG_METHOD, Method
from d2lnet.evaluation.protocol import ImageScore, MeanScore, Outputs, Scores, mean_scores
from d2lnet.evaluation.testsets import ImageSet, Mode
from d2lnet.images import center_crop, write_image

DECIMALS: Scores = (2, 3, 2)  # as the paper prints PSNR, SSIM and PSNR-B
MODE_TITLE: dict[Mode, str] = {"gray": "grey (BT.601 Y)", "color": "colour (RGB)"}
CROP_SIZE, CROP_IMAGES, CROP_SCALE = 192, 3, 2
NEEDS_MATPLOTLIB = "--plot-qf needs matplotlib: pip install 'd2lnet[plot]'"


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """A titled table of strings, rendered as Markdown padded so that it also reads as plain text."""

    title: str
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        widths = [max(len(r[i]) for r in [self.headers, *self.rows]) for i in range(len(self.headers))]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([f"### {self.title}", "", line(self.headers), rule, *map(line, self.rows)])


def format_scores(scores: Scores) -> str:
    """``27.77 / 0.773 / 25.33``: PSNR, SSIM and PSNR-B to the paper's decimals."""
    return " / ".join(f"{v:.{d}f}" for v, d in zip(scores, DECIMALS))


def score_delta(measured: Scores, reference: Scores) -> Scores:
    """``measured`` minus ``reference``, each rounded to the printed decimals first, so that a
    difference of zero means "the same number as printed"."""
    return tuple(round(round(m, d) - r, d) + 0.0 for m, r, d in zip(measured, reference, DECIMALS))  # +0.0: no -0.00


def format_delta(delta: Scores) -> str:
    return " / ".join(f"{v:+.{d}f}" for v, d in zip(delta, DECIMALS))


def means_tables(means: Sequence[MeanScore]) -> list[Table]:
    """One table per mode: rows (set, QF), one PSNR / SSIM / PSNR-B column per method."""
    tables = []
    for mode in ("gray", "color"):
        rows = [m for m in means if m.mode == mode]
        if not rows:
            continue
        methods = list(dict.fromkeys(m.method for m in rows))
        cells = {(m.set, m.quality, m.method): format_scores(m.scores) for m in rows}
        keys = list(dict.fromkeys((m.set, m.quality) for m in rows))
        body = [[s, str(q), *(cells.get((s, q, name), "") for name in methods)] for s, q in keys]
        title = f"Mean PSNR (dB) / SSIM / PSNR-B (dB), {MODE_TITLE[mode]}"
        tables.append(Table(title, ["Set", "QF", *methods], body))
    return tables


def quality_tables(means: Sequence[MeanScore]) -> list[Table]:
    """Per set: a row per QF, each method's scores, and each model's PSNR gain over JPEG."""
    tables = []
    for s in dict.fromkeys(m.set for m in means):
        rows = [m for m in means if m.set == s]
        methods = list(dict.fromkeys(m.method for m in rows))
        models = [n for n in methods if n != JPEG_METHOD]
        by_key = {(m.quality, m.method): m for m in rows}
        body = []
        for q in dict.fromkeys(m.quality for m in rows):
            line = [str(q), *(format_scores(by_key[q, n].scores) for n in methods)]
            if JPEG_METHOD in methods:
                line += [f"{by_key[q, n].psnr - by_key[q, JPEG_METHOD].psnr:+.2f}" for n in models]
            body.append(line)
        gains = [f"Δ PSNR {n}" for n in models] if JPEG_METHOD in methods else []
        tables.append(
            Table(f"{s}: mean PSNR (dB) / SSIM / PSNR-B (dB) against the JPEG quality factor", ["QF", *methods, *gains], body)
        )
    return tables


def quality_curves(means: Sequence[MeanScore]) -> dict[str, dict[str, dict[str, list]]]:
    """set -> method -> {"quality": [...], "psnr": [...], "ssim": [...], "psnrb": [...]}."""
    curves: dict[str, dict[str, dict[str, list]]] = {}
    for m in means:
        curve = curves.setdefault(m.set, {}).setdefault(m.method, {"quality": [], "psnr": [], "ssim": [], "psnrb": []})
        for key in curve:
            curve[key].append(round(getattr(m, key), 6))
    return curves


def plot_quality_curves(means: Sequence[MeanScore], path: Path) -> None:
    """Mean PSNR against QF per set (top) and each model's gain over JPEG (bottom), as an image."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state
    except ImportError:
        raise EvalError(NEEDS_MATPLOTLIB) from None
    sets = list(dict.fromkeys(m.set for m in means))
    methods = list(dict.fromkeys(m.method for m in means))
    models = [n for n in methods if n != JPEG_METHOD]
    gain_row = bool(models) and JPEG_METHOD in methods
    fig = Figure(figsize=(5 * len(sets), 7 if gain_row else 4), layout="constrained")
    axes = fig.subplots(2 if gain_row else 1, len(sets), squeeze=False)
    for col, s in enumerate(sets):
        curve = {n: [(m.quality, m.psnr) for m in means if m.set == s and m.method == n] for n in methods}
        ax = axes[0, col]
        for n, points in curve.items():
            ax.plot(*zip(*points), marker="o", markersize=3, label=n, linestyle="--" if n == JPEG_METHOD else "-")
        ax.set(title=s, xlabel="JPEG quality factor", ylabel="mean PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend()
        if gain_row:
            ax = axes[1, col]
            baseline = dict(curve[JPEG_METHOD])
            for n in models:
                ax.plot([q for q, _ in curve[n]], [p - baseline[q] for q, p in curve[n]], marker="o", markersize=3, label=n)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set(xlabel="JPEG quality factor", ylabel="PSNR gain over JPEG (dB)")
            ax.grid(alpha=0.3)
            ax.legend()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)


# --------------------------------------------------------------------------- images for people


@dataclass(frozen=True)
class OutputWriter:
    """Saves what models output during an evaluation (an :class:`~d2lnet.evaluation.protocol.OutputSink`).

    ``images``: each model's outputs as ``<set>/<qf>/<name>.png`` (under a folder per model when
    ``per_model``); ``crops``: JPEG | restored | ground-truth crops of the first :data:`CROP_IMAGES`
    images of each set.
    """

    images: Path | None = None
    crops: Path | None = None
    per_model: bool = False

    def __call__(self, images: ImageSet, index: int, quality: int, method: Method, outputs: Outputs) -> None:
        path = images.paths[index]
        if self.images is not None:
            folder = self.images / (method.name if self.per_model else "") / images.name / str(quality)
            write_image(Image.fromarray(outputs.output), folder / f"{path.stem}.png", overwrite=True)
        if self.crops is not None and index < CROP_IMAGES:
            panel = side_by_side(
                [outputs.degraded, outputs.output, outputs.truth], [f"JPEG q{quality}", method.name, "ground truth"]
            )
            write_image(panel, self.crops / f"{images.name}_q{quality}_{path.stem}_{method.name}.png", overwrite=True)


def side_by_side(
    panels: Sequence[np.ndarray], labels: Sequence[str], size: int = CROP_SIZE, scale: int = CROP_SCALE
) -> Image.Image:
    """Centre crops of same-sized images side by side, each upscaled ``scale`` times with nearest
    neighbours (so that blocking and ringing stay visible) and labelled above."""
    gap, band = 4, 20
    tiles = [Image.fromarray(center_crop(p, size)).convert("RGB") for p in panels]
    tiles = [t.resize((t.width * scale, t.height * scale), Image.Resampling.NEAREST) for t in tiles]
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, band + tiles[0].height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, band))
        draw.text((x + 4, 3), label, fill="black")
        x += tile.width + gap
    return canvas


# --------------------------------------------------------------------------- documents


def environment() -> dict[str, str | None]:
    """Versions that the numbers depend on (the JPEG rows depend on libjpeg)."""
    return {
        "d2lnet": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg_turbo": features.version("libjpeg_turbo"),
    }


def json_row(row: ImageScore | MeanScore) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(row).items()}


def report_markdown(title: str, tables: Sequence[Table], notes: Sequence[str] = ()) -> str:
    """A Markdown document: title, legend, notes, tables."""
    parts = [f"# {title}", "Cells are PSNR (dB) / SSIM / PSNR-B (dB), means over the images of each set."]
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join([*parts, *(t.markdown() for t in tables)]) + "\n"


def report_json(
    config: dict, rows: Sequence[ImageScore], notes: Sequence[str] = (), means: list[dict] | None = None, **extra: object
) -> dict:
    """A JSON document: the run's config, notes, means (by default those of ``rows``), anything in
    ``extra``, then the per-image rows."""
    return {
        "config": config,
        "notes": list(notes),
        "means": means if means is not None else [json_row(m) for m in mean_scores(rows)],
        **extra,
        "images": [json_row(r) for r in rows],
    }


def write_text(path: str | Path, text: str) -> None:
    """``text`` to ``path``, atomically (its folder is created)."""
    with atomic_write(path) as f:
        f.write(text.encode())


def write_json(path: str | Path, document: dict) -> None:
    """``document`` as JSON, each row of its lists of rows on one line (readable, diffable)."""
    items = []
    for key, value in document.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            text = "[\n" + ",\n".join(f"  {json.dumps(v)}" for v in value) + "\n ]"
        else:
            text = json.dumps(value, indent=1).replace("\n", "\n ")
        items.append(f" {json.dumps(key)}: {text}")
    write_text(path, "{\n" + ",\n".join(items) + "\n}\n")
