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


def test_total_is_eq_22_with_alpha_005():
    """L = L_spa(X_out2) + 0.05 (L_amp(X_out1) + L_pha(X_out2)): each term on the right output."""
    x1, x2, gt = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    terms = D2LLoss()(x1, x2, gt)
    expected = spatial_loss(x2, gt) + 0.05 * (amplitude_loss(x1, gt) + phase_loss(x2, gt))
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms.amplitude.item() == pytest.approx(amplitude_loss(x1, gt).item())
    assert D2LLoss()(gt, gt, gt).total.item() == pytest.approx(0.0, abs=1e-6)
