"""Image-quality metrics of the benchmark protocol: PSNR, SSIM and PSNR-B on uint8 images.

These reproduce the JPEG rows of the paper's Tables 1 and 2 to the printed decimals (``tests/test_jpeg.py``):

* colour metrics on RGB uint8; grey images are the rounded BT.601 Y channel (:func:`rgb_to_y`);
* PSNR over all channels with peak 255;
* SSIM with an 11x11 Gaussian window (sigma 1.5) over the valid region, averaged over channels;
* PSNR-B = 10 log10(255^2 / (MSE + BEF)) with the blocking effect factor of Yim and Bovik
  (8x8 blocks) computed on the restored image, on its rounded Y channel for colour images.

All inputs are uint8 arrays of shape (H, W) or (H, W, 3); arithmetic is in float64.
"""

from __future__ import annotations

import math

import numpy as np

_PEAK = 255.0


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma in studio range, ``round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``, as uint8 (H, W).

    This is MATLAB's ``rgb2ycbcr`` Y channel, the grey version of every test set. Some colours
    fall exactly on .5 (e.g. (120, 132, 124) gives 125.5), where the rounding depends on the
    order of the floating-point operations; this order (coefficients divided by 255 first, as
    MATLAB does) matches LIVE1_gray at all but 2 of its 9.2 million pixels, each off by one.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {rgb.shape}")
    x = rgb.astype(np.float64)
    y = 16.0 + x[..., 0] * (65.481 / 255) + x[..., 1] * (128.553 / 255) + x[..., 2] * (24.966 / 255)
    return np.round(y).astype(np.uint8)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)):
        raise ValueError(f"expected (H, W) or (H, W, 3) images, got {a.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error over all pixels and channels."""
    a, b = _check_pair(a, b)
    return float(np.mean((a - b) ** 2))


def _psnr_from_mse(err: float) -> float:
    return math.inf if err == 0 else 10.0 * math.log10(_PEAK**2 / err)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (peak 255), over all channels."""
    return _psnr_from_mse(mse(a, b))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation of (H, W) ``x`` with ``outer(w, w)``, valid region only."""
    n = len(w)
    x = np.lib.stride_tricks.sliding_window_view(x, n, axis=0) @ w
    return np.lib.stride_tricks.sliding_window_view(x, n, axis=1) @ w


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004): Gaussian 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03,
    valid region, mean over channels."""
    a, b = _check_pair(a, b)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[:2]}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    w = _gaussian_window()
    c1, c2 = (0.01 * _PEAK) ** 2, (0.03 * _PEAK) ** 2
    scores = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]
        mx, my = _filter_valid(x, w), _filter_valid(y, w)
        sxx = _filter_valid(x * x, w) - mx * mx
        syy = _filter_valid(y * y, w) - my * my
        sxy = _filter_valid(x * y, w) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        scores.append(s.mean())
    return float(np.mean(scores))


def blocking_effect_factor(image: np.ndarray, block: int = 8) -> float:
    """BEF of a grey (H, W) image (Yim and Bovik 2011): how much larger the squared differences
    across block boundaries are than those inside blocks, scaled by log2(B) / log2(min(H, W)).

    Boundary counts are N_HB = H (W/B - 1) and N_VB = W (H/B - 1), as real numbers.
    """
    im = np.asarray(image, dtype=np.float64)
    if im.ndim != 2:
        raise ValueError(f"BEF takes a grey (H, W) image, got {im.shape}")
    h, w = im.shape
    dh = (im[:, :-1] - im[:, 1:]) ** 2  # differences across each vertical edge between columns j, j+1
    dv = (im[:-1, :] - im[1:, :]) ** 2
    on_h = (np.arange(w - 1) % block) == block - 1  # column j is a block's last column
    on_v = (np.arange(h - 1) % block) == block - 1
    n_hb, n_vb = h * (w / block - 1), w * (h / block - 1)
    n_hbc, n_vbc = h * (w - 1) - n_hb, w * (h - 1) - n_vb
    d_b = (dh[:, on_h].sum() + dv[on_v, :].sum()) / (n_hb + n_vb)
    d_bc = (dh[:, ~on_h].sum() + dv[~on_v, :].sum()) / (n_hbc + n_vbc)
    if d_b <= d_bc:
        return 0.0
    return float(math.log2(block) / math.log2(min(h, w)) * (d_b - d_bc))


def psnrb(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR-B (Yim and Bovik 2011): 10 log10(255^2 / (MSE + BEF)), MSE over all channels and
    BEF of ``test`` (its rounded Y channel when it is colour)."""
    err = mse(reference, test)
    test = np.asarray(test)
    grey = rgb_to_y(test) if test.ndim == 3 and test.shape[2] == 3 else test.reshape(test.shape[:2])
    return _psnr_from_mse(err + blocking_effect_factor(grey))
