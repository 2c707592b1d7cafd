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
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from d2lnet.atomic import atomic_write
from d2lnet.jpeg import BLOCK, chroma_subsampling, estimate_quality
from d2lnet.metrics import rgb_to_y

# Inputs found in folders and globs; a file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Output formats by file suffix.
OUTPUT_FORMATS = {".png": "PNG", ".webp": "WEBP", ".jpg": "JPEG", ".jpeg": "JPEG"}
SUPPORTED_MODES = ("L", "LA", "RGB", "RGBA")
JPEG_OUTPUT_QUALITY = 95
PNG_COMPRESS_LEVEL = 3  # zlib's speed/size trade-off for PNG outputs (see _save_options)
_EXIF_ORIENTATION = 0x0112
_JPEG_MAX_EXIF = 65533  # an APP1 segment's payload limit

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


_UNSUPPORTED = {
    "F": "floating-point images are not supported; convert it to 8 or 16 bits (L or RGB) first",
    "LAB": "Lab images are not supported; convert it to RGB first",
    "HSV": "HSV images are not supported; convert it to RGB first",
}
_EIGHT_BITS = "restored at 8 bits per sample (the high byte of each), as the model works on 8-bit JPEG data"


@dataclass
class Converted:
    """An image in a mode the models restore (L, LA, RGB, RGBA), and what was done to get it."""

    image: Image.Image
    notes: list[str]
    icc_profile: bytes | None


def to_supported(im: Image.Image, bits: int = 8, icc_profile: bytes | None = None) -> Converted:
    """``im`` as L, LA, RGB or RGBA, converting the other kinds people have:

    * CMYK (and YCCK, which the JPEG decoder turns into CMYK; Adobe's inverted CMYK too): to sRGB
      through the embedded ICC profile when there is one, else by Pillow's plain formula;
    * palette images to RGB, or RGBA when they have transparency; 1-bit images to L;
    * more than 8 bits per sample (16-bit grey, 48/64-bit RGB(A) PNG or TIFF, given as ``bits``
      from the file's header): to 8 bits, with a note saying so. Pillow hands 48/64-bit PNGs
      over as 8-bit RGB(A) already (the high byte); 16-bit grey is reduced the same way.

    ``icc_profile``: the image's profile (default: ``im.info``'s). Raises ValueError, with a hint,
    for kinds that are not converted (floating point, Lab, ...).
    """
    icc = icc_profile or im.info.get("icc_profile") or None
    notes: list[str] = []
    mode = im.mode
    if mode in _UNSUPPORTED or (
        mode not in SUPPORTED_MODES and mode not in ("CMYK", "P", "PA", "1", "YCbCr", "I") and not mode.startswith("I;16")
    ):
        raise ValueError(
            _UNSUPPORTED.get(mode, f"images of mode {mode} are not supported; convert it to RGB (or L for grey) first")
        )
    if mode == "CMYK":
        im, icc, how = _cmyk_to_rgb(im, icc)
        notes.append(f"CMYK image: converted to RGB {how}, and restored in RGB")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        notes.append(f"palette image: restored as {im.mode} (a palette cannot hold the restored colours)")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "YCbCr":
        im = im.convert("RGB")
    elif mode == "I" or mode.startswith("I;16"):
        values = np.asarray(im).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"32-bit integer images are not supported (values {values.min()} to {values.max()}); convert it to 16 or 8 bits first"
            )
        im = Image.fromarray((values >> 8).astype(np.uint8))
        bits = 16
    if bits > 8:
        notes.append(f"{bits} bits per sample: {_EIGHT_BITS}")
    return Converted(im, notes, icc)


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None, str]:
    """(RGB image, its ICC profile, how it was converted)."""
    if icc:
        try:
            from PIL import ImageCms

            srgb = ImageCms.createProfile("sRGB")
            rgb = ImageCms.profileToProfile(im, ImageCms.ImageCmsProfile(io.BytesIO(icc)), srgb, outputMode="RGB")
            return rgb, ImageCms.ImageCmsProfile(srgb).tobytes(), "through its ICC profile (to sRGB)"
        except Exception:  # a damaged or non-CMYK profile: fall back to the plain conversion, and say so
            return im.convert("RGB"), None, "by the plain formula (its ICC profile could not be used)"
    return im.convert("RGB"), None, "by the plain formula (it has no ICC profile: colours are approximate)"


def check_mode(mode: str) -> None:
    """Raise ValueError with the reason and a hint unless ``mode`` is L, LA, RGB or RGBA."""
    if mode not in SUPPORTED_MODES:
        raise ValueError(f"images of mode {mode} are not restored as they are; convert it with d2lnet.images.to_supported first")


@dataclass
class LoadedImage:
    """An image read from a file, upright, with the metadata its restored version keeps.

    Attributes:
        image: mode L, LA, RGB or RGBA, EXIF orientation applied.
        quality: the JPEG quality factor (1 to 100) for JPEG files, else None.
        icc_profile: the ICC profile for the restored image (the embedded one, or sRGB after a
            CMYK conversion), if any.
        exif: the EXIF block with the orientation reset to upright, if the file had one.
        notes: what was converted to read it (:func:`to_supported`), for the user.
        path: the file, if the image was read from one.
        is_jpeg: whether the file is a JPEG (its coefficients can constrain the restoration).
        orientation: the EXIF orientation (1 to 8) that was applied to make ``image`` upright.
        subsampling: how a colour JPEG file stores its chroma (:func:`d2lnet.jpeg.chroma_subsampling`:
            0 for 4:4:4, 1 for 4:2:2, 2 for 4:2:0), else None.
    """

    image: Image.Image
    quality: int | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    is_jpeg: bool = False
    orientation: int = 1
    subsampling: int | None = None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _bits_per_sample(im: Image.Image, data: bytes) -> int:
    """The bits per sample the file stores (Pillow may already have reduced them to 8)."""
    if data.startswith(_PNG_SIGNATURE) and len(data) > 25:
        return data[24]  # IHDR's bit depth
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return max(bits) if isinstance(bits, tuple) else int(bits)
    return 16 if im.mode.startswith("I;16") else 8


def _too_large(error: Exception) -> str:
    """Pillow's decompression-bomb refusal, with the configured limit (Pillow names twice it)."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "the image"
    return f"too large: {size} is over the limit of {Image.MAX_IMAGE_PIXELS / 1e6:g} megapixels"


def read_image(path: str | Path, check_size: Callable[[int, int], None] | None = None) -> LoadedImage:
    """Read an image file fully (so that a truncated file fails here, not later).

    Before any pixel is decoded, Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)
    is enforced, and ``check_size(width, height)`` is called (it may raise :class:`ImageError`, say
    when there is not enough memory). Kinds other than L, LA, RGB and RGBA are converted
    (:func:`to_supported`). Raises :class:`ImageError` for a file that is empty, truncated, not
    an image, animated, too large, or of a kind that is not converted.
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
        raise ImageError(_too_large(error)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image file that Pillow can read") from None
    except Exception as error:  # Pillow raises many types for malformed headers
        raise ImageError(f"unreadable image header: {error}") from None
    if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: a camera JPEG whose first frame is the photo
        raise ImageError(f"animated or multi-page images are not supported ({im.n_frames} frames)")
    if check_size is not None:
        check_size(*im.size)
    try:
        im.load()
    except Exception as error:
        raise ImageError(f"corrupt or truncated image: {error}") from None
    upright = ImageOps.exif_transpose(im)
    if im.mode == "RGBA" and data.startswith(_PNG_SIGNATURE) and data[25] == 4:
        upright = upright.convert("LA")  # a 16-bit grey + alpha PNG, which Pillow hands over as RGBA
    try:
        converted = to_supported(upright, _bits_per_sample(im, data), im.info.get("icc_profile"))
    except ValueError as error:
        raise ImageError(f"{error} (mode {im.mode})") from None

    is_jpeg = im.format in ("JPEG", "MPO")
    quality = estimate_quality(data) if is_jpeg else None
    exif = None
    orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    if "exif" in im.info:  # a real EXIF block (a TIFF's getexif() is its own image directory instead)
        tags = im.getexif()
        tags[_EXIF_ORIENTATION] = 1  # the pixels are upright now
        exif = tags.tobytes()
    orientation = orientation if orientation in range(1, 9) else 1
    return LoadedImage(
        converted.image, quality, converted.icc_profile, exif, converted.notes, path, is_jpeg, orientation, chroma_subsampling(im)
    )


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
        # zlib level 3, not Pillow's 6: half the time (0.34 s against 0.70 s for 8 LIVE1 and 3
        # Classic5 images) for files 2% larger; on restored photos, often smaller.
        options = {"compress_level": PNG_COMPRESS_LEVEL}
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
