"""The protocol's metrics against scikit-image and hand-computed values."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from d2lnet import jpeg
from d2lnet.metrics import blocking_effect_factor, psnr, psnrb, rgb_to_y, ssim


def _pairs():
    rng = np.random.default_rng(7)
    for shape in [(40, 53), (37, 64, 3), (11, 11)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        noise = rng.normal(0, 12, shape)
        yield a, np.clip(a + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("pair", list(_pairs()), ids=["gray", "color", "tiny"])
def test_psnr_and_ssim_agree_with_scikit_image(pair):
    a, b = pair
    channel_axis = 2 if a.ndim == 3 else None
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4)
    reference = structural_similarity(
        a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=channel_axis
    )
    assert ssim(a, b) == pytest.approx(reference, abs=1e-4)


def test_ssim_agrees_with_scikit_image_on_a_real_jpeg(shared_data):
    image = np.asarray(Image.open(shared_data / "test" / "LIVE1_color" / "bikes.png"))[:160, :200]
    degraded = jpeg.roundtrip(image, 10)
    reference = structural_similarity(
        image, degraded, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=2
    )
    assert ssim(image, degraded) == pytest.approx(reference, abs=1e-4)


def test_psnr_of_identical_images_is_infinite():
    a = np.zeros((8, 8), np.uint8)
    assert psnr(a, a) == math.inf


def _step_image(edge_column: int, low: int = 100, high: int = 110) -> np.ndarray:
    image = np.full((16, 16), low, np.uint8)
    image[:, edge_column:] = high
    return image


def test_psnrb_hand_computed_grey():
    """A 16x16 image with a step of 10 across the block boundary between columns 7 and 8,
    against a flat reference of 105: MSE = 25; boundary differences 16 rows x 10^2 over
    N_HB + N_VB = 16 (16/8 - 1) + 16 (16/8 - 1) = 32 boundary pairs -> D_B = 50; D_B^c = 0;
    eta = log2(8) / log2(16) = 3/4, so BEF = 37.5 and PSNR-B = 10 log10(255^2 / 62.5)."""
    test, reference = _step_image(8), np.full((16, 16), 105, np.uint8)
    assert blocking_effect_factor(test) == pytest.approx(37.5)
    assert psnrb(reference, test) == pytest.approx(10 * math.log10(255**2 / 62.5), abs=1e-9)
    assert psnrb(reference, test) == pytest.approx(30.1720, abs=1e-4)


def test_psnrb_no_penalty_for_an_edge_inside_a_block():
    """The same step between columns 4 and 5 is inside a block: D_B = 0 < D_B^c, so BEF = 0."""
    test, reference = _step_image(5), np.full((16, 16), 105, np.uint8)
    assert blocking_effect_factor(test) == 0.0
    assert psnrb(reference, test) == pytest.approx(psnr(reference, test))


def test_psnrb_colour_uses_the_y_channel_for_bef_and_rgb_for_mse():
    """Grey RGB 100 | 110 has Y = round(16 + 219/255 v) = 102 | 110: a step of 8, so
    BEF = 3/4 * (16 * 64 / 32) = 24, while the MSE against RGB 105 stays 25."""
    test = np.repeat(_step_image(8)[..., None], 3, axis=2)
    reference = np.full((16, 16, 3), 105, np.uint8)
    assert rgb_to_y(test)[0, :9].tolist() == [102] * 8 + [110]
    assert psnrb(reference, test) == pytest.approx(10 * math.log10(255**2 / 49), abs=1e-9)


def test_bef_counts_boundaries_as_real_numbers():
    """W = 20: N_HB = H (20/8 - 1) = 1.5 H, although columns 7|8 and 15|16 are two boundaries."""
    image = np.zeros((8, 20), np.uint8)
    image[:, 8:16] = 10  # steps of 10 at both boundaries
    n_hb, n_vb = 8 * (20 / 8 - 1), 20 * (8 / 8 - 1)
    n_hbc, n_vbc = 8 * 19 - n_hb, 20 * 7 - n_vb
    d_b, d_bc = (2 * 8 * 100) / (n_hb + n_vb), 0 / (n_hbc + n_vbc)
    eta = math.log2(8) / math.log2(min(8, 20))
    assert blocking_effect_factor(image) == pytest.approx(eta * (d_b - d_bc))


def test_rgb_to_y_is_the_live1_gray_set(shared_data):
    """LIVE1_gray is the rounded BT.601 Y of LIVE1_color, up to exact .5 ties (see rgb_to_y)."""
    mismatched = 0
    for colour_path in sorted((shared_data / "test" / "LIVE1_color").glob("*.png")):
        grey = np.asarray(Image.open(shared_data / "test" / "LIVE1_gray" / colour_path.name))
        ours = rgb_to_y(np.asarray(Image.open(colour_path)))
        difference = np.abs(ours.astype(int) - grey)
        assert difference.max() <= 1
        mismatched += int((difference > 0).sum())
    assert mismatched <= 2
