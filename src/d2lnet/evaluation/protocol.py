"""Scoring: every method on the same decoded JPEGs, PSNR / SSIM / PSNR-B per image, means per set.

The one computation behind ``d2lnet eval`` and training's validation, so that the numbers of
both are the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from d2lnet import jpeg
from d2lnet.evaluation.methods import Method
from d2lnet.evaluation.testsets import ImageSet, Mode
from d2lnet.metrics import psnr, psnrb, ssim
from d2lnet.progress import Progress

Scores = tuple[float, float, float]  # PSNR (dB), SSIM, PSNR-B (dB)


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


class OutputSink(Protocol):
    """Receives each model output as it is scored (see :class:`d2lnet.evaluation.reports.OutputWriter`)."""

    def __call__(self, images: ImageSet, index: int, quality: int, method: Method, outputs: Outputs) -> None: ...


@dataclass(frozen=True)
class Outputs:
    """One image at one quality: the ground truth, its decoded JPEG, and a method's output."""

    truth: np.ndarray
    degraded: np.ndarray
    output: np.ndarray


def evaluate_set(
    images: ImageSet,
    methods: Sequence[Method],
    qualities: Sequence[int],
    on_output: OutputSink | None = None,
    progress: bool = True,
) -> list[ImageScore]:
    """Score every method on every image of ``images`` at every quality factor; ``on_output``
    sees each model's output (the baseline's is the JPEG itself)."""
    for method in methods:
        method.check_mode(images.gray)
    rows: list[ImageScore] = []
    with Progress(len(images.paths), images.name, "image", enabled=progress) as bar:
        for index, path in enumerate(images.paths):
            truth = images.load(path)
            for quality in qualities:
                degraded = jpeg.roundtrip(truth, quality)
                for method in methods:
                    output = method.restore(degraded, quality)
                    rows.append(ImageScore(images.name, images.mode, quality, method.name, path.name, *score(truth, output)))
                    if on_output is not None and not method.is_baseline:
                        on_output(images, index, quality, method, Outputs(truth, degraded, output))
            bar.update()
    return rows


def mean_scores(rows: Iterable[ImageScore]) -> list[MeanScore]:
    """Per-image scores averaged per (set, mode, quality, method), in order of first appearance."""
    groups: dict[tuple[str, Mode, int, str], list[Scores]] = {}
    for r in rows:
        groups.setdefault((r.set, r.mode, r.quality, r.method), []).append(r.scores)
    return [MeanScore(*key, len(s), *(float(v) for v in np.mean(s, axis=0))) for key, s in groups.items()]
