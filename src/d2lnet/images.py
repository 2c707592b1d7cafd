"""Reading and writing image files, with their metadata, for ``d2lnet restore``.

Reading (:func:`read_image`) gives an upright 8-bit image of mode L, LA, RGB or
RGBA, with the EXIF orientation applied, plus what the output should keep: the
ICC colour profile, the EXIF block (its orientation reset to upright) and, for
JPEG files, the quality factor read from the quantization tables. Everything that
can go wrong with a file (empty, truncated, not an image, an unsupported mode, too
large) raises :class:`ImageError` with a one-line reason.

Writing (:func:`write_image`) is atomic: the image goes to a temporary file in the
destination folder, which is renamed over the destination only once complete, and
removed if anything fails, so a crash never leaves a half-written image behind.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from d2lnet.atomic import atomic_write
from d2lnet.jpeg import estimate_quality

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
