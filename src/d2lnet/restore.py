"""Restoring images from Python: :func:`restore_image` (and :func:`restore_pil` for many images).

Quality factor. The blind models take the JPEG quality factor (QF) as an input. For a PIL
image opened from a JPEG file it is read from the file's quantization tables
(:func:`d2lnet.jpeg.estimate_quality`); ``quality=N`` overrides it. For anything else (an
array, a PNG, even one decoded from a JPEG) the quality is *unknown*: None, and the model
uses the embedding it learned for images of unknown quality (training hides the QF now and
then for this). Models without quality conditioning ignore the QF.

Channels. Grey images (L, LA) go to the grey model and colour images (RGB, RGBA) to the
colour model unless a model is named. A grey image given to a colour model is replicated
to three channels, restored, and converted back to grey (Pillow's ITU-R 601-2 luma); a
colour image given to a grey model has only its luma restored (Pillow's JPEG YCbCr: restore
Y, keep Cb and Cr). Grey stays grey and colour stays colour; an alpha channel is carried
through unchanged (it is not restored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from d2lnet.engine import Restorer
from d2lnet.images import check_mode
from d2lnet.jpeg import estimate_quality
from d2lnet.model import D2LNet
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY, load_model


def default_model(gray: bool) -> str:
    """The bundled model for grey or colour images."""
    return DEFAULT_GRAY if gray else DEFAULT_COLOR


def restore_pil(image: Image.Image, restorer: Restorer, quality: int | None = None) -> Image.Image:
    """Restore a PIL image of mode L, LA, RGB or RGBA; the same mode comes back, alpha untouched.

    A grey image and a colour model: replicated to RGB, restored, and back to grey (ITU-R 601-2
    luma). A colour image and a grey model: only the luma (Pillow's JPEG YCbCr) is restored.
    """
    check_mode(image.mode)
    gray = image.mode in ("L", "LA")
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    base = image.convert("L" if gray else "RGB")  # without the alpha
    if restorer.channels == 1 and not gray:
        y, cb, cr = base.convert("YCbCr").split()
        y = Image.fromarray(restorer.restore(np.asarray(y), quality))
        restored = Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
    elif restorer.channels == 3 and gray:
        rgb = np.repeat(np.asarray(base)[..., None], 3, axis=2)
        restored = Image.fromarray(restorer.restore(rgb, quality)).convert("L")
    else:
        restored = Image.fromarray(restorer.restore(np.asarray(base), quality))
    if alpha is not None:
        restored.putalpha(alpha)
    return restored


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
) -> Image.Image | np.ndarray:
    """Remove JPEG artifacts from one image.

    Args:
        image: a PIL image (mode L, LA, RGB or RGBA) or a uint8 array (H, W), (H, W, 1),
            (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA. The result has the same
            type, mode or shape; alpha is carried through unchanged. The pixels are taken as
            they are: no EXIF rotation (``PIL.ImageOps.exif_transpose`` does that).
        model: None for the bundled model matching the image (grey or colour), a bundled name
            or weights file (loaded on every call: for many images pass a model or a Restorer),
            a :class:`D2LNet`, or a :class:`Restorer` (its device, tiling and precision apply).
        quality: the JPEG quality factor the image was compressed with (1 to 100). None: read
            from the file for a PIL image opened from a JPEG file (``Image.open("photo.jpg")``),
            else unknown (an array no longer knows it: :func:`d2lnet.jpeg.estimate_quality`
            reads it from the file's bytes).
        device: where a model given by name runs (default: CUDA if available, else the CPU) or
            a D2LNet runs (default: where it is). Whole images, or tiles where memory is short.
    """
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be a JPEG quality factor from 1 to 100 (or None if unknown), got {quality}")
    if isinstance(image, Image.Image):
        if quality is None and image.format in ("JPEG", "MPO") and getattr(image, "filename", ""):
            quality = estimate_quality(image.filename)
        restorer = _as_restorer(model, image.mode in ("L", "LA"), device)
        return restore_pil(image, restorer, quality)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {image.dtype}: scale to 0-255 and convert first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))):
        raise ValueError(f"expected an array of shape (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    restorer = _as_restorer(model, pil.mode in ("L", "LA"), device)
    return np.array(restore_pil(pil, restorer, quality)).reshape(image.shape)
