"""The paper's Tables 1 and 2: its reported numbers, the suite of test sets that reproduces them,
and tables that set ours beside them (``d2lnet eval --suite paper``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from d2lnet.device import Precision
from d2lnet.engine import TileSpec
from d2lnet.evaluation import EvalError
from d2lnet.evaluation.methods import JPEG_METHOD, Method, load_method, load_methods
from d2lnet.evaluation.protocol import ImageScore, MeanScore, OutputSink, Scores, evaluate_set
from d2lnet.evaluation.reports import MODE_TITLE, Table, format_delta, format_scores, json_row, score_delta
from d2lnet.evaluation.testsets import ImageSet, Mode, image_set
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY

# The paper's numbers as printed (PSNR / SSIM / PSNR-B), typed in from its Tables 1 and 2: Table 1 is grey
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


# --------------------------------------------------------------------------- the suite


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
    on_output: OutputSink | None = None,
    progress: bool = True,
) -> SuiteRun:
    """Tables 1 and 2 on the sets under ``data_root``: the JPEG baseline and each model on the sets
    of its mode (grey models on Table 1, colour models on Table 2). Without ``model_specs``, the
    bundled default models, each skipped with a note when it is not installed. Models given: only
    the tables of their modes (a grey model alone: Table 1), the other skipped with a note; the
    JPEG baseline alone (``jpeg``): both tables."""
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
        table = PAPER_TABLE["gray" if entry.gray else "color"]
        if not folder.is_dir():
            notes.append(f"{entry.folder} (Table {table}) is not in {data_root}: skipped.")
            continue
        models = [m for m in methods if m.channels == (1 if entry.gray else 3)]
        if methods and not models:
            kind = "grey" if entry.gray else "colour"
            notes.append(f"{entry.folder} (Table {table}): no {kind} model among those given: skipped.")
            continue
        images = image_set(folder, entry.gray, entry.paper_set)
        run.sets.append(images)
        run.rows += evaluate_set(images, [baseline, *models], qualities, on_output, progress)
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
        {
            "table": PAPER_TABLE[mode],
            "mode": mode,
            "set": s,
            "quality": q,
            "method": method,
            **dict(zip(("psnr", "ssim", "psnrb"), v)),
        }
        for mode, sets in PAPER.items()
        for s, by_quality in sets.items()
        for q, methods in by_quality.items()
        for method, v in methods.items()
    ]
