"""The quantization-constraint projection against independent references: scipy's DCT, files
written by Pillow (libjpeg), and the theory (the original image is a fixed point; projecting
moves an image towards every image of the set, the original among them)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.fft import dctn

from d2lnet.metrics import psnr, rgb_to_y
from d2lnet.projection import project, read_components

pytest.importorskip("jpeglib")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:61, 0:83]
    base = np.stack([128 + 90 * np.sin(x / 6 + y / 9), 128 + 80 * np.cos(y / 5), 120 + 60 * np.sin((x - y) / 4)], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def _jpeg(tmp_path: Path, image: np.ndarray, quality: int, **options) -> tuple[Path, np.ndarray]:
    path = tmp_path / f"q{quality}.jpg"
    Image.fromarray(image).save(path, quality=quality, **options)
    return path, np.asarray(Image.open(path))


def test_coefficients_are_the_files(tmp_path, photo):
    """Dequantized and inverse-transformed, the luma coefficients give Pillow's decoded grey image."""
    path, decoded = _jpeg(tmp_path, rgb_to_y(photo), 50)
    (luma,) = read_components(path)
    assert luma.coefficients.shape == (8, 11, 8, 8) and luma.subsampling == (1, 1)
    blocks = luma.coefficients * luma.table
    from scipy.fft import idctn

    pixels = idctn(blocks, axes=(2, 3), norm="ortho").transpose(0, 2, 1, 3).reshape(64, 88)[:61, :83] + 128
    assert np.abs(np.clip(np.round(pixels), 0, 255) - decoded).max() <= 1  # libjpeg's integer IDCT


@pytest.mark.parametrize("quality", [10, 50, 90])
def test_the_original_is_a_fixed_point(tmp_path, photo, quality):
    grey = rgb_to_y(photo)
    path, _ = _jpeg(tmp_path, grey, quality)
    np.testing.assert_array_equal(project(grey, read_components(path)), grey)


@pytest.mark.parametrize("quality", [30, 90])
def test_projected_coefficients_lie_in_the_quantization_intervals(tmp_path, photo, quality):
    grey = rgb_to_y(photo)
    path, decoded = _jpeg(tmp_path, grey, quality)
    (luma,) = read_components(path)
    noisy = np.clip(decoded + np.random.default_rng(0).normal(0, 12, decoded.shape), 0, 255).astype(np.uint8)

    def steps_outside(image: np.ndarray) -> np.ndarray:
        """How far each DCT coefficient of the blocks inside the image is outside its interval, in steps."""
        blocks = image[:56, :80].astype(np.float64).reshape(7, 8, 10, 8).transpose(0, 2, 1, 3) - 128
        return np.abs(dctn(blocks, axes=(2, 3), norm="ortho") / luma.table - luma.coefficients[:7, :10]) - 0.5

    assert (steps_outside(noisy) > 0).mean() > 0.01  # the noise pushed some out
    # None is left outside but by rounding to uint8, which moves a coefficient by a fraction of a step.
    assert steps_outside(project(noisy, [luma])).max() < 0.5


@pytest.mark.parametrize("subsampling", [0, 1, 2], ids=["4:4:4", "4:2:2", "4:2:0"])
def test_projecting_a_degraded_image_moves_it_towards_the_original(tmp_path, photo, subsampling):
    """At QF 90 the intervals are narrow: noise leaves them, and the projection takes much of it away."""
    path, decoded = _jpeg(tmp_path, photo, 90, subsampling=subsampling)
    components = read_components(path)
    assert [c.subsampling for c in components] == [(1, 1), *2 * [{0: (1, 1), 1: (1, 2), 2: (2, 2)}[subsampling]]]
    noisy = np.clip(decoded + np.random.default_rng(1).normal(0, 8, decoded.shape), 0, 255).astype(np.uint8)
    assert psnr(photo, project(noisy, components)) > psnr(photo, noisy) + 0.4


def test_other_files_have_no_components(tmp_path, photo):
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray(photo).save(tmp_path / "p.png")
    assert read_components(tmp_path / "c.jpg") is None and read_components(tmp_path / "p.png") is None
