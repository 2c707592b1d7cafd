"""Pixels: image files, arrays and tensors, in one place.

* Files in: :func:`find_images` (the image files of folders), :func:`read_image` (a file
  decoded upright, with the metadata a restored copy keeps and the JPEG quality factor) and
  :func:`read_array` (a file as the protocol's uint8 RGB or grey array).
* Arrays: :func:`to_mode` (RGB, or the protocol's grey: the BT.601 Y channel) and
  :func:`center_crop` (on the 8x8 JPEG grid).
* Tensors: :func:`to_tensor` and :func:`to_image`, between uint8 (H, W, C) arrays and float
  (C, H, W) tensors in [0, 1].
* Files out: :func:`write_image`, atomic (:mod:`d2lnet.atomic`), so that a crash never
  leaves a half-written image behind.

Everything that can go wrong with a file (empty, truncated, not an image, an unsupported
mode, too large) raises :class:`ImageError` with a one-line reason.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from d2lnet.atomic import atomic_write
from d2lnet.jpeg import BLOCK, estimate_quality
from d2lnet.metrics import rgb_to_y

# Inputs found in folders and globs; a file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Output formats by file suffix.
OUTPUT_FORMATS = {".png": "PNG", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG"}
SUPPORTED_MODES = ("L", "LA", "RGB", "RGBA")
JPEG_OUTPUT_QUALITY = 95
_EXIF_ORIENTATION = 0x0112
_JPEG_MAX_EXIF = 65533  # an APP1 segment's payload limit

_MODE_HINTS = {
    "CMYK": "CMYK images are not supported; convert it to RGB first",
    "P": "palette images are not supported; convert it to RGB (or RGBA) first",
    "PA": "palette images are not supported; convert it to RGBA first",
    "1": "1-bit images are not supported; convert it to L (8-bit grey) first",
    "I;16": "16-bit images are not supported; convert it to 8 bits (L or RGB) first",
    "I": "32-bit integer images are not supported; convert it to 8 bits (L or RGB) first",
    "F": "floating-point images are not supported; convert it to 8 bits (L or RGB) first",
}


# --------------------------------------------------------------------------- arrays and tensors


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (C, H, W) in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    # Contiguous and writable (arrays of decoded images are read-only, which torch warns about).
    chw = np.require(image.transpose(2, 0, 1), requirements=["C", "W"])
    return torch.from_numpy(chw).float().div_(255)


def to_image(x: torch.Tensor) -> np.ndarray:
    """float (C, H, W), nominally in [0, 1] -> uint8 (H, W, C): clamped, scaled, rounded."""
    return x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_mode(image: np.ndarray, gray: bool) -> np.ndarray:
    """The protocol's grey (BT.601 Y, :func:`d2lnet.metrics.rgb_to_y`) or RGB version of a
    uint8 (H, W) or (H, W, 3) image: (H, W) when ``gray``, else (H, W, 3)."""
    if gray:
        return image if image.ndim == 2 else rgb_to_y(image)
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop (smaller for small images) near the centre, its corner on the
    8x8 JPEG grid, so that its block boundaries are the image's."""
    h, w = image.shape[:2]
    size = min(size, h, w)
    top, left = (h - size) // 2 // BLOCK * BLOCK, (w - size) // 2 // BLOCK * BLOCK
    return np.ascontiguousarray(image[top : top + size, left : left + size])


# --------------------------------------------------------------------------- finding image files


def find_images(folder: str | Path, recursive: bool = True, exclude: Path | None = None) -> list[Path]:
    """The image files (by :data:`IMAGE_EXTENSIONS`) in ``folder``, sorted; hidden files and
    folders are left out, and so is anything under ``exclude`` (an output folder inside an
    input folder: earlier outputs are not inputs)."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if exclude is not None and exclude in path.resolve().parents:
            continue
        found.append(path)
    return found


def find_images_in(folders: Iterable[str | Path]) -> list[Path]:
    """The image files under several folders (recursively), sorted; a missing folder is an error."""
    files: list[Path] = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"image folder not found: {folder}")
        files += find_images(folder)
    return sorted(files)


# --------------------------------------------------------------------------- reading


class ImageError(Exception):
    """A file that cannot be read or written; the message is one line saying why."""


def check_mode(mode: str) -> None:
    """Raise ValueError with the reason and a hint unless ``mode`` is L, LA, RGB or RGBA."""
    if mode in SUPPORTED_MODES:
        return
    hint = _MODE_HINTS.get("I;16" if mode.startswith("I;16") else mode)  # I;16, I;16B, I;16L, ...
    raise ValueError(hint or f"images of mode {mode} are not supported; convert it to RGB (or L for grey) first")


@dataclass
class LoadedImage:
    """An image read from a file, upright, with the metadata its restored version keeps.

    Attributes:
        image: mode L, LA, RGB or RGBA, EXIF orientation applied.
        quality: the JPEG quality factor (1 to 100) for JPEG files, else None.
        icc_profile: the embedded ICC profile, if any.
        exif: the EXIF block with the orientation reset to upright, if the file had one.
    """

    image: Image.Image
    quality: int | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file fully (so that a truncated file fails here, not later).

    Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``) is enforced before
    any pixel is decoded: an image over it raises :class:`ImageError`, as does any file
    that is empty, truncated, not an image, animated, or of an unsupported mode.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read the file: {error.strerror or error}") from None
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice its limit; both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"too large: {error}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image file that Pillow can read") from None
    except Exception as error:  # Pillow raises many types for malformed headers
        raise ImageError(f"unreadable image header: {error}") from None
    try:
        check_mode(im.mode)
    except ValueError as error:
        raise ImageError(f"{error} (mode {im.mode})") from None
    if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: a camera JPEG whose first frame is the photo
        raise ImageError(f"animated or multi-page images are not supported ({im.n_frames} frames)")
    try:
        im.load()
    except Exception as error:
        raise ImageError(f"corrupt or truncated image: {error}") from None

    quality = estimate_quality(data) if im.format in ("JPEG", "MPO") else None
    icc_profile = im.info.get("icc_profile") or None
    upright = ImageOps.exif_transpose(im)
    exif = None
    if "exif" in im.info:  # a real EXIF block (a TIFF's getexif() is its own image directory instead)
        tags = upright.getexif()
        tags[_EXIF_ORIENTATION] = 1  # the pixels are upright now
        exif = tags.tobytes()
    return LoadedImage(upright, quality, icc_profile, exif)


def read_array(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W) for grey or (H, W, 3) for colour, upright, alpha dropped:
    the ground truths of training and evaluation. Raises :class:`ImageError`."""
    image = read_image(path).image
    return np.asarray(image.convert("L" if image.mode in ("L", "LA") else "RGB"))


# --------------------------------------------------------------------------- writing


def output_format(path: str | Path) -> str:
    """The Pillow format name for an output file's suffix (PNG, WEBP or JPEG)."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write {suffix or 'files without a suffix'}: use one of {', '.join(OUTPUT_FORMATS)}")
    return OUTPUT_FORMATS[suffix]


def _save_options(image: Image.Image, fmt: str, icc_profile: bytes | None, exif: bytes | None) -> tuple[Image.Image, dict]:
    """The image as ``fmt`` can hold it, and the options to save it with."""
    if fmt == "JPEG":
        if image.mode in ("LA", "RGBA"):
            raise ValueError("JPEG has no alpha channel: drop it before saving")
        if exif and len(exif) > _JPEG_MAX_EXIF:
            exif = None  # does not fit a JPEG APP1 segment; the pixels matter more than the tags
        # 4:4:4 (subsampling=0): no chroma blur on top of what was just restored.
        options = {"quality": JPEG_OUTPUT_QUALITY, "subsampling": 0}
    elif fmt == "WEBP":
        if image.mode in ("L", "LA"):
            # WebP has no grey mode; a grey ICC profile cannot describe RGB pixels, so it goes too.
            image = image.convert("RGBA" if image.mode == "LA" else "RGB")
            if icc_profile and icc_profile[16:20] == b"GRAY":
                icc_profile = None
        # Lossless, so that saving adds no new artifacts; exact keeps the colour under transparent pixels.
        options = {"lossless": True, "exact": True}
    else:
        options = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    return image, options


def write_image(
    image: Image.Image,
    path: str | Path,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    overwrite: bool = False,
) -> None:
    """Save ``image`` atomically to ``path`` (PNG, WebP or JPEG by suffix), creating its folder.

    PNG and WebP are lossless; JPEG is quality 95 with 4:4:4 chroma and takes no alpha.
    WebP has no grey mode, so grey images are stored as RGB there.
    Raises :class:`ImageError` if ``path`` exists and not ``overwrite``, or cannot be written.
    """
    path = Path(path)
    fmt = output_format(path)
    image, options = _save_options(image, fmt, icc_profile, exif)
    if path.exists() and not overwrite:
        raise ImageError(f"{path} exists (pass --overwrite to replace it)")
    try:
        with atomic_write(path) as f:
            image.save(f, format=fmt, **options)
    except OSError as error:
        raise ImageError(f"cannot write {path}: {error.strerror or error}") from None
