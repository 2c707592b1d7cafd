"""Fourier-domain operations of D2LNet (paper Sec. 3.1, equations (3) to (5)).

Every transform here is a 2-D real FFT over the last two dimensions, applied to
each channel independently. Transforms always run in float32, also under
bf16/fp16 autocast: half-precision FFTs lose too much in the amplitude of the
low frequencies, and cuFFT only takes power-of-two sizes in half precision.

``norm`` follows :func:`torch.fft.rfft2`: ``"ortho"`` is the paper's equation
(3) (the 1/sqrt(HW) factor), ``"backward"`` is the released code's unnormalised
transform, whose amplitudes grow with the image size.
"""

from __future__ import annotations

from typing import Literal

import torch

FFTNorm = Literal["ortho", "backward", "forward"]

# Keeps the phase's gradient finite where an amplitude is exactly zero
# (d/dz atan2 is 1/|z|); far below any amplitude a real image produces.
_EPS = 1e-8


def amplitude_phase(x: torch.Tensor, norm: FFTNorm = "ortho") -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` (..., H, W) into the amplitude and phase of its real FFT, eqs. (4) and (5).

    Returns two float32 tensors of shape (..., H, W // 2 + 1). The phase is the
    four-quadrant ``atan2(I, R)`` in (-pi, pi], the well-defined form of eq. (5).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        spectrum = torch.fft.rfft2(x.float(), norm=norm)
        re, im = spectrum.real, spectrum.imag
        amplitude = torch.sqrt(re * re + im * im + _EPS * _EPS)
        phase = torch.atan2(im, re + (re == 0) * _EPS)
    return amplitude, phase


def from_amplitude_phase(
    amplitude: torch.Tensor, phase: torch.Tensor, size: tuple[int, int], norm: FFTNorm = "ortho"
) -> torch.Tensor:
    """Inverse of :func:`amplitude_phase`: F^-1(A, P) with output spatial ``size`` (H, W), in float32.

    The half-spectrum is treated as Hermitian (``irfft2``), so any amplitude and
    phase give a real image; this is the F^-1 of equations (8) and (13). Only the
    columns v = 0 and v = W/2, which a real image needs Hermitian on their own, keep
    just the Hermitian part of an arbitrary phase there; every other coefficient is
    reproduced exactly. (The released code's ``ifft2(...).real`` symmetrises them all.)
    """
    with torch.autocast(device_type=amplitude.device.type, enabled=False):
        amplitude, phase = amplitude.float(), phase.float()
        spectrum = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
        return torch.fft.irfft2(spectrum, s=size, norm=norm)


def swap_amplitude(
    amplitude_from: torch.Tensor, phase_from: torch.Tensor, norm: FFTNorm = "ortho"
) -> torch.Tensor:
    """F^-1(A(amplitude_from), P(phase_from)): the image with one's amplitude and the other's phase.

    With ``amplitude_from = X_out1`` and ``phase_from = X_in`` this is X_inv of equation (13).
    """
    amplitude, _ = amplitude_phase(amplitude_from, norm)
    _, phase = amplitude_phase(phase_from, norm)
    return from_amplitude_phase(amplitude, phase, phase_from.shape[-2:], norm)
