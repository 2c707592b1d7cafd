"""Amplitude/phase split and recombination (eqs. 3 to 5, 8, 13) against NumPy's FFT."""

import numpy as np
import pytest
import torch
from helpers import torch_threads

from d2lnet import fourier
from d2lnet.fourier import amplitude_phase, from_amplitude_phase, swap_amplitude


@pytest.mark.parametrize("shape", [(2, 3, 17, 30), (1, 1, 8, 8), (1, 2, 31, 9)])
@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_split_matches_numpy_and_round_trips(shape, norm):
    x = torch.rand(shape, dtype=torch.float32)
    amplitude, phase = amplitude_phase(x, norm)
    reference = np.fft.rfft2(x.numpy().astype(np.float64), norm=norm)
    np.testing.assert_allclose(amplitude.numpy(), np.abs(reference), rtol=1e-4, atol=1e-5)
    significant = np.abs(reference) > 1e-3  # the angle of a near-zero coefficient is noise
    wrapped = np.angle(np.exp(1j * (phase.numpy() - np.angle(reference))))
    assert np.abs(wrapped[significant]).max() < 1e-4
    back = from_amplitude_phase(amplitude, phase, shape[-2:], norm)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-5)


@pytest.mark.parametrize("norm, scale", [("ortho", 1 / 2), ("backward", 1.0)])
def test_hand_computed_2x2(norm, scale):
    """Eq. (3) on [[1, 2], [3, 4]]: sums +-1 +-2 +-3 +-4 over sqrt(HW) = 2 (ortho) or 1 (backward):
    F = [[10, -2], [-4, 0]] * scale. Eq. (4) takes magnitudes; eq. (5), the four-quadrant angle,
    puts the negative real coefficients at pi and the zero coefficient at 0."""
    amplitude, phase = amplitude_phase(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), norm)
    np.testing.assert_allclose(amplitude[0, 0].numpy(), np.array([[10, 2], [4, 0]]) * scale, atol=1e-6)
    wrapped = np.angle(np.exp(1j * (phase[0, 0].numpy() - [[0, np.pi], [np.pi, 0]])))  # pi and -pi are one angle
    np.testing.assert_allclose(wrapped, 0, atol=1e-6)


def test_hand_computed_phases_in_every_quadrant():
    """For x = [0, 1, 1, 0] (H = 1, W = 4) eq. (3) gives F(v) = (e^{-i pi v/2} + e^{-i pi v}) / 2:
    F(0) = 1, F(1) = (-1 - i) / 2 (third quadrant, a plain arctan(I/R) would put it in the first),
    F(2) = 0; and for [1, 1, 0, 0], F(1) = (1 - i) / 2 (fourth quadrant)."""
    amplitude, phase = amplitude_phase(torch.tensor([[[[0.0, 1.0, 1.0, 0.0]], [[1.0, 1.0, 0.0, 0.0]]]]))
    np.testing.assert_allclose(amplitude[0, :, 0].numpy(), [[1, np.sqrt(0.5), 0], [1, np.sqrt(0.5), 0]], atol=1e-6)
    np.testing.assert_allclose(phase[0, :, 0, :2].numpy(), [[0, -3 * np.pi / 4], [0, -np.pi / 4]], atol=1e-6)


@pytest.mark.parametrize("height, width", [(24, 40), (24, 41), (25, 40), (12, 10)])
def test_real_coefficients_have_phase_0_or_exactly_pi(height, width):
    """The DFT of a real signal is real at rows 0 and H/2 of columns 0 and W/2 (for even sides):
    eq. (5) puts a negative one at pi, never at -pi, whatever the FFT's rounding. x = -(-1)^(u+v)
    (checkerboard) and -(-1)^u (alternating rows) have all their energy in one such coefficient,
    negative; x + 2 moves only the DC term, to positive (phase 0)."""
    u, v = torch.arange(height)[:, None].double(), torch.arange(width)[None, :].double()
    images = [-torch.cos(np.pi * u) * torch.ones_like(v), -torch.cos(np.pi * (u + v)), torch.rand(height, width)]
    x = torch.stack(images)[None].float()
    _, phase = amplitude_phase(x)
    rows = [0, height // 2] if height % 2 == 0 else [0]
    columns = [0, width // 2] if width % 2 == 0 else [0]
    for r in rows:
        for c in columns:
            assert set(phase[0, :, r, c].tolist()) <= {0.0, float(np.float32(np.pi))}, (r, c, phase[0, :, r, c])
    if height % 2 == 0:
        assert phase[0, 0, height // 2, 0] == np.float32(np.pi)  # the rows' alternation, negative
    if height % 2 == 0 and width % 2 == 0:
        assert phase[0, 1, height // 2, width // 2] == np.float32(np.pi)  # the checkerboard, negative
    _, phase = amplitude_phase(x + 2)
    assert (phase[0, :, 0, 0] == 0).all()


@pytest.mark.parametrize("height, width", [(24, 40), (24, 41), (25, 40), (25, 41), (2, 2)])
def test_real_coefficients_made_real_alike_when_traced(monkeypatch, height, width):
    """Under torch.compile/export the coefficients are zeroed through a mask (no branch on the
    sides' parity): the same coefficients as the in-place path, every other one untouched."""
    s = torch.complex(torch.randn(2, 3, height, width // 2 + 1), torch.randn(2, 3, height, width // 2 + 1))
    eager = fourier._real_coefficients_made_real(s.clone(), (height, width))
    monkeypatch.setattr(fourier, "_traced", lambda: True)
    traced = fourier._real_coefficients_made_real(s.clone(), (height, width))
    assert torch.equal(torch.view_as_real(eager), torch.view_as_real(traced))
    rows = {0, height // 2} if height % 2 == 0 else {0}
    columns = {0, width // 2} if width % 2 == 0 else {0}
    changed = (eager != s).nonzero()[:, 2:].tolist()
    assert {tuple(rc) for rc in changed} == {(r, c) for r in rows for c in columns}
    assert torch.equal(eager.real, s.real)


def test_ortho_is_the_paper_normalisation():
    """Eq. (3) divides by sqrt(HW): the DC coefficient of an all-ones H x W image is sqrt(HW)."""
    amplitude, _ = amplitude_phase(torch.ones(1, 1, 12, 27), "ortho")
    assert amplitude[0, 0, 0, 0].item() == pytest.approx(np.sqrt(12 * 27), rel=1e-6)
    amplitude, _ = amplitude_phase(torch.ones(1, 1, 12, 27), "backward")
    assert amplitude[0, 0, 0, 0].item() == pytest.approx(12 * 27, rel=1e-6)


def test_swap_takes_one_amplitude_and_the_other_phase():
    a, b = torch.rand(1, 3, 16, 21), torch.rand(1, 3, 16, 21)
    mixed = swap_amplitude(amplitude_from=a, phase_from=b).numpy().astype(np.float64)
    fa, fb, fm = (np.fft.rfft2(t, norm="ortho") for t in (a.numpy().astype(np.float64), b.numpy().astype(np.float64), mixed))
    np.testing.assert_allclose(np.abs(fm), np.abs(fa), atol=1e-4)
    significant = (np.abs(fa) > 1e-2) & (np.abs(fb) > 1e-2)
    wrapped = np.angle(fm / fb)
    assert np.abs(wrapped[significant]).max() < 1e-3
    torch.testing.assert_close(swap_amplitude(a, a), a, atol=1e-5, rtol=0)


def test_transforms_stay_fp32_under_autocast():
    x = torch.rand(1, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amplitude, phase = amplitude_phase(x.bfloat16())
        back = from_amplitude_phase(amplitude, phase, (16, 16))
    assert amplitude.dtype == phase.dtype == back.dtype == torch.float32


def test_gradients_finite_on_flat_images():
    """A constant image has exactly zero coefficients, where atan2 and |z| have no derivative."""
    x = torch.full((1, 1, 8, 8), 0.5, requires_grad=True)
    amplitude, phase = amplitude_phase(x)
    (amplitude.sum() + phase.sum()).backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
@pytest.mark.parametrize("width", [6, 7])
@pytest.mark.parametrize("uses", ["both", "spectrum", "amplitude"])
def test_spectrum_gradient_against_finite_differences_and_autograd(norm, width, uses):
    """spectrum()'s hand-written backward: gradcheck (finite differences, float64), and the gradient
    of PyTorch's own rfft2 and sqrt(re^2 + im^2 + eps^2), for even and odd widths (the Nyquist
    column) and with either output unused."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, width, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 5, width // 2 + 1, 3, dtype=torch.float64)

    def loss(s: torch.Tensor, amplitude: torch.Tensor) -> torch.Tensor:
        terms = [(torch.view_as_real(s) * weights[..., :2]).sum(), (amplitude * weights[..., 2]).sum()]
        return {"both": terms[0] + terms[1], "spectrum": terms[0], "amplitude": terms[1]}[uses]

    assert torch.autograd.gradcheck(lambda x: loss(*fourier.spectrum(x, norm)), (x,))
    (got,) = torch.autograd.grad(loss(*fourier.spectrum(x, norm)), x)
    s = torch.fft.rfft2(x, norm=norm)
    (expected,) = torch.autograd.grad(loss(s, (s.real**2 + s.imag**2 + 1e-16).sqrt()), x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_phase_and_amplitude_swap_gradients_against_finite_differences_and_autograd():
    """phase_of() and with_amplitude()'s hand-written backwards: gradcheck (finite differences,
    float64, complex input), and the gradients of the plain formulas through autograd, including
    a zero real part (phase_of's guard) and an exactly zero coefficient (with_amplitude's A')."""
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 5, dtype=torch.complex128)
    s[0, 0, 0, 1] = 0.7j  # real part 0: atan2's guard
    s.requires_grad_()
    amplitude = (s.detach().abs() + 0.1).requires_grad_()
    new = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fourier.phase_of, (s,))
    assert torch.autograd.gradcheck(fourier.with_amplitude, (s, amplitude, new))

    weights = torch.randn(2, 3, 4, 5, 3, dtype=torch.float64)

    def plain_phase(s):
        return torch.atan2(s.imag, s.real + (s.real == 0).to(s.real.dtype) * 1e-8)  # the indicator in s's precision

    def plain_swap(s, amplitude, new):
        scale = new / amplitude
        zero = (s.real == 0) & (s.imag == 0)
        return torch.complex(torch.where(zero, new, s.real * scale), s.imag * scale)

    with torch.no_grad():
        s_zero = s.detach().clone()
        s_zero[1, 2, 3, 4] = 0  # an exact zero: the output there is the real A'
        amplitude_zero = amplitude.detach().clone()
        amplitude_zero[1, 2, 3, 4] = 1e-8  # its amplitude, as spectrum() guards it
    for values, values_amplitude in ((s, amplitude), (s_zero.requires_grad_(), amplitude_zero.requires_grad_())):
        for fast, plain, inputs in (
            (fourier.phase_of, plain_phase, (values,)),
            (fourier.with_amplitude, plain_swap, (values, values_amplitude, new)),
        ):

            def loss(out):
                parts = torch.view_as_real(out) if out.is_complex() else out[..., None]
                return (parts * weights[..., : parts.shape[-1]]).sum()

            torch.testing.assert_close(fast(*inputs), plain(*inputs), rtol=1e-12, atol=1e-12)
            got = torch.autograd.grad(loss(fast(*inputs)), inputs)
            expected = torch.autograd.grad(loss(plain(*inputs)), inputs)
            for g, e in zip(got, expected):
                torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
@pytest.mark.parametrize("size", [(5, 6), (4, 7)])
def test_inverse_gradient_against_finite_differences_and_autograd(norm, size):
    """inverse()'s hand-written backward (rfft2 of the gradient, inner columns doubled): gradcheck
    (finite differences, float64, a half spectrum that need not be Hermitian in its edge columns),
    and the gradient of PyTorch's own irfft2, for even and odd widths and either output layout."""
    torch.manual_seed(0)
    s = torch.randn(2, 3, size[0], size[1] // 2 + 1, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: fourier.inverse(s, size, norm), (s,))
    weights = torch.randn(2, 3, *size, dtype=torch.float64)
    (expected,) = torch.autograd.grad((torch.fft.irfft2(s, s=size, norm=norm) * weights).sum(), s)
    like = torch.empty(2, 3, *size, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for target in (None, like):
        out = fourier.inverse(s, size, norm, like=target)
        assert out.dtype == torch.float64 and out.is_contiguous(memory_format=torch.channels_last) == (target is like)
        (got,) = torch.autograd.grad((out * weights).sum(), s)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_inverse_casts_to_the_dtype_and_layout_asked():
    """F^-1 into bf16 channels-last (the network's F_fre): irfft2's values rounded once, and a
    float32 gradient on the spectrum."""
    torch.manual_seed(0)
    s = torch.randn(1, 4, 8, 5, dtype=torch.complex64, requires_grad=True)
    like = torch.empty(1, 4, 8, 8, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    out = fourier.inverse(s, (8, 8), like=like)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.fft.irfft2(s.detach(), s=(8, 8), norm="ortho").bfloat16(), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.float().sum(), s)
    assert grad.dtype == torch.complex64


@pytest.mark.parametrize("chunk", [1, 40, 60])  # a plane per call; two; three, the last call short
@pytest.mark.parametrize("norm", ["ortho", "backward"])
@pytest.mark.parametrize("size", [(5, 6), (4, 7)])
def test_inverse_in_chunks_of_planes_matches_numpy(monkeypatch, chunk, norm, size):
    """On the CPU the inverse transform runs a few planes per call (``_INVERSE_CHUNK`` coefficients):
    every plane must come back in its place, for even and odd widths, in the forward pass and in
    the spectrum's backward (the adjoint of rfft2 is this inverse)."""
    monkeypatch.setattr(fourier, "_INVERSE_CHUNK", chunk)
    torch.manual_seed(0)
    s = torch.randn(2, 5, size[0], size[1] // 2 + 1, dtype=torch.complex128)
    expected = np.fft.irfft2(s.numpy(), s=size, norm=norm)
    np.testing.assert_allclose(fourier.inverse(s, size, norm).numpy(), expected, rtol=1e-12, atol=1e-12)

    x = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, size[0], size[1] // 2 + 1, dtype=torch.float64)
    spectrum, amplitude = fourier.spectrum(x, norm)
    (got,) = torch.autograd.grad((spectrum.imag * weights + amplitude * weights.flip(0)).sum(), x)
    plain = torch.fft.rfft2(x, norm=norm)
    (want,) = torch.autograd.grad((plain.imag * weights + plain.abs() * weights.flip(0)).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 32, 24, 160), (1, 5, 3, 4), (2, 1, 8, 8)])  # 2-D copies of >= 3600 and fewer
@pytest.mark.parametrize(
    "source, target", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16), (torch.float64,) * 2]
)
@pytest.mark.parametrize("threads", [1, 2])  # one thread: every copy image by image; two: the narrowing one
def test_relaid_is_the_plain_conversion_either_way(shape, source, target, threads):
    """relaid() copies each image as one matrix; the numbers, dtype and layout are those of
    PyTorch's own ``x.to(dtype, memory_format=...)``, bit for bit, from and to either layout."""
    torch.manual_seed(0)
    planes = torch.randn(shape).to(source)
    pixels = planes.contiguous(memory_format=torch.channels_last)
    with torch_threads(threads):
        for x, channels_last in ((planes, True), (pixels, False), (pixels, True), (planes, False)):
            layout = torch.channels_last if channels_last else torch.contiguous_format
            got = fourier.relaid(x, target, channels_last)
            assert got.dtype == target and got.is_contiguous(memory_format=layout)
            assert torch.equal(got, x.to(dtype=target, memory_format=layout))


def test_spectrum_of_a_channels_last_input_has_its_gradient_laid_out_alike():
    """spectrum() of a channels-last image: rfft2's values, and autograd's gradient through
    PyTorch's own transforms of the plain layout, returned channels-last like the input."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 64, 72, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    weights = torch.randn(2, 6, 64, 37, 3, dtype=torch.float64)
    s, amplitude = fourier.spectrum(x)
    loss = (torch.view_as_real(s) * weights[..., :2]).sum() + (amplitude * weights[..., 2]).sum()
    (got,) = torch.autograd.grad(loss, x)
    plain = x.detach().contiguous().requires_grad_()
    expected_s = torch.fft.rfft2(plain, norm="ortho")
    expected_loss = (torch.view_as_real(expected_s) * weights[..., :2]).sum()
    expected_loss = expected_loss + ((expected_s.real**2 + expected_s.imag**2 + 1e-16).sqrt() * weights[..., 2]).sum()
    (expected,) = torch.autograd.grad(expected_loss, plain)
    torch.testing.assert_close(s, expected_s.detach(), rtol=1e-12, atol=1e-12)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
