"""The loss of eqs. (15) to (22) against hand and NumPy computations."""

import numpy as np
import pytest
import torch

from d2lnet.losses import D2LLoss, amplitude_loss, phase_loss, spatial_loss


def test_spatial_loss_is_mean_absolute_error():
    a = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    b = torch.tensor([[[[0.5, 0.5], [0.0, 0.0]]]])
    assert spatial_loss(a, b).item() == pytest.approx((0.5 + 0 + 1 + 0.25) / 4)


def test_fourier_losses_match_numpy():
    x, gt = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 12, 10)
    fx, fg = np.fft.rfft2(x.double().numpy(), norm="ortho"), np.fft.rfft2(gt.double().numpy(), norm="ortho")
    assert amplitude_loss(x, gt).item() == pytest.approx(np.abs(np.abs(fx) - np.abs(fg)).mean(), rel=1e-4)
    # the angle of fx conj(fg) is the difference of the two phases on the circle
    assert phase_loss(x, gt).item() == pytest.approx(np.abs(np.angle(fx * np.conj(fg))).mean(), rel=1e-4)


def test_phase_loss_wraps_around_the_circle():
    """For a 1x3 image [a, b, c] the second coefficient is a - (b + c)/2 - i sqrt(3)/2 (b - c).
    [0, 1, 1.01] and [0, 1.01, 1] put it at -1.005 -/+ 0.00866i: angles pi - e and -pi + e,
    2e apart on the circle (e = atan(0.00866 / 1.005)) but 2 pi - 2e apart as plain numbers.
    The first coefficients (2.01, phase 0) agree, and the loss is the mean over both."""
    out, gt = torch.tensor([[[[0.0, 1.0, 1.01]]]]), torch.tensor([[[[0.0, 1.01, 1.0]]]])
    e = np.arctan((np.sqrt(3) / 2 * 0.01) / 1.005)
    assert phase_loss(out, gt, norm="backward").item() == pytest.approx(2 * e / 2, rel=1e-3)
    assert phase_loss(out, gt, norm="backward", wrap=False).item() == pytest.approx((2 * np.pi - 2 * e) / 2, rel=1e-3)


def _numpy_terms(x1: torch.Tensor, x2: torch.Tensor, gt: torch.Tensor, norm: str = "ortho") -> tuple[float, float, float]:
    """Eqs. (15), (18) and (21) in NumPy: mean absolute differences of pixels (X_out2), Fourier
    amplitudes (X_out1) and Fourier phases on the circle (X_out2)."""
    a1, a2, g = (t.double().numpy() for t in (x1, x2, gt))
    f1, f2, fg = (np.fft.rfft2(t, norm=norm) for t in (a1, a2, g))
    return np.abs(a2 - g).mean(), np.abs(np.abs(f1) - np.abs(fg)).mean(), np.abs(np.angle(f2 * np.conj(fg))).mean()


@pytest.mark.parametrize("norm", ["ortho", "backward"])
def test_total_is_eq_22_with_alpha_005(norm):
    """L = L_spa(X_out2) + 0.05 (L_amp(X_out1) + L_pha(X_out2)), alpha = 0.05 as Sec. 3.3 sets it:
    each term on the right output, alpha on the two Fourier terms only."""
    x1, x2, gt = torch.rand(2, 3, 16, 12), torch.rand(2, 3, 16, 12), torch.rand(2, 3, 16, 12)
    spa, amp, pha = _numpy_terms(x1, x2, gt, norm)
    terms = D2LLoss(fft_norm=norm)(x1, x2, gt)
    assert terms.spatial.item() == pytest.approx(spa, rel=1e-5)
    assert terms.amplitude.item() == pytest.approx(amp, rel=1e-4)
    assert terms.phase.item() == pytest.approx(pha, rel=1e-4)
    assert terms.total.item() == pytest.approx(spa + 0.05 * (amp + pha), rel=1e-5)


def test_total_sees_x_out1_only_through_its_amplitude():
    """X_out1 enters eq. (22) only by L_amp: shifting its phases leaves the loss unchanged, and its
    gradient is the amplitude term's alone."""
    x2, gt = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    x1 = torch.rand(1, 3, 16, 16)
    mirrored = torch.flip(x1, dims=(-2, -1)).roll(shifts=(1, 1), dims=(-2, -1))  # x(-h, -w): conjugate spectrum
    loss = D2LLoss()
    assert loss(x1, x2, gt).total.item() == pytest.approx(loss(mirrored, x2, gt).total.item(), rel=1e-6)
    assert loss(x1, x2, gt).total.item() != pytest.approx(loss(x2, x1, gt).total.item(), rel=1e-3)


def test_default_loss_uses_the_paper_fft():
    """D2LLoss() uses eq. (3)'s orthonormal transform: its amplitude term scales with the image, not
    with sqrt(HW) of it."""
    x1, x2, gt = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    assert D2LLoss()(x1, x2, gt).amplitude.item() == pytest.approx(_numpy_terms(x1, x2, gt, "ortho")[1], rel=1e-4)


def test_loss_of_the_ground_truth_is_zero():
    gt = torch.rand(1, 3, 16, 16)
    assert D2LLoss()(gt, gt, gt).total.item() == pytest.approx(0.0, abs=1e-6)
