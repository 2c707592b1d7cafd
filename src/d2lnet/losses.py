"""The training objective of D2LNet (paper Sec. 3.3, equations (15) to (22)).

    L = L_spa + alpha * (L_amp + L_pha),  alpha = 0.05              eq. (22)

L_spa (eq. 15) is the L1 distance of X_out2 to the ground truth, L_amp (eq. 18)
the L1 distance of the Fourier amplitudes of X_out1 and the ground truth, and
L_pha (eq. 21) the L1 distance of the Fourier phases of X_out2 and the ground
truth. The norms are means over elements, so the weights do not depend on the
batch or crop size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from d2lnet.fourier import FFTNorm, amplitude_phase


class LossTerms(NamedTuple):
    total: torch.Tensor
    spatial: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor


def spatial_loss(x_out2: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """L_spa = ||X_out2 - GT||_1, eq. (15)."""
    return (x_out2.float() - gt.float()).abs().mean()


def amplitude_loss(x_out1: torch.Tensor, gt: torch.Tensor, norm: FFTNorm = "ortho") -> torch.Tensor:
    """L_amp = ||A(X_out1) - A(GT)||_1, eqs. (16) to (18)."""
    return (amplitude_phase(x_out1, norm)[0] - amplitude_phase(gt, norm)[0]).abs().mean()


def phase_loss(x_out2: torch.Tensor, gt: torch.Tensor, norm: FFTNorm = "ortho", wrap: bool = True) -> torch.Tensor:
    """L_pha = ||P(X_out2) - P(GT)||_1, eqs. (19) to (21).

    With ``wrap`` (the default) the difference of two angles is taken on the circle, in
    [-pi, pi]: it equals eq. (21)'s plain difference wherever that is at most pi, and
    avoids its 2 pi jumps across the branch cut (e.g. real negative coefficients whose
    zero imaginary part carries either sign), where the plain difference's gradient
    points the long way round. ``wrap=False`` is eq. (21) to the letter.
    """
    difference = amplitude_phase(x_out2, norm)[1] - amplitude_phase(gt, norm)[1]
    if wrap:
        difference = torch.remainder(difference + torch.pi, 2 * torch.pi) - torch.pi
    return difference.abs().mean()


class D2LLoss(nn.Module):
    """The total loss of eq. (22). ``fft_norm`` should match the model's (``config.fft_norm``)."""

    def __init__(self, alpha: float = 0.05, fft_norm: FFTNorm = "ortho", wrap_phase: bool = True) -> None:
        super().__init__()
        self.alpha = alpha
        self.fft_norm = fft_norm
        self.wrap_phase = wrap_phase

    def forward(self, x_out1: torch.Tensor, x_out2: torch.Tensor, gt: torch.Tensor) -> LossTerms:
        spa = spatial_loss(x_out2, gt)
        amp = amplitude_loss(x_out1, gt, self.fft_norm)
        pha = phase_loss(x_out2, gt, self.fft_norm, self.wrap_phase)
        return LossTerms(spa + self.alpha * (amp + pha), spa, amp, pha)
