"""JPEG round-trips of the benchmark protocol, and reading a file's quality factor.

Compression is libjpeg through Pillow at ``quality=QF`` with 4:2:0 chroma
subsampling for colour (Pillow's default, and OpenCV's: both give identical
pixels). A grey image is the protocol's BT.601 Y channel (:func:`d2lnet.metrics.rgb_to_y`)
encoded as a one-channel JPEG.

:func:`estimate_quality` reads the quantization tables of a JPEG file and returns
the IJG quality factor whose scaled standard tables they are, so that a blind
model can be told how hard the image was compressed. Pixels without a file (a PNG saved from
a JPEG, an array from a host program) keep the JPEG's quantization in their 8x8 DCT
coefficients: :func:`estimate_quality_from_pixels` finds it there.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from d2lnet.metrics import rgb_to_y

BLOCK = 8  # JPEG codes 8x8 blocks: the grid that tiles, crops and transforms keep aligned
# Annex K of ITU-T T.81, natural (row-major) order: the tables libjpeg scales by quality.
_STD_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])  # fmt: skip
_STD_CHROMINANCE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
])  # fmt: skip
# Position in natural order of the k-th coefficient of a DQT segment (which is in zigzag order).
_ZIGZAG = np.array([
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
    12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
    35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
])  # fmt: skip


# JFIF's full-range BT.601 YCbCr (rows Y, Cb, Cr; Cb and Cr offset by 128), as libjpeg converts.
JFIF_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_CHROMA_OFFSET = np.array([0.0, 128.0, 128.0])
# What Pillow's JpegImagePlugin.get_sampling returns: 0 is 4:4:4, 1 is 4:2:2, 2 is 4:2:0 (as compress takes it).
SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}


def ycbcr_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """JFIF YCbCr of an (..., 3) RGB array, in float64 without rounding (0..255 scale)."""
    return np.asarray(rgb, dtype=np.float64) @ JFIF_YCBCR.T + _CHROMA_OFFSET


def rgb_from_ycbcr(ycbcr: np.ndarray) -> np.ndarray:
    """The inverse of :func:`ycbcr_from_rgb`, in float64 (round and clip for pixels)."""
    return (ycbcr - _CHROMA_OFFSET) @ np.linalg.inv(JFIF_YCBCR).T


def chroma_subsampling(image: Image.Image) -> int | None:
    """How a colour JPEG opened by Pillow stores its chroma: 0 (4:4:4, full resolution), 1 (4:2:2)
    or 2 (4:2:0); None for anything else (grey, CMYK, other samplings, not a JPEG)."""
    from PIL import JpegImagePlugin

    if image.format not in ("JPEG", "MPO"):
        return None
    sampling = JpegImagePlugin.get_sampling(image)
    return sampling if sampling in SUBSAMPLING_NAMES else None


def split_blocks(plane: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``plane`` as rows x cols 8x8 blocks, (rows, cols, 8, 8): cut, or padded by replicating its edges."""
    h, w = plane.shape
    padded = np.pad(plane, ((0, max(0, rows * BLOCK - h)), (0, max(0, cols * BLOCK - w))), mode="edge")
    padded = padded[: rows * BLOCK, : cols * BLOCK]
    return padded.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3)


def join_blocks(blocks: np.ndarray, h: int, w: int) -> np.ndarray:
    """The (h, w) plane of :func:`split_blocks`' (rows, cols, 8, 8) blocks."""
    rows, cols = blocks.shape[:2]
    return blocks.transpose(0, 2, 1, 3).reshape(rows * BLOCK, cols * BLOCK)[:h, :w]


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """The orthonormal DCT-II matrix: JPEG's 8x8 DCT of a block B is ``D @ B @ D.T``."""
    k, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.cos((2 * x + 1) * k * math.pi / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def compress(
    image: np.ndarray,
    quality: int,
    gray: bool = False,
    *,
    subsampling: int = 2,
    tables: tuple[np.ndarray, ...] | None = None,
) -> bytes:
    """Encode a uint8 image (H, W) or (H, W, 3) as JPEG bytes at IJG quality ``quality`` (1 to 100).

    ``gray=True`` encodes the protocol's grey version (the BT.601 Y channel) of an RGB image.
    ``subsampling`` (colour only): 2 is 4:2:0 (the protocol's), 1 is 4:2:2, 0 is 4:4:4.
    ``tables``: quantization tables (luma, chroma; 64 values each in natural order) to use
    instead of the IJG tables of ``quality``, as other encoders (cameras, editors) do.
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if subsampling not in (0, 1, 2):
        raise ValueError(f"subsampling is 0 (4:4:4), 1 (4:2:2) or 2 (4:2:0), got {subsampling}")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if gray and image.ndim == 3:
        image = rgb_to_y(image)
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"expected (H, W) or (H, W, 3), got {image.shape}")
    buffer = io.BytesIO()
    # Subsampling stated even at Pillow's default (4:2:0), so that it never changes under us.
    options: dict = {"subsampling": subsampling} if image.ndim == 3 else {}
    if tables is not None:
        options["qtables"] = [np.asarray(t, dtype=int).reshape(64).tolist() for t in tables[: 2 if image.ndim == 3 else 1]]
    else:
        options["quality"] = int(quality)
    Image.fromarray(image).save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def decompress(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to uint8 (H, W) for grey or (H, W, 3) for colour."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return np.asarray(im)


def roundtrip(image: np.ndarray, quality: int, gray: bool = False) -> np.ndarray:
    """The JPEG-degraded version of ``image`` at ``quality``: :func:`decompress` of :func:`compress`."""
    return decompress(compress(image, quality, gray))


def quantization_tables(data: bytes) -> dict[int, np.ndarray] | None:
    """The quantization tables of JPEG ``data`` by table id, each 64 values in natural order;
    None if ``data`` is not a JPEG stream."""
    if data[:2] != b"\xff\xd8":
        return None
    tables: dict[int, np.ndarray] = {}
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return tables or None  # corrupt marker stream: keep what was read
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no tables after this
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if marker == 0xDB:
            i = 0
            while i < len(segment):
                precision, table_id = segment[i] >> 4, segment[i] & 0x0F
                size = 128 if precision else 64
                raw = np.frombuffer(segment[i + 1 : i + 1 + size], dtype=">u2" if precision else np.uint8)
                if raw.size != 64:
                    break
                natural = np.empty(64, dtype=np.int64)
                natural[_ZIGZAG] = raw
                tables[table_id] = natural
                i += 1 + size
        pos += 2 + length
    return tables


def ijg_table(quality: int, chrominance: bool = False) -> np.ndarray:
    """libjpeg's table for ``quality`` (``jpeg_set_quality`` with baseline clamping), natural order."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = _STD_CHROMINANCE if chrominance else _STD_LUMINANCE
    return np.clip((base * scale + 50) // 100, 1, 255)


def estimate_quality(source: str | Path | bytes | bytearray) -> int | None:
    """The IJG quality factor (1 to 100) of a JPEG file or byte string, from its quantization tables.

    Exact for files written by libjpeg (Pillow, OpenCV, ImageMagick, ...) with the standard
    tables. For other encoders (cameras, some editors) it returns the quality whose
    standard tables are closest (in mean absolute log ratio). Returns None for anything that is
    not a JPEG with quantization tables.
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    tables = quantization_tables(data)
    if not tables:
        return None
    ids = sorted(t for t in tables if t in (0, 1)) or [min(tables)]
    best_q, best_err = 0, float("inf")
    for q in range(1, 101):
        err = 0.0
        for t in ids:
            expected = ijg_table(q, chrominance=(t == 1))
            err += float(np.abs(np.log(tables[t].clip(1)) - np.log(expected)).mean())
        if err < best_err:
            best_q, best_err = q, err
        if err == 0:
            break
    return best_q


def _luma_coefficients(image: np.ndarray, max_blocks: int) -> np.ndarray:
    """The 8x8 DCT coefficients (N, 64) of the luma of ``image`` (JFIF's Y, level-shifted) on the
    grid that starts at the top-left pixel, from at most ``max_blocks`` blocks spread over the
    image. Blocks holding a clipped pixel (0 or 255 in any channel) are left out: clipping after
    decoding moves their coefficients off the quantization grid."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    clipped = (x <= 0) | (x >= 255)
    if x.ndim == 3:
        x, clipped = x[..., :3] @ JFIF_YCBCR[0], clipped[..., :3].any(-1)
    rows, cols = x.shape[0] // BLOCK, x.shape[1] // BLOCK
    blocks = split_blocks(x - 128.0, rows, cols).reshape(-1, BLOCK, BLOCK)
    kept = blocks[~split_blocks(clipped, rows, cols).any(axis=(2, 3)).reshape(-1)]
    if len(kept) > max_blocks:
        kept = kept[np.linspace(0, len(kept) - 1, max_blocks).astype(int)]
    d = dct_matrix()
    return (d @ kept @ d.T).reshape(-1, BLOCK * BLOCK)


def quality_log_likelihoods(coefficients: np.ndarray, noise: float = 0.4) -> np.ndarray:
    """Log-likelihood of luma DCT ``coefficients`` (N, 64) under each IJG luminance table, quality
    1 to 100 (array index quality - 1).

    Model: each coefficient is ``k * Q + n``: its quantized value ``k * Q`` has the mass that a
    Laplacian (of the coefficients' mean absolute value per frequency, the classic model of DCT
    statistics) puts in the bin of width ``Q`` around it, and ``n`` is the rounding noise of
    decoding to 8 bits (Gaussian, std ``noise``), with a small floor for outliers. Coarser tables
    only fit quantized data; finer tables fit it too, but spread the mass over more bins, so the
    table the image was quantized with scores highest.
    """
    scale = np.maximum(np.abs(coefficients).mean(axis=0), 0.5)
    magnitude = np.abs(coefficients)
    scores = np.empty(100)
    for quality in range(1, 101):
        q = ijg_table(quality).astype(np.float64)
        k = np.round(magnitude / q)
        # Laplacian mass of the bin [(k - 1/2) Q, (k + 1/2) Q], both signs for k = 0, one for k > 0.
        upper = np.exp(-(k + 0.5) * q / scale)
        mass = np.where(k == 0, 1.0 - upper, 0.5 * (np.exp(-(k - 0.5) * q / scale) - upper))
        residual = (magnitude - k * q) / noise
        density = mass * np.exp(-0.5 * residual**2) / (noise * math.sqrt(2 * math.pi))
        scores[quality - 1] = np.log(density + 1e-4 / 256).sum()
    return scores


def estimate_quality_from_pixels(
    image: np.ndarray, max_blocks: int = 1024, min_blocks: int = 16, min_gain: float = 10.0
) -> int | None:
    """The IJG quality factor that decoded JPEG pixels were compressed with, or None.

    ``image``: uint8 (H, W) grey or (H, W, 3 or 4) RGB(A), as decoded from a JPEG with libjpeg's
    standard tables and saved losslessly since (a PNG made from a JPEG; what chaiNNer or ComfyUI
    hand to a model). Finds the luminance table whose quantization the luma's 8x8 DCT
    coefficients show (:func:`quality_log_likelihoods`); the 8x8 grid must start at the top-left
    pixel. None when the pixels show no quantization coarser than quality 98: never compressed,
    resized, cropped off the grid, or of a quality too high to matter; also for images with
    fewer than ``min_blocks`` unclipped 8x8 blocks, and when the best table explains the data
    by less than ``min_gain`` nats per block over quality 100 (steps of 1: no quantization).
    Measured on held-out training photos: decoded JPEGs gain 40 to 150 nats per block at the
    right quality (QF 10 to 95), never-compressed photos 0 to 1; smooth synthetic drawings
    gain 15 to 25 at a quality of 93 to 96, which restores them lightly.
    """
    coefficients = _luma_coefficients(image, max_blocks)
    if len(coefficients) < min_blocks:
        return None
    scores = quality_log_likelihoods(coefficients)
    quality = int(np.argmax(scores)) + 1
    gain = (scores[quality - 1] - scores[-1]) / len(coefficients)
    return quality if quality <= 98 and gain >= min_gain else None
