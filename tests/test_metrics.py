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
    """An 8x20 image with steps of 10 at the boundaries 7|8 and 15|16: 2 x 8 boundary pairs of
    squared difference 100. N_HB = H (W/B - 1) = 8 x 1.5 = 12 (a real number, not 8 x 1),
    N_VB = 20 (8/8 - 1) = 0, so D_B = 1600 / 12; nothing differs inside blocks, D_B^c = 0;
    eta = log2(8) / log2(min(8, 20)) = 1: BEF = 400 / 3."""
    image = np.zeros((8, 20), np.uint8)
    image[:, 8:16] = 10
    assert blocking_effect_factor(image) == pytest.approx(400 / 3)


def test_bef_counts_rows_and_columns_and_scales_by_the_shorter_side():
    """A 16x64 image with one step of 10 across 7|8: 16 boundary pairs of 100 over
    N_HB + N_VB = 16 (64/8 - 1) + 64 (16/8 - 1) = 176; eta = log2(8) / log2(16) = 3/4, so
    BEF = 0.75 x 1600 / 176 = 75 / 11. The transposed image (a step across rows 7|8) scores the same."""
    image = np.full((16, 64), 50, np.uint8)
    image[:, 8:] = 60
    assert blocking_effect_factor(image) == pytest.approx(75 / 11)
    assert blocking_effect_factor(image.T) == pytest.approx(75 / 11)


def test_bef_subtracts_the_differences_inside_blocks():
    """A 16x16 ramp rising 1 per column, plus a step of 10 across 7|8: the boundary pairs differ by
    11 (121 each, 16 of them) and the other 16 x 14 horizontal pairs by 1; no vertical differences.
    D_B = 16 x 121 / 32, D_B^c = 16 x 14 / (16 x 15 + 16 x 15 - 32) = 224 / 448 = 1/2;
    BEF = 3/4 (60.5 - 0.5) = 45."""
    image = np.tile(np.arange(16, dtype=np.uint8) + 100, (16, 1))
    image[:, 8:] += 10
    assert blocking_effect_factor(image) == pytest.approx(45.0)


def test_rgb_to_y_is_bt601_studio_range():
    """Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded (ITU-R BT.601, MATLAB's rgb2ycbcr):
    red 81.481, green 144.553, blue 40.966, white 235, black 16; and scikit-image's rgb2ycbcr
    agrees on random colours."""
    from skimage.color import rgb2ycbcr

    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    assert rgb_to_y(primaries).tolist() == [[81, 145, 41, 235, 16]]
    colours = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    reference = rgb2ycbcr(colours)[..., 0]
    away_from_ties = np.abs(reference % 1 - 0.5) > 1e-6
    assert away_from_ties.mean() > 0.99
    np.testing.assert_array_equal(rgb_to_y(colours)[away_from_ties], np.round(reference[away_from_ties]))


def test_ssim_of_two_flat_images_is_the_luminance_term():
    """Flat images have no variance: SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) with C1 = (0.01 x 255)^2."""
    a, b = np.full((16, 16), 100, np.uint8), np.full((16, 16), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), rel=1e-12)


def test_ssim_of_an_11x11_image_is_one_gaussian_window():
    """The valid region of an 11x11 image holds one window: SSIM is Wang et al.'s formula with the
    window's Gaussian weights (sigma 1.5, summing to 1) for the means, variances and covariance."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (11, 11)).astype(np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    r = np.arange(11) - 5
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    g /= g.sum()
    x, y = a.astype(float), b.astype(float)
    mx, my = (g * x).sum(), (g * y).sum()
    vx, vy, cxy = (g * (x - mx) ** 2).sum(), (g * (y - my) ** 2).sum(), (g * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)


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
