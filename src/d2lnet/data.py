"""Training data: clean images, cropped and augmented, JPEG-compressed on the fly; and the
images held out of training to validate on (:func:`split_holdout`).

A training sample is a pure function of ``(seed, index)``: the image, the crop,
the rescaling, the flip/rotation and the quality factor are all drawn from a
generator seeded by both. Samples are therefore identical whatever the number
of worker processes or ranks, and a resumed run sees exactly the samples it
would have seen (the sampler restarts at ``step * batch_size``).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from d2lnet import jpeg
from d2lnet.images import ImageError, find_images_in, read_array, to_mode, to_tensor

JPEG_SOURCES = ("keep", "downscale", "drop")


def downscale_2x(image: np.ndarray) -> np.ndarray:
    """``image`` at half its size (Pillow's antialiased bicubic)."""
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.Resampling.BICUBIC))


def split_holdout(files: Sequence[Path], fraction: float) -> tuple[list[Path], list[Path]]:
    """Split ``files`` into (training, held out): about ``fraction`` of them, chosen by a hash of the name.

    Each file's membership depends on its name alone, so the split is the same in every run and
    session, and adding folders or shards never moves a held-out image into training.
    """

    def held(path: Path) -> bool:
        return int.from_bytes(hashlib.sha256(path.name.encode()).digest()[:8], "big") < fraction * 2**64

    return [p for p in files if not held(p)], [p for p in files if held(p)]


@dataclass(frozen=True)
class QualitySampler:
    """Draws JPEG quality factors: from ``choices`` (a list), from the integer range ``[low, high]``,
    or from the list with probability ``choice_prob`` and from the range otherwise."""

    choices: tuple[int, ...] = ()
    low: int | None = None
    high: int | None = None
    choice_prob: float = 0.0

    def __post_init__(self) -> None:
        if not self.choices and self.low is None:
            raise ValueError("give quality choices, a quality range, or both")
        for q in (*self.choices, *(v for v in (self.low, self.high) if v is not None)):
            if not 1 <= q <= 100:
                raise ValueError(f"JPEG quality factors must be in 1..100, got {q}")
        if self.low is not None and (self.high is None or self.high < self.low):
            raise ValueError(f"bad quality range [{self.low}, {self.high}]")

    def __call__(self, rng: np.random.Generator) -> int:
        use_choices = self.choices and (self.low is None or rng.random() < self.choice_prob)
        if use_choices:
            return int(self.choices[rng.integers(len(self.choices))])
        return int(rng.integers(self.low, self.high + 1))


@dataclass(frozen=True)
class Degradations:
    """JPEGs as users meet them beyond the protocol's (libjpeg's standard tables, 4:2:0, one
    compression): each field is the share of training crops that get that variant, drawn
    independently. The quality the model is told is the one read from the final file
    (:func:`d2lnet.jpeg.estimate_quality`), as ``d2lnet restore`` reads it: the nearest IJG
    quality for other tables.

    Fields:
        double: compressed twice, first at a quality drawn from ``first_quality`` on a grid
            shifted by 1 to 7 pixels (a JPEG cropped, then saved again).
        subsampling: colour crops at 4:4:4 or 4:2:2 (half each) instead of 4:2:0.
        tables: non-standard tables: the IJG tables of the drawn quality with each entry scaled
            by a factor drawn from ``table_jitter`` (log-uniform).
    """

    double: float = 0.0
    subsampling: float = 0.0
    tables: float = 0.0
    first_quality: tuple[int, int] = (30, 95)
    table_jitter: tuple[float, float] = (0.75, 1.33)

    def __post_init__(self) -> None:
        for name in ("double", "subsampling", "tables"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"degradation share {name} must be in [0, 1], got {getattr(self, name)}")

    @property
    def any(self) -> bool:
        return self.double > 0 or self.subsampling > 0 or self.tables > 0

    def encode(self, patch: np.ndarray, quality: int, rng: np.random.Generator) -> bytes:
        """The final JPEG file of the uint8 crop ``patch`` (grey (H, W) or RGB) at ``quality``."""
        colour = patch.ndim == 3
        subsampling = int(rng.integers(2)) if colour and rng.random() < self.subsampling else 2
        tables = jittered_tables(quality, self.table_jitter, rng) if rng.random() < self.tables else None
        if rng.random() < self.double:
            dy, dx = (int(v) for v in rng.integers(0, jpeg.BLOCK, 2))
            if dy == dx == 0:
                dy = 1 + int(rng.integers(jpeg.BLOCK - 1))
            pad = ((dy, jpeg.BLOCK - dy), (dx, jpeg.BLOCK - dx)) + ((0, 0),) * (patch.ndim - 2)
            first = jpeg.roundtrip(np.pad(patch, pad, mode="reflect"), int(rng.integers(*self.first_quality, endpoint=True)))
            patch = first[dy : dy + patch.shape[0], dx : dx + patch.shape[1]]
        return jpeg.compress(patch, quality, subsampling=subsampling, tables=tables)


def jittered_tables(quality: int, jitter: tuple[float, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Luma and chroma tables unlike any IJG quality's: those of ``quality``, each entry scaled by
    a log-uniform factor in ``jitter``, rounded and kept within baseline JPEG's 1..255."""
    low, high = np.log(jitter[0]), np.log(jitter[1])
    return tuple(
        np.clip(np.round(jpeg.ijg_table(quality, chroma) * np.exp(rng.uniform(low, high, 64))), 1, 255).astype(int)
        for chroma in (False, True)
    )


class JPEGTrainSet(Dataset):
    """Random crops of clean images with their JPEG-compressed versions.

    Each item is a dict with ``lq`` (the decoded JPEG) and ``gt`` (the clean crop), float32
    (C, crop, crop) in [0, 1], and ``qf``, the quality factor the crop was compressed at.
    With several crop sizes, each batch (``batch_size`` consecutive indices) draws one of
    them, so that a batch stacks and the model sees the statistics of several image sizes.
    Indices are global sample numbers; epoch e visits every image once, in an order drawn
    from ``(seed, e)``. Unreadable images are reported by name on stderr and skipped.

    Args:
        folders: folders of clean images (searched recursively).
        crop: side of the square crops (a multiple of 8, so the JPEG grid is the crop's), or
            several sides, one drawn per batch.
        quality: the :class:`QualitySampler` drawing each sample's quality factor.
        gray: train on the protocol's grey (BT.601 Y) images instead of RGB.
        rescale: ``(low, high)``: scale each crop's source region by a random factor in that
            range before cropping (more scales; downscaling also hides the sources' own JPEG grid).
        augment: apply one of the 8 flips/rotations at random.
        seed: the seed every sample is derived from.
        cache: keep decoded images in memory (about 3 bytes per pixel).
        holdout: leave out this fraction of the images (:func:`split_holdout`), for validation.
        batch_size: indices per batch, which share one crop size.
        jpeg_sources: what to do with images that are themselves decoded JPEGs (their pixels show
            a quality, :func:`d2lnet.jpeg.estimate_quality_from_pixels`): ``"keep"`` them as
            targets, ``"downscale"`` them 2x first (which hides their 8x8 grid and most of its
            artifacts, as the datasets' own 2x versions do), or ``"drop"`` them.
        degradations: JPEG variants beyond the protocol's, and their shares (:class:`Degradations`).
    """

    def __init__(
        self,
        folders: Sequence[str | Path],
        crop: int | Sequence[int],
        quality: QualitySampler,
        gray: bool = False,
        rescale: tuple[float, float] | None = None,
        augment: bool = True,
        seed: int = 0,
        cache: bool = True,
        holdout: float = 0.0,
        batch_size: int = 1,
        jpeg_sources: str = "keep",
        degradations: Degradations = Degradations(),
    ) -> None:
        if jpeg_sources not in JPEG_SOURCES:
            raise ValueError(f"jpeg_sources must be one of {', '.join(JPEG_SOURCES)}, got {jpeg_sources!r}")
        self.crops = (crop,) if isinstance(crop, int) else tuple(crop)
        if not self.crops or any(c <= 0 or c % 8 for c in self.crops):
            raise ValueError(f"crop sizes must be positive multiples of 8 (the JPEG block), got {crop}")
        self.quality, self.gray, self.batch_size = quality, gray, batch_size
        self.rescale, self.augment, self.seed, self.degradations = rescale, augment, seed, degradations
        self.files: list[Path] = []
        self.halved: list[bool] = []  # per file: downscaled 2x (a decoded JPEG, jpeg_sources="downscale")
        self.images: list[np.ndarray] | None = [] if cache else None
        crop = max(self.crops)
        found = split_holdout(find_images_in(folders), holdout)[0]
        decoded_jpegs, too_small = 0, []
        for path in found:
            try:
                image = read_array(path)
            except ImageError as error:  # report the file, keep going
                print(f"warning: skipping unreadable training image {path}: {error}", file=sys.stderr)
                continue
            halve = False
            if jpeg_sources != "keep" and jpeg.estimate_quality_from_pixels(image) is not None:
                decoded_jpegs += 1
                if jpeg_sources == "drop":
                    continue
                image, halve = downscale_2x(image), True
            if min(image.shape[:2]) < crop:
                too_small.append(f"{path.name} ({image.shape[1]}x{image.shape[0]})")
                continue
            self.files.append(path)
            self.halved.append(halve)
            if self.images is not None:
                self.images.append(to_mode(image, gray))
        if too_small:  # one line, not one per image: downscaling decoded JPEGs can leave out hundreds
            examples = ", ".join(too_small[:3]) + (", ..." if len(too_small) > 3 else "")
            print(
                f"warning: skipping {len(too_small)} training images smaller than the {crop}px crop: {examples}", file=sys.stderr
            )
        if jpeg_sources != "keep":
            done = "left out" if jpeg_sources == "drop" else "downscaled 2x"
            print(f"{decoded_jpegs} of {len(found)} training images are decoded JPEGs: {done}", file=sys.stderr)
        if not self.files:
            where = ", ".join(map(str, folders))
            reason = "no image files" if not found else f"none of its {len(found)} image files is readable and at least {crop}px"
            raise ValueError(f"no usable training images in {where}: {reason}")

    def __len__(self) -> int:
        return len(self.files)

    def crop_for(self, index: int) -> int:
        """The crop side of sample ``index``: drawn once per batch, from ``(seed, batch)``."""
        if len(self.crops) == 1:
            return self.crops[0]
        batch = index // self.batch_size
        return int(self.crops[np.random.default_rng([self.seed, batch, 2]).integers(len(self.crops))])

    def _image(self, i: int) -> np.ndarray:
        if self.images is not None:
            return self.images[i]
        image = read_array(self.files[i])
        return to_mode(downscale_2x(image) if self.halved[i] else image, self.gray)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The uint8 ``(clean crop, JPEG crop, quality)`` of global sample ``index``; the quality is
        the one the model is told (the file's, read back, when there are degradations)."""
        n = len(self.files)
        epoch, position = divmod(index, n)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        rng = np.random.default_rng([self.seed, index, 1])
        image = self._image(int(order[position]))
        h, w = image.shape[:2]

        crop = self.crop_for(index)
        side = crop
        if self.rescale is not None:  # crop a region of side crop / scale, resize it to crop
            scale = rng.uniform(*self.rescale)
            side = min(int(round(crop / scale)), h, w)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = image[top : top + side, left : left + side]
        if side != crop:
            patch = np.asarray(Image.fromarray(patch).resize((crop, crop), Image.Resampling.BICUBIC, reducing_gap=None))
        if self.augment:  # one of the 8 elements of the dihedral group
            k = rng.integers(8)
            patch = np.rot90(patch, k % 4)
            if k >= 4:
                patch = patch[:, ::-1]
        patch = np.ascontiguousarray(patch)
        qf = self.quality(rng)
        if not self.degradations.any:
            return patch, jpeg.roundtrip(patch, qf), qf
        # A generator of its own, so that recipes without degradations keep their samples.
        encoded = self.degradations.encode(patch, qf, np.random.default_rng([self.seed, index, 3]))
        return patch, jpeg.decompress(encoded), jpeg.estimate_quality(encoded)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        clean, degraded, qf = self.sample(index)
        return {"lq": to_tensor(degraded), "gt": to_tensor(clean), "qf": qf}


class StepSampler(Sampler[int]):
    """Yields the global sample indices of steps ``start_step, start_step + 1, ...``, for one rank.

    Step s of rank r takes samples ``(s * world + r) * batch_size + j`` for j < batch_size, so
    every rank sees different samples and a resumed run continues exactly where it stopped.
    """

    def __init__(
        self, batch_size: int, start_step: int = 0, steps: int | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        self.batch_size, self.start_step, self.steps = batch_size, start_step, steps
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while self.steps is None or step < self.steps:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("an endless StepSampler has no length")
        return max(0, self.steps - self.start_step) * self.batch_size
