"""Independent NumPy references for the model tests, and hand-setting of convolution weights.

The references restate the paper's equations with NumPy's FFT in float64; none of them
calls d2lnet. Hand-set convolutions use only the centre tap of their kernel, so that a
k x k convolution computes a known per-pixel channel mix ``W @ x + b``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def set_pointwise(conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    """Make ``conv`` compute ``weight @ x + bias`` at every pixel: centre tap ``weight``, others zero."""
    out_channels, in_channels, kh, kw = conv.weight.shape
    assert weight.shape == (out_channels, in_channels), (weight.shape, conv.weight.shape)
    kernel = np.zeros((out_channels, in_channels, kh, kw))
    kernel[:, :, kh // 2, kw // 2] = weight
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel))
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(np.zeros(out_channels) if bias is None else bias))


def pointwise(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``weight @ x + bias`` over the channel axis of (B, C, H, W) ``x``: a 1x1 convolution."""
    y = np.einsum("oc,bchw->bohw", weight, x)
    return y if bias is None else y + bias[None, :, None, None]


def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, slope * x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def fft(x: np.ndarray, norm: str = "ortho") -> np.ndarray:
    """F(X) of eq. (3) over the last two axes: the half spectrum of a real image (norm="ortho" is
    the paper's 1/sqrt(HW))."""
    return np.fft.rfft2(x, norm=norm)


def ifft(amplitude: np.ndarray, phase: np.ndarray, size: tuple[int, int], norm: str = "ortho") -> np.ndarray:
    """F^-1(A, P): the real image whose half spectrum is A exp(iP). Where that spectrum is not
    Hermitian (the self-conjugate columns v = 0 and v = W/2 under an arbitrary phase), NumPy keeps
    its Hermitian part."""
    return np.fft.irfft2(amplitude * np.exp(1j * phase), s=size, norm=norm)


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()
