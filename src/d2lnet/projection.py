"""Quantization-constraint projection: keep a restored JPEG consistent with the file it came from.

A JPEG stores, for each 8x8 block of each component (Y, and Cb and Cr at their own, usually
halved, resolution), the integers ``q = round(F / Q)`` of the block's DCT coefficients ``F``
divided by the quantization table ``Q``. So the original image's coefficients lay in the
intervals ``[(q - 1/2) Q, (q + 1/2) Q]``. The projection moves every coefficient of the restored
image that falls outside its interval to the interval's nearest end, and leaves the others alone:
the closest image (in the L2 sense, per block and component) that compresses to the same file.
It can only move a restoration towards the original where the restoration left the set of
possible originals.

The quantized coefficients are read from the file with `jpeglib` (the optional ``[dct]``
extra); chroma is projected at the file's chroma resolution, its correction upsampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from d2lnet.jpeg import dct_matrix, join_blocks, rgb_from_ycbcr, split_blocks, ycbcr_from_rgb

_D = dct_matrix()


@dataclass(frozen=True)
class Component:
    """One component of a JPEG: quantized coefficients (rows, cols, 8, 8), its table (8, 8), and
    its subsampling (vertical, horizontal): how many image pixels one of its samples covers."""

    coefficients: np.ndarray
    table: np.ndarray
    subsampling: tuple[int, int]


def available() -> bool:
    """Whether the coefficient reader (jpeglib) is installed."""
    try:
        import jpeglib  # noqa: F401
    except ImportError:
        return False
    return True


def read_components(path: str | Path) -> list[Component] | None:
    """The components of a grey or YCbCr JPEG file (1 or 3); None for other JPEGs (CMYK, YCCK),
    for files that are not JPEGs, or when jpeglib is not installed."""
    try:
        import jpeglib
    except ImportError:
        return None
    try:
        dct = jpeglib.read_dct(str(path))
        dct.load()
        planes = [dct.Y] + ([dct.Cb, dct.Cr] if dct.has_chrominance else [])
        if dct.jpeg_color_space.name not in ("JCS_GRAYSCALE", "JCS_YCbCr") or any(p is None for p in planes):
            return None
        factors = np.asarray(dct.samp_factor).reshape(-1, 2)  # (vertical, horizontal) per component
        v_max, h_max = factors[:, 0].max(), factors[:, 1].max()
        return [
            Component(np.asarray(plane), np.asarray(dct.qt[table], dtype=np.float64), (int(v_max // v), int(h_max // h)))
            for plane, table, (v, h) in zip(planes, dct.quant_tbl_no, factors)
        ]
    except Exception:  # jpeglib raises bare exceptions for anything libjpeg refuses
        return None


def project_plane(plane: np.ndarray, component: Component) -> np.ndarray:
    """Project one plane (float, pixel values 0..255, at the component's resolution)."""
    rows, cols = component.coefficients.shape[:2]
    blocks = split_blocks(plane - 128.0, rows, cols)
    coefficients = _D @ blocks @ _D.T
    q, table = component.coefficients, component.table
    projected = np.clip(coefficients, (q - 0.5) * table, (q + 0.5) * table)
    return join_blocks(_D.T @ projected @ _D, *plane.shape) + 128.0


def _downsample(plane: np.ndarray, factor: tuple[int, int]) -> np.ndarray:
    """The mean over factor[0] x factor[1] boxes (the encoder's chroma downsampling), edges replicated."""
    fv, fh = factor
    h, w = plane.shape
    padded = np.pad(plane, ((0, -h % fv), (0, -w % fh)), mode="edge")
    return padded.reshape(padded.shape[0] // fv, fv, padded.shape[1] // fh, fh).mean(axis=(1, 3))


def _upsample(plane: np.ndarray, factor: tuple[int, int], h: int, w: int) -> np.ndarray:
    """``plane`` enlarged ``factor`` times, as the decoder enlarges chroma: libjpeg's "fancy"
    upsampling, a triangle filter (weights 3/4 and 1/4 per axis), which is bilinear
    interpolation between sample centres."""
    x = torch.from_numpy(plane)[None, None]
    size = (plane.shape[0] * factor[0], plane.shape[1] * factor[1])
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0, :h, :w].numpy()


def project(image: np.ndarray, components: list[Component]) -> np.ndarray:
    """Project a restored uint8 image, (H, W) grey or (H, W, 3) RGB, onto the set of images that
    the JPEG ``components`` describe; returns uint8 of the same shape."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if image.ndim == 2 or len(components) == 1:
        luma = image if image.ndim == 2 else None
        if luma is None:  # a colour image restored from a grey JPEG: not this file's pixels
            raise ValueError("a grey JPEG's coefficients cannot constrain a colour image")
        return np.clip(np.round(project_plane(luma.astype(np.float64), components[0])), 0, 255).astype(np.uint8)
    ycc = ycbcr_from_rgb(image)
    out = np.empty_like(ycc)
    for c, component in enumerate(components):
        plane = ycc[..., c]
        if component.subsampling == (1, 1):
            out[..., c] = project_plane(plane, component)
        else:
            low = _downsample(plane, component.subsampling)
            correction = project_plane(low, component) - low
            out[..., c] = plane + _upsample(correction, component.subsampling, h, w)
    return np.clip(np.round(rgb_from_ycbcr(out)), 0, 255).astype(np.uint8)
