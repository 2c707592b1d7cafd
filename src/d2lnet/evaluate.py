"""``d2lnet eval``: PSNR, SSIM and PSNR-B with the protocol of the paper's Tables 1 and 2.

Protocol (it reproduces the JPEG rows of ``../shared/DATA.md``, and the paper's within 0.01 dB):

* the ground truth is the test image as stored; its grey version (Table 1) is the rounded
  BT.601 Y channel (:func:`d2lnet.metrics.rgb_to_y`), except for sets stored grey already;
* it is compressed once per quality factor with :func:`d2lnet.jpeg.roundtrip` (Pillow, 4:2:0),
  and that same decoded JPEG goes to every method, so methods see identical inputs;
* models are told the quality factor the image was compressed at, which is exactly what a
  blind model reads from the file with :func:`d2lnet.jpeg.estimate_quality`;
* PSNR, SSIM and PSNR-B (:mod:`d2lnet.metrics`) are computed per image on uint8 outputs (RGB for
  colour) and averaged over the images of a set.

Three ways in, all through :func:`evaluate_set`:

* ``d2lnet eval --model M [M ...] --data DIR [DIR ...]``: the given models (or ``jpeg``, the
  baseline without restoration) on the given folders;
* ``d2lnet eval --suite paper``: Tables 1 and 2 on the test sets that are available, beside the
  numbers the paper reports (:data:`PAPER`);
* ``d2lnet eval --plot-qf FILE``: mean scores against the quality factor, 5 to 95.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw, features
from tqdm import tqdm

from d2lnet import __version__, jpeg
from d2lnet.images import IMAGE_EXTENSIONS
from d2lnet.metrics import psnr, psnrb, rgb_to_y, ssim
from d2lnet.model import D2LNet
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY, PRETRAINED, load_model
from d2lnet.restore import Precision, Restorer, TileSpec, UsageError, resolve_device
from d2lnet.restore import parse_tile as parse_restore_tile

Scores = tuple[float, float, float]  # PSNR (dB), SSIM, PSNR-B (dB)
Mode = Literal["color", "gray"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DECIMALS: Scores = (2, 3, 2)  # as the paper prints PSNR, SSIM and PSNR-B
JPEG_METHOD = "JPEG"  # the baseline's name in results: the decoded JPEG, not restored
PLOT_QUALITIES = tuple(range(5, 100, 5))
CROP_SIZE, CROP_IMAGES, CROP_SCALE = 192, 3, 2
NEEDS_MATPLOTLIB = "--plot-qf needs matplotlib: pip install 'd2lnet[plot]'"

# The paper's numbers as printed (PSNR / SSIM / PSNR-B), typed in from paper.md: Table 1 is grey
# (BT.601 Y), Table 2 colour (RGB). "D2LNet" is the paper's "Ours". Only the JPEG rows, FBCNN (the
# strongest baseline) and D2LNet are kept. ICB, Table 2's third set, is left out: not available here.
PAPER: dict[Mode, dict[str, dict[int, dict[str, Scores]]]] = {
    "gray": {  # Table 1
        "LIVE1": {
            10: {"JPEG": (27.77, 0.773, 25.33), "FBCNN": (29.75, 0.827, 29.40), "D2LNet": (30.08, 0.840, 30.06)},
            20: {"JPEG": (30.07, 0.851, 27.57), "FBCNN": (32.13, 0.889, 31.57), "D2LNet": (32.47, 0.898, 32.42)},
            30: {"JPEG": (31.41, 0.885, 28.92), "FBCNN": (33.54, 0.916, 32.83), "D2LNet": (33.91, 0.924, 33.85)},
        },
        "BSD500": {
            10: {"JPEG": (27.80, 0.768, 25.10), "FBCNN": (29.67, 0.821, 29.22), "D2LNet": (29.61, 0.810, 29.53)},
            20: {"JPEG": (30.05, 0.849, 27.22), "FBCNN": (32.00, 0.885, 31.19), "D2LNet": (32.04, 0.890, 31.67)},
            30: {"JPEG": (31.37, 0.884, 28.53), "FBCNN": (33.37, 0.913, 32.39), "D2LNet": (33.41, 0.916, 32.97)},
        },
        "Classic5": {
            10: {"JPEG": (27.82, 0.760, 25.21), "FBCNN": (30.12, 0.822, 29.80), "D2LNet": (31.18, 0.838, 31.11)},
            20: {"JPEG": (30.12, 0.834, 27.50), "FBCNN": (32.31, 0.872, 31.74), "D2LNet": (33.41, 0.886, 33.27)},
            30: {"JPEG": (31.48, 0.867, 28.94), "FBCNN": (33.54, 0.894, 32.78), "D2LNet": (34.71, 0.907, 34.49)},
        },
    },
    "color": {  # Table 2
        "LIVE1": {
            10: {"JPEG": (25.69, 0.743, 24.20), "FBCNN": (27.77, 0.803, 27.51), "D2LNet": (27.82, 0.805, 27.80)},
            20: {"JPEG": (28.06, 0.826, 26.49), "FBCNN": (30.11, 0.868, 29.70), "D2LNet": (30.14, 0.871, 30.11)},
            30: {"JPEG": (29.37, 0.861, 27.84), "FBCNN": (31.43, 0.897, 30.92), "D2LNet": (31.49, 0.899, 31.33)},
        },
        "BSD500": {
            10: {"JPEG": (25.84, 0.741, 24.13), "FBCNN": (27.85, 0.799, 27.52), "D2LNet": (27.66, 0.778, 27.61)},
            20: {"JPEG": (28.21, 0.827, 26.37), "FBCNN": (30.14, 0.867, 29.56), "D2LNet": (30.15, 0.869, 29.75)},
            30: {"JPEG": (29.57, 0.865, 27.72), "FBCNN": (31.45, 0.897, 30.72), "D2LNet": (31.52, 0.897, 30.97)},
        },
    },
}
PAPER_TABLE: dict[Mode, int] = {"gray": 1, "color": 2}
MODE_TITLE: dict[Mode, str] = {"gray": "grey (BT.601 Y)", "color": "colour (RGB)"}


class EvalError(ValueError):
    """A problem with what ``d2lnet eval`` was asked to do (reported without a traceback)."""


# --------------------------------------------------------------------------- test sets


@dataclass(frozen=True)
class ImageSet:
    """The ground-truth images of one test set, evaluated in colour or as grey (BT.601 Y).

    ``name`` is the folder's name, with ``-gray`` added when colour images are evaluated as grey,
    so that a set evaluated both ways (BSDS500 in Tables 1 and 2) has two distinct names.
    """

    name: str
    paths: tuple[Path, ...]
    gray: bool
    paper_set: str | None = None  # the set's row in :data:`PAPER`

    @property
    def mode(self) -> Mode:
        return "gray" if self.gray else "color"

    def load(self, path: Path) -> np.ndarray:
        """The ground truth of ``path``: uint8 (H, W, 3) in colour mode, (H, W) in grey mode."""
        with Image.open(path) as im:
            if im.mode == "L":
                if not self.gray:
                    raise EvalError(f"{path} is a grey image: evaluate grey sets with --gray")
                return np.asarray(im)
            rgb = np.asarray(im.convert("RGB"))
        return rgb_to_y(rgb) if self.gray else rgb


def image_set(folder: str | Path, gray: bool, paper_set: str | None = None) -> ImageSet:
    """The images of ``folder`` (not its subfolders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"no such folder: {folder}")
    paths = tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
    if not paths:
        raise EvalError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    with Image.open(paths[0]) as first:
        from_color = first.mode != "L"
    if not gray and not from_color:
        raise EvalError(f"{folder} holds grey images: evaluate grey sets with --gray")
    return ImageSet(folder.name + ("-gray" if gray and from_color else ""), paths, gray, paper_set)


# --------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One column of results: a model, or the JPEG baseline (``model`` None: the decoded JPEG as is)."""

    name: str
    model: D2LNet | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tile: TileSpec = "auto"
    precision: Precision = "auto"
    source: str | None = None  # what --model named: a bundled name or a file
    restorer: Restorer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model is not None:
            self.restorer = Restorer(self.model, self.device, self.precision, tile=self.tile)

    @property
    def is_baseline(self) -> bool:
        return self.model is None

    @property
    def channels(self) -> int | None:
        return None if self.model is None else self.model.config.in_channels

    def check_mode(self, gray: bool) -> None:
        """Raise a clear error when the model's channels do not fit grey (1) or colour (3) images."""
        if self.channels is None or self.channels == (1 if gray else 3):
            return
        if gray:
            raise EvalError(
                f"model {self.name!r} restores RGB images (in_channels=3) but --gray evaluates grey "
                "(BT.601 Y) images: give a grey model, or drop --gray"
            )
        raise EvalError(f"model {self.name!r} restores grey images (in_channels=1): add --gray to evaluate grey images")

    def restore(self, image: np.ndarray, quality: int) -> np.ndarray:
        """The method's output for a decoded JPEG compressed at ``quality``."""
        return image if self.restorer is None else self.restorer.restore(image, quality)

    def describe(self) -> dict:
        """What the JSON records about the method."""
        if self.model is None:
            return {"name": self.name, "kind": "baseline: the decoded JPEG, not restored"}
        return {
            "name": self.name, "source": self.source, "in_channels": self.channels, "precision": self.restorer.precision,
            "card": getattr(self.model, "card", {}),
        }  # fmt: skip


def load_method(spec: str, device: torch.device, tile: TileSpec, precision: Precision = "auto") -> Method:
    """``jpeg`` (the baseline), a bundled model name, or a weights file (.safetensors or .pt)."""
    if spec.lower() == "jpeg":
        return Method(JPEG_METHOD)
    try:
        model = load_model(spec, device=device)
    except (FileNotFoundError, ValueError) as error:
        raise EvalError(f"cannot load model {spec!r}: {error}") from error
    name = spec if spec in PRETRAINED else Path(spec).stem
    return Method(name, model, device, tile, precision, source=spec)


def load_methods(specs: Iterable[str], device: torch.device, tile: TileSpec, precision: Precision = "auto") -> list[Method]:
    methods = [load_method(spec, device, tile, precision) for spec in specs]
    names = [m.name for m in methods]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise EvalError(f"two methods are named {', '.join(duplicates)}: give each model a distinct file name")
    return methods


def parse_tile(value: str | int | None) -> TileSpec:
    """``--tile``: ``auto``, ``0`` (whole images) or a size in pixels (a multiple of 8)."""
    try:
        return parse_restore_tile("auto" if value is None else str(value))
    except UsageError as error:
        raise EvalError(str(error)) from None


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class ImageScore:
    """The scores of one method on one image at one quality factor."""

    set: str
    mode: Mode
    quality: int
    method: str
    image: str
    psnr: float
    ssim: float
    psnrb: float

    @property
    def scores(self) -> Scores:
        return self.psnr, self.ssim, self.psnrb


@dataclass(frozen=True)
class MeanScore:
    """Scores averaged over the images of a set, as in the paper's tables."""

    set: str
    mode: Mode
    quality: int
    method: str
    images: int
    psnr: float
    ssim: float
    psnrb: float

    @property
    def scores(self) -> Scores:
        return self.psnr, self.ssim, self.psnrb


def score(reference: np.ndarray, test: np.ndarray) -> Scores:
    """PSNR, SSIM and PSNR-B of ``test`` against ``reference`` (PSNR-B's BEF is measured on ``test``)."""
    return psnr(reference, test), ssim(reference, test), psnrb(reference, test)


def evaluate_set(
    images: ImageSet,
    methods: Sequence[Method],
    qualities: Sequence[int],
    save_images: Path | None = None,
    crops: Path | None = None,
    progress: bool = True,
) -> list[ImageScore]:
    """Score every method on every image of ``images`` at every quality factor.

    ``save_images`` receives each model's outputs as ``<set>/<qf>/<name>.png`` (under a folder per
    model when there are several); ``crops`` receives JPEG | restored | ground-truth crops of the
    first :data:`CROP_IMAGES` images.
    """
    for method in methods:
        method.check_mode(images.gray)
    models = [m for m in methods if not m.is_baseline]
    rows: list[ImageScore] = []
    for index, path in enumerate(tqdm(images.paths, desc=images.name, unit="image", disable=not progress)):
        truth = images.load(path)
        for quality in qualities:
            degraded = jpeg.roundtrip(truth, quality)
            for method in methods:
                output = method.restore(degraded, quality)
                rows.append(ImageScore(images.name, images.mode, quality, method.name, path.name, *score(truth, output)))
                if method.is_baseline:
                    continue
                if save_images is not None:
                    folder = save_images / (method.name if len(models) > 1 else "") / images.name / str(quality)
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(output).save(folder / f"{path.stem}.png")
                if crops is not None and index < CROP_IMAGES:
                    crops.mkdir(parents=True, exist_ok=True)
                    panel = side_by_side([degraded, output, truth], [f"JPEG q{quality}", method.name, "ground truth"])
                    panel.save(crops / f"{images.name}_q{quality}_{path.stem}_{method.name}.png")
    return rows


def mean_scores(rows: Iterable[ImageScore]) -> list[MeanScore]:
    """Per-image scores averaged per (set, mode, quality, method), in order of first appearance."""
    groups: dict[tuple[str, Mode, int, str], list[Scores]] = {}
    for r in rows:
        groups.setdefault((r.set, r.mode, r.quality, r.method), []).append(r.scores)
    return [MeanScore(*key, len(s), *(float(v) for v in np.mean(s, axis=0))) for key, s in groups.items()]


# --------------------------------------------------------------------------- images for people


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop (smaller for small images) near the centre, its corner on the 8x8
    JPEG grid so that the crop's block boundaries are those of the image."""
    h, w = image.shape[:2]
    size = min(size, h, w)
    top, left = (h - size) // 2 // 8 * 8, (w - size) // 2 // 8 * 8
    return image[top : top + size, left : left + size]


def side_by_side(panels: Sequence[np.ndarray], labels: Sequence[str], size: int = CROP_SIZE, scale: int = CROP_SCALE) -> Image.Image:
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


def paper_reference(mean: MeanScore, paper_set: str | None) -> tuple[str, Scores] | None:
    """What the paper reports for ``mean``'s row: its JPEG row for the baseline, its D2LNet for a model."""
    reported = PAPER.get(mean.mode, {}).get(paper_set or "", {}).get(mean.quality)
    if reported is None:
        return None
    method = JPEG_METHOD if mean.method == JPEG_METHOD else "D2LNet"
    return method, reported[method]


def suite_tables(means: Sequence[MeanScore], paper_sets: dict[str, str]) -> list[Table]:
    """Tables 1 and 2: measured JPEG beside the paper's JPEG, FBCNN and D2LNet, then each model,
    with differences (measured minus paper) for the JPEG row and for each model vs the paper's D2LNet."""

    def cell(scores: Scores | None) -> str:
        return format_scores(scores) if scores else ""

    def delta(measured: MeanScore | None, reported: Scores | None) -> str:
        return format_delta(score_delta(measured.scores, reported)) if measured and reported else ""

    tables = []
    for mode in ("gray", "color"):
        rows = [m for m in means if m.mode == mode]
        if not rows:
            continue
        models = [n for n in dict.fromkeys(m.method for m in rows) if n != JPEG_METHOD]
        by_key = {(m.set, m.quality, m.method): m for m in rows}
        headers = ["Set", "QF", "JPEG", "JPEG (paper)", "Δ JPEG", "FBCNN (paper)", "D2LNet (paper)"]
        headers += [h for name in models for h in (name, f"Δ {name}")]
        body = []
        for s, q in dict.fromkeys((m.set, m.quality) for m in rows):
            paper = PAPER[mode].get(paper_sets.get(s, ""), {}).get(q, {})
            measured = by_key.get((s, q, JPEG_METHOD))
            line = [s, str(q), cell(measured and measured.scores), cell(paper.get("JPEG")), delta(measured, paper.get("JPEG"))]
            line += [cell(paper.get("FBCNN")), cell(paper.get("D2LNet"))]
            for name in models:
                measured = by_key.get((s, q, name))
                line += [cell(measured and measured.scores), delta(measured, paper.get("D2LNet"))]
            body.append(line)
        tables.append(Table(f"Table {PAPER_TABLE[mode]}: {MODE_TITLE[mode]}", headers, body))
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
        tables.append(Table(f"{s}: mean PSNR (dB) / SSIM / PSNR-B (dB) against the JPEG quality factor", ["QF", *methods, *gains], body))
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- reports


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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


# --------------------------------------------------------------------------- the paper suite


@dataclass(frozen=True)
class SuiteSet:
    """A test set of the paper's tables: its folder under the data root, mode and row name in :data:`PAPER`."""

    folder: str
    gray: bool
    paper_set: str


PAPER_SUITE: tuple[SuiteSet, ...] = (
    SuiteSet("LIVE1_gray", True, "LIVE1"),  # Table 1
    SuiteSet("BSDS500_test", True, "BSD500"),
    SuiteSet("Classic5", True, "Classic5"),
    SuiteSet("LIVE1_color", False, "LIVE1"),  # Table 2
    SuiteSet("BSDS500_test", False, "BSD500"),
)
PAPER_QUALITIES = (10, 20, 30)


def find_data_root(explicit: str | Path | None = None) -> Path:
    """The folder of test sets: ``explicit``, else ``$D2LNET_DATA/test`` when that is set, else
    ``../shared/data/test`` relative to the current directory or to the repository."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif os.environ.get("D2LNET_DATA"):  # set means meant: no silent fallback to other data
        candidates = [Path(os.environ["D2LNET_DATA"]) / "test"]
    else:
        candidates = [Path.cwd().parent / "shared" / "data" / "test", REPO_ROOT.parent / "shared" / "data" / "test"]
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise EvalError(f"no test data found (looked in {tried}); give --data-root DIR or set $D2LNET_DATA")


@dataclass
class SuiteRun:
    """What :func:`run_paper_suite` measured: per-image scores, the sets and models used, notes."""

    rows: list[ImageScore]
    sets: list[ImageSet]
    methods: list[Method]
    notes: list[str]

    @property
    def paper_sets(self) -> dict[str, str]:
        """Set name -> its row name in :data:`PAPER`."""
        return {s.name: s.paper_set for s in self.sets if s.paper_set}


def run_paper_suite(
    data_root: Path,
    model_specs: Sequence[str] | None,
    device: torch.device,
    tile: TileSpec = "auto",
    precision: Precision = "auto",
    qualities: Sequence[int] = PAPER_QUALITIES,
    save_images: Path | None = None,
    crops: Path | None = None,
    progress: bool = True,
) -> SuiteRun:
    """Tables 1 and 2 on the sets under ``data_root``: the JPEG baseline and each model on the sets
    of its mode (grey models on Table 1, colour models on Table 2). Without ``model_specs``, the
    bundled default models, each skipped with a note when it is not installed."""
    if unknown := sorted(set(qualities) - set(PAPER_QUALITIES)):
        raise EvalError(f"the paper reports QF {', '.join(map(str, PAPER_QUALITIES))} only, not {unknown}")
    notes = ["ICB (the third set of Table 2) is not available here: not evaluated."]
    if model_specs is None:
        methods = []
        for name in (DEFAULT_GRAY, DEFAULT_COLOR):
            try:
                methods.append(load_method(name, device, tile, precision))
            except EvalError:
                notes.append(f"bundled model {name} is not installed: skipped.")
    else:
        methods = [m for m in load_methods(model_specs, device, tile, precision) if not m.is_baseline]
    baseline = Method(JPEG_METHOD)
    run = SuiteRun([], [], [baseline, *methods], notes)
    for entry in PAPER_SUITE:
        folder = data_root / entry.folder
        if not folder.is_dir():
            table = PAPER_TABLE["gray" if entry.gray else "color"]
            notes.append(f"{entry.folder} (Table {table}) is not in {data_root}: skipped.")
            continue
        images = image_set(folder, entry.gray, entry.paper_set)
        models = [m for m in methods if m.channels == (1 if entry.gray else 3)]
        run.sets.append(images)
        run.rows += evaluate_set(images, [baseline, *models], qualities, save_images, crops, progress)
    return run


def annotate_with_paper(means: Sequence[MeanScore], paper_sets: dict[str, str]) -> list[dict]:
    """JSON means, each with the paper's number it is compared with and the difference."""
    out = []
    for mean in means:
        row = json_row(mean)
        if reference := paper_reference(mean, paper_sets.get(mean.set)):
            method, reported = reference
            row["paper"] = {"method": method, **dict(zip(("psnr", "ssim", "psnrb"), reported))}
            row["delta"] = dict(zip(("psnr", "ssim", "psnrb"), score_delta(mean.scores, reported)))
        out.append(row)
    return out


def paper_rows() -> list[dict]:
    """:data:`PAPER` as flat JSON rows."""
    return [
        {"table": PAPER_TABLE[mode], "mode": mode, "set": s, "quality": q, "method": method, **dict(zip(("psnr", "ssim", "psnrb"), v))}
        for mode, sets in PAPER.items()
        for s, by_quality in sets.items()
        for q, methods in by_quality.items()
        for method, v in methods.items()
    ]


# --------------------------------------------------------------------------- command line


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet eval`` (arguments declared in :func:`d2lnet.cli._add_eval`); 2 on a usage error."""
    try:
        run_eval(args)
    except EvalError as error:
        print(f"d2lnet eval: error: {error}", file=sys.stderr)
        return 2
    return 0


def run_eval(args: argparse.Namespace) -> None:
    """The work of ``d2lnet eval``: the paper suite, a QF sweep (--plot-qf), or models on --data."""
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except RuntimeError as error:  # e.g. --device cuda without CUDA
        raise EvalError(str(error)) from error
    tile = parse_tile(args.tile)
    save_images = Path(args.save_images) if args.save_images else None
    crops = Path(args.crops) if args.crops else None
    plot = Path(args.plot_qf) if args.plot_qf else None
    if plot and importlib.util.find_spec("matplotlib") is None:  # say so before the sweep, not after
        raise EvalError(NEEDS_MATPLOTLIB)
    qualities = list(PLOT_QUALITIES if plot else args.quality)
    if bad := [q for q in qualities if not 1 <= q <= 100]:
        raise EvalError(f"JPEG quality factors are 1 to 100, got {bad}")
    config = {
        "suite": args.suite,
        "models": args.model,
        "quality": qualities,
        "gray": args.gray,
        "device": str(device),
        "tile": args.tile,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "environment": environment(),
    }

    if args.suite == "paper":
        if args.data or plot:
            raise EvalError("--suite paper evaluates its own sets: use --data-root instead of --data, and no --plot-qf")
        data_root = find_data_root(args.data_root)
        suite = run_paper_suite(data_root, args.model, device, tile, args.precision, qualities, save_images, crops)
        config |= {
            "data_root": str(data_root),
            "sets": {s.name: {"mode": s.mode, "images": len(s.paths), "paper_set": s.paper_set} for s in suite.sets},
            "methods": [m.describe() for m in suite.methods],
        }
        notes = [
            *suite.notes,
            "'(paper)' columns are the paper's reported numbers, typed in. Δ JPEG is measured minus the paper's "
            "JPEG row; Δ of a model is the model minus the paper's D2LNet (both at the printed decimals).",
        ]
        means = mean_scores(suite.rows)
        markdown = report_markdown("D2LNet: the paper's Tables 1 and 2", suite_tables(means, suite.paper_sets), notes)
        document = report_json(config, suite.rows, notes, means=annotate_with_paper(means, suite.paper_sets), paper=paper_rows())
    else:
        if not args.data:
            raise EvalError("give test sets with --data DIR [DIR ...], or --suite paper")
        methods = load_methods(args.model or [DEFAULT_GRAY if args.gray else DEFAULT_COLOR], device, tile, args.precision)
        if plot and not any(m.is_baseline for m in methods):
            methods.insert(0, Method(JPEG_METHOD))  # the curves are read against the baseline
        for method in methods:  # fail before any work, not after the first set
            method.check_mode(args.gray)
        sets = [image_set(folder, args.gray) for folder in args.data]
        config |= {"data": [str(Path(d).resolve()) for d in args.data], "methods": [m.describe() for m in methods]}
        rows = [r for s in sets for r in evaluate_set(s, methods, qualities, save_images, crops)]
        means = mean_scores(rows)
        if plot:
            plot_quality_curves(means, plot)
            markdown = report_markdown("D2LNet: scores against the JPEG quality factor", quality_tables(means))
            document = report_json(config, rows, curves=quality_curves(means))
            write_text(plot.with_suffix(".md"), markdown)
            write_json(plot.with_suffix(".json"), document)
        else:
            markdown = report_markdown("D2LNet evaluation", means_tables(means))
            document = report_json(config, rows)

    print("\n" + markdown)
    if args.json:
        write_json(args.json, document)
    if args.markdown:
        write_text(args.markdown, markdown)
    if plot:
        print(f"wrote {plot} and its numbers to {plot.with_suffix('.json')}, {plot.with_suffix('.md')}")
