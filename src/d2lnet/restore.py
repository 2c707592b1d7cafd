"""Restoring images from Python: :func:`restore_image` (and :func:`restore_pil` for many images).

Quality factor. The blind models take the JPEG quality factor (QF) as an input. For a PIL
image opened from a JPEG file it is read from the file's quantization tables
(:func:`d2lnet.jpeg.estimate_quality`); ``quality=N`` overrides it. For anything else (an
array, a PNG) it is the quality whose quantization the pixels still show, if they do
(:func:`d2lnet.jpeg.estimate_quality_from_pixels`: a PNG saved from a JPEG, uncropped and
unscaled). Otherwise the quality is *unknown*: None, and the model uses the embedding it
learned for images of unknown quality (training hides the QF now and then for this). Models
without quality conditioning ignore the QF.

Channels. Grey images (L, LA) go to the grey model and colour images (RGB, RGBA) to the
colour model unless a model is named. A grey image given to a colour model is replicated
to three channels, restored, and converted back to grey (Pillow's ITU-R 601-2 luma); a
colour image given to a grey model has only its luma restored (Pillow's JPEG YCbCr: restore
Y, keep Cb and Cr). Grey stays grey and colour stays colour; an alpha channel is carried
through unchanged (it is not restored). Other kinds (CMYK, palette, 16-bit, ...) are converted
first (:func:`d2lnet.images.to_supported`).

Chroma of 4:4:4 files. The colour models were trained on 4:2:0 JPEGs, whose chroma the
encoder halved: on a file that keeps full-resolution chroma they restore it as if it had been
halved, which still gains at low quality but loses at high. From the quality a model's card
names (``keep_444_chroma_from``), such a file keeps its own chroma and only its luma is
restored (:func:`with_chroma_of`).

Projection. For an image read from a JPEG file, the restoration is then projected onto the
set of images that compress to that file (:mod:`d2lnet.projection`): on 96 held-out training
crops at QF 10 to 90 it never lowered PSNR (+0.01 to +0.13 dB on average), so it is on by
default; ``project=False`` (``--no-project``) turns it off.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from d2lnet.engine import Restorer, check_strength
from d2lnet.images import SUPPORTED_MODES, LoadedImage, check_mode, to_supported
from d2lnet.jpeg import (
    chroma_subsampling,
    estimate_quality,
    estimate_quality_from_pixels,
    rgb_from_ycbcr,
    ycbcr_from_rgb,
)
from d2lnet.model import D2LNet
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY, load_model
from d2lnet.projection import project, read_components

# What Pillow's exif_transpose does to make each EXIF orientation upright, and its inverse.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}  # fmt: skip
_AS_STORED = {**_UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
UNKNOWN_QUALITY = (
    "not a JPEG file, and its pixels show no JPEG quantization: the quality factor is unknown, "
    "and the model is told so (give --quality N if you know it)"
)
ESTIMATED_QUALITY = "not a JPEG file: quality {} estimated from the JPEG quantization its pixels show (--quality N overrides it)"
FILE_CHROMA = (
    "4:4:4 JPEG at quality {}: its chroma is kept as the file has it and only the luma restored "
    "(this model, trained on 4:2:0, loses on full-resolution chroma from quality {})"
)


def default_model(gray: bool) -> str:
    """The bundled model for grey or colour images."""
    return DEFAULT_GRAY if gray else DEFAULT_COLOR


def pixel_quality(image: Image.Image, restorer: Restorer) -> int | None:
    """:func:`d2lnet.jpeg.estimate_quality_from_pixels` of a PIL image of mode L, LA, RGB or RGBA,
    for a model that takes a quality (None for the others: they need none)."""
    if not restorer.model.config.quality_conditioning:
        return None
    return estimate_quality_from_pixels(np.asarray(image.convert("L" if image.mode in ("L", "LA") else "RGB")))


def resolve_quality(loaded: LoadedImage, quality: int | None, restorer: Restorer) -> tuple[int | None, str | None]:
    """The quality factor to restore ``loaded`` with, and a note for the user on where it came
    from (None when there is nothing to say): ``quality`` if given, else the JPEG file's, else
    the one its pixels show (:func:`pixel_quality`), else None (unknown). Models without
    quality conditioning need none."""
    if quality is not None or loaded.quality is not None:
        return (quality if quality is not None else loaded.quality), None
    if not restorer.model.config.quality_conditioning:
        return None, None
    estimated = pixel_quality(loaded.image, restorer)
    return estimated, (UNKNOWN_QUALITY if estimated is None else ESTIMATED_QUALITY.format(estimated))


def restore_pil(image: Image.Image, restorer: Restorer, quality: int | None = None, strength: float = 1.0) -> Image.Image:
    """Restore a PIL image of mode L, LA, RGB or RGBA; the same mode comes back, alpha untouched.
    ``strength`` < 1 applies the restoration in part (:func:`d2lnet.engine.blend`).

    A grey image and a colour model: replicated to RGB, restored, and back to grey (ITU-R 601-2
    luma). A colour image and a grey model: only the luma (Pillow's JPEG YCbCr) is restored.
    """
    check_mode(image.mode)
    gray = image.mode in ("L", "LA")
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    base = image.convert("L" if gray else "RGB")  # without the alpha
    if restorer.channels == 1 and not gray:
        y, cb, cr = base.convert("YCbCr").split()
        y = Image.fromarray(restorer.restore(np.asarray(y), quality, strength))
        restored = Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
    elif restorer.channels == 3 and gray:
        rgb = np.repeat(np.asarray(base)[..., None], 3, axis=2)
        restored = Image.fromarray(restorer.restore(rgb, quality, strength)).convert("L")
    else:
        restored = Image.fromarray(restorer.restore(np.asarray(base), quality, strength))
    if alpha is not None:
        restored.putalpha(alpha)
    return restored


def keeps_file_chroma(restorer: Restorer, quality: int | None, subsampling: int | None) -> bool:
    """Whether a colour JPEG keeps its own chroma: it is stored at full resolution (``subsampling``
    0, 4:4:4) and ``quality`` is at least the model card's ``keep_444_chroma_from``."""
    card = getattr(restorer.model, "card", None)  # set by load_model
    start = card.keep_444_chroma_from if card is not None else None
    return restorer.channels == 3 and subsampling == 0 and None not in (start, quality) and quality >= start


def with_chroma_of(restored: Image.Image, source: Image.Image) -> Image.Image:
    """The luma of ``restored`` (RGB or RGBA) with the chroma of ``source`` (the same size), in
    JFIF YCbCr, in float and rounded once; the alpha of ``restored`` is kept."""
    alpha = restored.getchannel("A") if restored.mode == "RGBA" else None
    luma = ycbcr_from_rgb(np.asarray(restored.convert("RGB")))[..., :1]
    chroma = ycbcr_from_rgb(np.asarray(source.convert("RGB")))[..., 1:]
    rgb = rgb_from_ycbcr(np.concatenate([luma, chroma], axis=-1))
    merged = Image.fromarray(np.clip(np.round(rgb), 0, 255).astype(np.uint8))
    if alpha is not None:
        merged.putalpha(alpha)
    return merged


def project_onto_jpeg(restored: Image.Image, jpeg_file: str | Path, orientation: int = 1) -> Image.Image | None:
    """``restored`` projected onto the JPEG file it was restored from (:mod:`d2lnet.projection`);
    ``orientation``: the EXIF orientation applied to it since. None when that cannot be done:
    the file's coefficients cannot be read (CMYK, jpeglib missing), or they do not describe
    these pixels (another size, or colour restored from a grey file)."""
    components = read_components(jpeg_file)
    if components is None:
        return None
    alpha = restored.getchannel("A") if restored.mode in ("LA", "RGBA") else None
    base = restored.convert("L" if restored.mode in ("L", "LA") else "RGB")
    if orientation in _AS_STORED:
        base = base.transpose(_AS_STORED[orientation])  # back to the file's orientation
    rows, cols = components[0].coefficients.shape[:2]
    extra_rows, extra_cols = rows - math.ceil(base.height / 8), cols - math.ceil(base.width / 8)
    # The file's luma may have one block more than the image needs (padding to a whole MCU).
    if (base.mode == "L") != (len(components) == 1) or not (0 <= extra_rows <= 1 and 0 <= extra_cols <= 1):
        return None
    projected = Image.fromarray(project(np.asarray(base), components))
    if orientation in _UPRIGHT:
        projected = projected.transpose(_UPRIGHT[orientation])
    if alpha is not None:
        projected.putalpha(alpha)
    return projected


def restore_loaded(
    loaded: LoadedImage, restorer: Restorer, quality: int | None = None, project_jpeg: bool = True, strength: float = 1.0
) -> tuple[Image.Image, list[str]]:
    """An image read by :func:`d2lnet.images.read_image`, restored as ``d2lnet restore`` does:
    with the quality of :func:`resolve_quality`, applied at ``strength`` (:func:`d2lnet.engine.blend`),
    then projected onto its JPEG file (``project_jpeg``). Returns the restored image and notes for
    the user (where the quality came from, what could not be done, and why)."""
    quality, note = resolve_quality(loaded, quality, restorer)
    restored, notes = restore_at(loaded, restorer, quality, project_jpeg, strength)
    return restored, [note, *notes] if note else notes


def restore_at(
    loaded: LoadedImage, restorer: Restorer, quality: int | None, project_jpeg: bool = True, strength: float = 1.0
) -> tuple[Image.Image, list[str]]:
    """:func:`restore_loaded` at a quality already resolved (:func:`resolve_quality`; None: unknown)."""
    notes = []
    restored = restore_pil(loaded.image, restorer, quality, strength)
    if keeps_file_chroma(restorer, quality, loaded.subsampling):
        restored = with_chroma_of(restored, loaded.image)
        notes.append(FILE_CHROMA.format(quality, restorer.model.card.keep_444_chroma_from))
    converted = bool(loaded.notes)  # e.g. from CMYK: these pixels are not the file's components
    if project_jpeg and loaded.is_jpeg and loaded.path is not None and not converted:
        projected = project_onto_jpeg(restored, loaded.path, loaded.orientation)
        if projected is None:
            notes.append("the JPEG's coefficients could not be read (is jpeglib installed?): not projected onto them")
        else:
            restored = projected
    return restored, notes


def _as_restorer(model: str | Path | D2LNet | Restorer | None, gray: bool, device: str | None) -> Restorer:
    if isinstance(model, Restorer):
        return model
    if model is None:
        model = default_model(gray)
    if isinstance(model, (str, Path)):
        return Restorer(load_model(model), device or "auto", tile="auto")
    if isinstance(model, D2LNet):
        # A model that is passed in stays where it is, unless told otherwise.
        return Restorer(model, device or next(model.parameters()).device, tile="auto")
    raise TypeError(f"model must be None, a name or path, a D2LNet or a Restorer, got {type(model).__name__}")


def restore_image(
    image: Image.Image | np.ndarray,
    model: str | Path | D2LNet | Restorer | None = None,
    quality: int | None = None,
    *,
    device: str | None = None,
    project_jpeg: bool = True,
    strength: float = 1.0,
) -> Image.Image | np.ndarray:
    """Remove JPEG artifacts from one image.

    Args:
        image: a PIL image or a uint8 array (H, W), (H, W, 1), (H, W, 2) grey + alpha, (H, W, 3)
            RGB or (H, W, 4) RGBA. The result has the same type, shape or mode (a PIL image of
            another mode than L, LA, RGB and RGBA comes back in the mode it was converted to,
            :func:`d2lnet.images.to_supported`); alpha is carried through unchanged. The pixels
            are taken as they are: no EXIF rotation (``PIL.ImageOps.exif_transpose`` does that).
        model: None for the bundled model matching the image (grey or colour), a bundled name
            or weights file (loaded on every call: for many images pass a model or a Restorer),
            a :class:`D2LNet`, or a :class:`Restorer` (its device, tiling and precision apply).
        quality: the JPEG quality factor the image was compressed with (1 to 100). None: read
            from the file for a PIL image opened from a JPEG file (``Image.open("photo.jpg")``),
            else the one the pixels show (:func:`pixel_quality`), else unknown.
        device: where a model given by name runs (default: CUDA if available, else the CPU) or
            a D2LNet runs (default: where it is). Whole images, or tiles where memory is short.
        project_jpeg: for a PIL image opened from a JPEG file, project the restoration onto that
            file (:func:`project_onto_jpeg`; skipped if the pixels no longer match the file).
        strength: from 0 to 1, how much of the restoration to apply: every pixel becomes
            ``input + strength * (restored - input)``, in float before rounding (and before the
            projection), so 0 gives the input back and 1 (default) the full restoration.
    """
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be a JPEG quality factor from 1 to 100 (or None if unknown), got {quality}")
    check_strength(strength)
    if isinstance(image, Image.Image):
        source = getattr(image, "filename", "") if image.format in ("JPEG", "MPO") else ""
        subsampling = chroma_subsampling(image)
        if quality is None and source:
            quality = estimate_quality(source)
        if image.mode not in SUPPORTED_MODES:
            image = to_supported(image).image
        restorer = _as_restorer(model, image.mode in ("L", "LA"), device)
        if quality is None:
            quality = pixel_quality(image, restorer)
        restored = restore_pil(image, restorer, quality, strength)
        if keeps_file_chroma(restorer, quality, subsampling):
            restored = with_chroma_of(restored, image)
        projected = project_onto_jpeg(restored, source) if project_jpeg and source else None
        return projected if projected is not None else restored
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {image.dtype}: scale to 0-255 and convert first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))):
        raise ValueError(f"expected an array of shape (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    restorer = _as_restorer(model, pil.mode in ("L", "LA"), device)
    if quality is None:
        quality = pixel_quality(pil, restorer)
    return np.array(restore_pil(pil, restorer, quality, strength)).reshape(image.shape)
