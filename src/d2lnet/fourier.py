"""Fourier-domain operations of D2LNet (paper Sec. 3.1, equations (3) to (5)).

Every transform here is a 2-D real FFT over the last two dimensions, applied to
each channel independently. Transforms run in float32 (float64 for float64
inputs), also under bf16/fp16 autocast: half-precision FFTs lose too much in the amplitude of the
low frequencies, and cuFFT only takes power-of-two sizes in half precision.

Two forms of the same functions live here. :func:`amplitude_phase` and
:func:`from_amplitude_phase` are equations (4), (5) and the F^-1 of (8) to the letter,
the reference. The correction blocks and eq. (13) use the fast forms below them,
which give the same values without the angle where it is not needed: keeping the
phase of a spectrum S while replacing its amplitude |S| by A' is S * A' / |S|, so an
amplitude correction or an amplitude swap needs no atan2, cos or sin.

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


def _real(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32, or float64 if it is: never in half precision; and with each channel's
    plane contiguous, as the FFTs want (rfft2 of a channels-last batch of four 64x64 or 256x256
    images took 1.1-1.5x as long as this copy and rfft2 of the planes, on an AMD EPYC)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    if is_channels_last(x) and not _traced():
        return _Relayout.apply(x, dtype, False)
    return x.to(dtype=dtype, memory_format=torch.contiguous_format)


def relaid(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """``x`` (B, C, H, W) in ``dtype``, laid out channels-last or as planes: ``x.to(dtype,
    memory_format=...)``, faster on the CPU.

    Between the two layouts each image is a matrix transpose, (C, HW) <-> (HW, C). PyTorch copies
    a 2-D transpose in cache-sized blocks, but a 4-D layout change element by element, reading or
    writing planes a power of two apart (2 ns per element at 4x32x256x256 where the 2-D copies take
    0.8), so each image is copied as one matrix, in the narrower of the two dtypes. Those copies run
    on one thread, PyTorch's own on all of them: with several threads only the copy that also
    narrows (float32 to bf16, where the element-wise one is slowest) goes image by image.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # PyTorch's own copy: where no CPU batch of images changes layout, under tracing, and on several
    # threads unless the copy also narrows the dtype.
    no_cpu_relayout = x.dim() != 4 or x.device.type != "cpu" or is_channels_last(x) == channels_last or x.shape[1] == 1
    if no_cpu_relayout or _traced() or torch.get_num_threads() > 1 and dtype.itemsize >= x.dtype.itemsize:
        return x.to(dtype=dtype, memory_format=layout)
    if dtype.itemsize < x.dtype.itemsize:
        x = x.to(dtype)
    b, c, h, w = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, memory_format=layout)
    for i in range(b):
        if channels_last:  # (C, HW) planes -> (HW, C) pixels
            out[i].permute(1, 2, 0).view(h * w, c).copy_(x[i].reshape(c, h * w).t())
        else:
            out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out.to(dtype)


class _Relayout(torch.autograd.Function):
    """:func:`relaid`, with the gradient laid out and typed as the input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:  # noqa: ANN001
        ctx.dtype, ctx.channels_last = x.dtype, is_channels_last(x)
        return relaid(x, dtype, channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        return relaid(grad, ctx.dtype, ctx.channels_last), None, None


def amplitude_phase(x: torch.Tensor, norm: FFTNorm = "ortho") -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` (..., H, W) into the amplitude and phase of its real FFT, eqs. (4) and (5).

    Returns two float32 tensors of shape (..., H, W // 2 + 1). The phase is the
    four-quadrant ``atan2(I, R)`` in (-pi, pi], the well-defined form of eq. (5).
    """
    s, amplitude = spectrum(x, norm)
    return amplitude, phase_of(s)


def phase_of(s: torch.Tensor) -> torch.Tensor:
    """P(s) of eq. (5) for a complex spectrum ``s``, as ``atan2(I, R)`` in (-pi, pi]; a zero
    coefficient has phase 0."""
    return _Phase.apply(s)


class _Phase(torch.autograd.Function):
    """``atan2(I, R')`` with ``R' = R + eps`` where ``R == 0``, and its gradient by hand:
    ``dP/dS = g (-I + j R') / (R'^2 + I^2)`` as one complex tensor (autograd would take S.real and
    S.imag apart into a zero-filled tensor each and add them up)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        # On contiguous copies: atan2 of the strided views s.real, s.imag runs 10x slower.
        real, imag = s.real.contiguous(), s.imag.contiguous()
        # One pass fewer than real + (real == 0) * eps, whose bool * float product rounded eps to float32.
        real = torch.where(real == 0, _EPS, real)
        ctx.save_for_backward(real, imag)
        return torch.atan2(imag, real)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        real, imag = ctx.saved_tensors
        grad = grad / torch.addcmul(real.square(), imag, imag)
        return torch.complex(-imag * grad, real * grad)


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
        return _irfft2(polar(amplitude, phase), size, norm)


def polar(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """The complex spectrum ``A cos P + j A sin P`` of an amplitude and a phase, in float32 (or float64)."""
    with torch.autocast(device_type=amplitude.device.type, enabled=False):
        amplitude, phase = _real(amplitude), _real(phase)
        return torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))


# --------------------------------------------------------------------------- fast forms


def spectrum(x: torch.Tensor, norm: FFTNorm = "ortho") -> tuple[torch.Tensor, torch.Tensor]:
    """The real FFT of ``x`` in float32 and its amplitude (eq. 4, with the same guard as
    :func:`amplitude_phase`): ``(S, |S|)``."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _Spectrum.apply(_real(x), norm)


# The transform whose adjoint is a normalisation's inverse transform (eq. 3's ortho is its own).
_ADJOINT_NORM: dict[str, FFTNorm] = {"ortho": "ortho", "backward": "forward", "forward": "backward"}


def _inner_columns(width: int) -> slice:
    """The columns of a half spectrum of a real signal of ``width`` that stand for two coefficients,
    themselves and their Hermitian mirrors: all but v = 0 and, for an even width, v = W/2."""
    return slice(1, (width + 1) // 2)


def real_coefficient_mask(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Where the half spectrum (H, W // 2 + 1) of a real (H, W) signal is real: rows 0 and H/2 of
    columns 0 and W/2 (the halves only for even sides), as a boolean mask that traces with
    symbolic sizes (no branch on their parity)."""
    u = torch.arange(height, device=device)[:, None]
    v = torch.arange(width // 2 + 1, device=device)[None, :]
    return ((u == 0) | (2 * u == height)) & ((v == 0) | (2 * v == width))


def _real_coefficients_made_real(s: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """``s``, the half spectrum of a real signal of ``size``, with the imaginary parts of its real
    coefficients (:func:`real_coefficient_mask`) exactly +0.

    The FFT leaves rounding noise of either sign there (3.8e-9 at row 12 of a 24-row spectrum).
    Zeroed, their phase (eq. 5) is exactly 0 or pi; left, it is pi or -pi by chance, and the phase
    correction's 1x1 convolutions, which mix phases across channels as numbers, turn a flip into
    a change of the output (1e-3 in a test model, from a convolution upstream that rounded
    differently). In place, on a strided view of the four coefficients, where shapes are concrete.
    """
    height, width = size
    if _traced():
        return torch.complex(s.real, torch.where(real_coefficient_mask(height, width, s.device), 0.0, s.imag))
    rows = slice(0, None, height // 2) if height % 2 == 0 else slice(0, 1)
    columns = slice(0, None, width // 2) if width % 2 == 0 else slice(0, 1)
    s[..., rows, columns].imag.zero_()
    return s


class _Spectrum(torch.autograd.Function):
    """``(rfft2(x), |rfft2(x)|)`` with the backward written out.

    Autograd would take the real and imaginary parts of S apart (a zero-filled tensor of S's size
    for each), then pad S's gradient to the full spectrum and transform it. Here the gradient on S,
    ``dS + dA S / |S|``, goes straight through the adjoint of rfft2: the inverse transform (with the
    adjoint normalisation) of that half spectrum with its inner columns halved, since each of them
    stands for itself and its Hermitian mirror.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, norm: FFTNorm) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
        s = _real_coefficients_made_real(torch.fft.rfft2(x, norm=norm), x.shape[-2:])
        # One pass per term over the strided views s.real, s.imag (2.5x faster than square, add, add, sqrt).
        amplitude = torch.addcmul(s.real.square().add_(_EPS * _EPS), s.imag, s.imag).sqrt_()
        ctx.save_for_backward(s, amplitude)
        ctx.norm, ctx.size = norm, x.shape[-2:]
        ctx.set_materialize_grads(False)
        return s, amplitude

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor | None, grad_amplitude: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:  # noqa: ANN001
        s, amplitude = ctx.saved_tensors
        if grad_s is None and grad_amplitude is None:
            return None, None
        if grad_amplitude is None:
            grad = grad_s.clone()
        else:  # d|S|/dS = S / |S|
            grad = s * (grad_amplitude / amplitude)
            if grad_s is not None:
                grad += grad_s
        grad[..., _inner_columns(ctx.size[-1])] *= 0.5
        return _irfft2(grad, ctx.size, _ADJOINT_NORM[ctx.norm]), None


def with_amplitude(s: torch.Tensor, amplitude: torch.Tensor, new_amplitude: torch.Tensor) -> torch.Tensor:
    """The spectrum with the phase of ``s`` (whose amplitude is ``amplitude``) and the amplitude
    ``new_amplitude``: ``s * new_amplitude / amplitude``, i.e. A' exp(j P(s)) without the angle.

    Where ``s`` is exactly zero its phase is 0 (as :func:`amplitude_phase` gives it), so the
    result is the real ``new_amplitude`` there, not 0. ``amplitude`` is s's, as :func:`spectrum`
    gives it: at an exact zero it is the guard's 1e-8, or 0.
    """
    with torch.autocast(device_type=s.device.type, enabled=False):
        return _WithAmplitude.apply(s, amplitude, new_amplitude.to(amplitude.dtype))


def _traced() -> bool:
    """Whether this runs in a graph that torch.compile or torch.export traces (PyTorch 2.3+ says so;
    before, it reads False, and torch.compile breaks the graph at the data-dependent check)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


class _WithAmplitude(torch.autograd.Function):
    """``S * A' / A`` (the real ``A'`` where S is 0), with its gradient by hand: with G the output's,
    ``dS = G A'/A`` and, through ``g = Re(G conj(S)) / A``, ``dA' = g`` and ``dA = -g A'/A``
    (autograd would promote A'/A to complex and back, and take S apart into zero-filled parts)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, amplitude: torch.Tensor, new_amplitude: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        # A complex times a real tensor is one pass: twice as fast as scaling s.real and s.imag and joining them.
        scale = new_amplitude / amplitude
        spectrum = s * scale
        # Exact zeros are rare: on the CPU, look for them only where the amplitude is as small as the
        # guard's (one pass over A, where comparing s's parts takes four). Elsewhere asking would
        # wait for the device, and a traced graph (compile, export) cannot branch on data.
        if _traced() or s.device.type != "cpu" or amplitude.amin() <= 2 * _EPS:
            zero = (s.real == 0) & (s.imag == 0)  # (not s == 0: ONNX has no complex comparison)
            spectrum = spectrum + zero * new_amplitude  # s * scale is 0 there: add the real amplitude
            ctx.zero = zero
        else:
            ctx.zero = None
        ctx.save_for_backward(s, amplitude, scale)
        return spectrum

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
        s, amplitude, scale = ctx.saved_tensors
        grad_new = torch.addcmul(grad.real * s.real, grad.imag, s.imag).div_(amplitude)
        grad_amplitude, grad_s = -grad_new * scale, grad * scale
        if ctx.zero is not None:  # there the output is the real A' itself, and P(S) moves with I only
            grad_new = torch.where(ctx.zero, grad.real, grad_new)
            grad_s = grad_s - ctx.zero * grad_s.real
        return grad_s, grad_amplitude, grad_new


def inverse(s: torch.Tensor, size: tuple[int, int], norm: FFTNorm = "ortho", like: torch.Tensor | None = None) -> torch.Tensor:
    """F^-1 of a half spectrum to a real image of spatial ``size`` (see :func:`from_amplitude_phase`):
    float32, or in the dtype and memory format of ``like`` (its gradient comes back as float32 planes
    in one copy)."""
    dtype = s.real.dtype if like is None else like.dtype
    channels_last = like is not None and is_channels_last(like)
    with torch.autocast(device_type=s.device.type, enabled=False):
        return _Inverse.apply(s, size, norm, dtype, channels_last)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor laid out channels-last (and not also contiguous, as when C = 1)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class _Inverse(torch.autograd.Function):
    """``irfft2(s)`` (as :func:`_irfft2`) cast and laid out as asked, with the backward written out.

    The gradient on s is the adjoint of irfft2: rfft2 of the output's gradient (with the adjoint
    normalisation), its inner columns doubled, since each of them stands for itself and its
    Hermitian mirror. One 2-D transform of float32 planes: autograd would convert the gradient to
    float32 in the output's layout, then run two 1-D transforms, each after a transposing copy.
    """

    @staticmethod
    def forward(
        ctx,  # noqa: ANN001
        s: torch.Tensor,
        size: tuple[int, int],
        norm: FFTNorm,
        dtype: torch.dtype,
        channels_last: bool,
    ) -> torch.Tensor:
        x = _irfft2(s, size, norm)
        ctx.norm, ctx.width = norm, size[-1]
        if x.dtype == dtype and not channels_last:
            return x
        return relaid(x, dtype, channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:  # noqa: ANN001
        grad_s = torch.fft.rfft2(_real(grad), norm=_ADJOINT_NORM[ctx.norm])
        grad_s[..., _inner_columns(ctx.width)] *= 2
        return grad_s, None, None, None, None


# Complex coefficients per inverse transform on the CPU: 1 MiB, a core's L2 cache (see _irfft2).
_INVERSE_CHUNK = 1 << 17


def _irfft2(s: torch.Tensor, size: tuple[int, int], norm: FFTNorm) -> torch.Tensor:
    """``torch.fft.irfft2(s, size)`` as its two 1-D steps (``ifft`` along H, ``irfft`` along W),
    on the CPU a few planes at a time.

    Between the two steps PyTorch copies the spectrum from H-innermost back to W-innermost, a
    transposing copy that thrashes the cache once a batch outgrows it: one call on a batch of
    four 256x256 spectra of 32 channels took 96 ms, in chunks of :data:`_INVERSE_CHUNK`
    coefficients 40 ms; one 512x768 image 147 ms, plane by plane 67 ms (AMD EPYC, one thread).
    Under autograd (the literal reference path), off the CPU, or traced, it is one call.
    """
    height, half = s.shape[-2:]
    step = max(1, _INVERSE_CHUNK // (height * half))
    if s.numel() <= step * height * half or s.device.type != "cpu" or (s.requires_grad and torch.is_grad_enabled()) or _traced():
        return torch.fft.irfft(torch.fft.ifft(s, dim=-2, norm=norm), n=size[-1], dim=-1, norm=norm)
    planes = s.reshape(-1, height, half)
    out = planes.real.new_empty(planes.shape[0], height, size[-1])
    for start in range(0, planes.shape[0], step):
        chunk = planes[start : start + step]
        torch.fft.irfft(torch.fft.ifft(chunk, dim=-2, norm=norm), n=size[-1], dim=-1, norm=norm, out=out[start : start + step])
    return out.view(*s.shape[:-2], height, size[-1])


def swap_amplitude(amplitude_from: torch.Tensor, phase_from: torch.Tensor, norm: FFTNorm = "ortho") -> torch.Tensor:
    """F^-1(A(amplitude_from), P(phase_from)): the image with one's amplitude and the other's phase.

    With ``amplitude_from = X_out1`` and ``phase_from = X_in`` this is X_inv of equation (13).
    """
    _, new_amplitude = spectrum(amplitude_from, norm)
    s, amplitude = spectrum(phase_from, norm)
    return inverse(with_amplitude(s, amplitude, new_amplitude), phase_from.shape[-2:], norm)


def swap_amplitude_literal(amplitude_from: torch.Tensor, phase_from: torch.Tensor, norm: FFTNorm = "ortho") -> torch.Tensor:
    """:func:`swap_amplitude` as eq. (13) reads, through the angle: the reference it is tested against."""
    amplitude, _ = amplitude_phase(amplitude_from, norm)
    _, phase = amplitude_phase(phase_from, norm)
    return from_amplitude_phase(amplitude, phase, phase_from.shape[-2:], norm)
