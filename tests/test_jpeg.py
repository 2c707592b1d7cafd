"""JPEG round-trips, quality estimation, and the protocol's JPEG rows of ../shared/DATA.md."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from d2lnet import jpeg
from d2lnet.metrics import psnr, psnrb, rgb_to_y, ssim


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:64, 0:80]
    base = np.stack([128 + 90 * np.sin(x / 7), 128 + 90 * np.cos(y / 5), (x * y) % 256], axis=-1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("gray", [False, True], ids=["colour", "grey"])
def test_estimate_quality_is_exact_for_every_pillow_quality(photo, gray):
    wrong = {}
    for quality in range(1, 101):
        found = jpeg.estimate_quality(jpeg.compress(photo, quality, gray=gray))
        if found != quality:
            wrong[quality] = found
    assert not wrong


def test_estimate_quality_reads_files_written_by_pillow_directly(photo, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(path, quality=37)
    assert jpeg.estimate_quality(path) == 37
    assert jpeg.estimate_quality(str(path)) == 37


def test_estimate_quality_of_non_jpeg_input_is_none(photo, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    assert jpeg.estimate_quality(buffer.getvalue()) is None
    assert jpeg.estimate_quality(b"") is None
    assert jpeg.estimate_quality(b"not an image at all") is None


def test_colour_is_420_and_grey_is_the_y_channel(photo):
    with Image.open(io.BytesIO(jpeg.compress(photo, 50))) as im:
        assert JpegImagePlugin.get_sampling(im) == 2  # 4:2:0
    grey = jpeg.roundtrip(photo, 50, gray=True)
    assert grey.ndim == 2
    np.testing.assert_array_equal(grey, jpeg.decompress(jpeg.compress(rgb_to_y(photo), 50)))


def test_quality_out_of_range_is_rejected(photo):
    with pytest.raises(ValueError):
        jpeg.compress(photo, 0)
    with pytest.raises(ValueError):
        jpeg.compress(photo, 101)


def _jpeg_row(paths, quality: int, gray_from_colour: bool = False) -> tuple[float, float, float]:
    rows = []
    for path in paths:
        image = np.asarray(Image.open(path))
        if gray_from_colour:
            image = rgb_to_y(image)
        degraded = jpeg.roundtrip(image, quality)
        rows.append((psnr(image, degraded), ssim(image, degraded), psnrb(image, degraded)))
    return tuple(np.mean(rows, axis=0))


@pytest.mark.parametrize(
    "folder, expected",
    [
        ("LIVE1_color", (25.69, 0.743, 24.20)),
        ("LIVE1_gray", (27.77, 0.773, 25.33)),
        ("Classic5", (27.82, 0.760, 25.21)),
    ],
)
def test_protocol_reproduces_the_papers_jpeg_rows_at_qf10(shared_data, folder, expected):
    """DATA.md (and the paper's Tables 1 and 2), to the printed decimals."""
    measured = _jpeg_row(sorted((shared_data / "test" / folder).glob("*.png")), 10)
    assert round(measured[0], 2) == expected[0]
    assert round(measured[1], 3) == expected[1]
    assert round(measured[2], 2) == expected[2]


# --------------------------------------------------------------------------- quality from pixels


@pytest.fixture(scope="module")
def textured() -> np.ndarray:
    """A 128x160 colour image with edges, gradients and texture, unclipped."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:128, 0:160]
    base = np.stack([120 + 60 * np.sin(x / 9 + y / 13), 128 + 50 * np.sign(np.sin(y / 11)), 100 + 0.6 * x], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 10, 245).astype(np.uint8)


@pytest.mark.parametrize("gray", [False, True], ids=["colour", "grey"])
def test_quality_from_pixels_is_the_quality_pillow_compressed_with(textured, gray):
    wrong = {}
    for quality in (5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95):
        found = jpeg.estimate_quality_from_pixels(jpeg.roundtrip(textured, quality, gray))
        if found != quality:
            wrong[quality] = found
    assert not wrong


def test_quality_from_pixels_of_a_real_jpeg_agrees_with_its_tables():
    path = Path(__file__).parents[1] / "examples" / "astronaut_q20.jpg"
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert jpeg.estimate_quality(path) == 20
    assert jpeg.estimate_quality_from_pixels(pixels) == 20
    assert jpeg.estimate_quality_from_pixels(np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])) == 20  # RGBA


def test_quality_from_pixels_is_none_without_a_jpeg_grid(textured):
    decoded = jpeg.roundtrip(textured, 30)
    assert jpeg.estimate_quality_from_pixels(textured) is None  # never compressed
    assert jpeg.estimate_quality_from_pixels(decoded[3:, 5:]) is None  # cropped off the 8x8 grid
    half = np.asarray(Image.fromarray(decoded).resize((80, 64), Image.Resampling.BICUBIC))
    assert jpeg.estimate_quality_from_pixels(half) is None  # rescaled
    assert jpeg.estimate_quality_from_pixels(decoded[:16, :16]) is None  # 4 blocks: too few to tell
    assert jpeg.estimate_quality_from_pixels(np.full((64, 64), 255, np.uint8)) is None  # every block clipped


def test_quality_from_pixels_of_a_jpeg_resaved_coarser_is_the_coarser_quality(textured):
    assert jpeg.estimate_quality_from_pixels(jpeg.roundtrip(jpeg.roundtrip(textured, 90), 20)) == 20


def test_compress_takes_other_subsampling_and_tables(photo):
    for subsampling in (0, 1, 2):
        with Image.open(io.BytesIO(jpeg.compress(photo, 50, subsampling=subsampling))) as im:
            assert JpegImagePlugin.get_sampling(im) == subsampling
    luma = np.arange(1, 65)
    chroma = np.full(64, 40)
    tables = jpeg.quantization_tables(jpeg.compress(photo, 50, tables=(luma, chroma)))
    np.testing.assert_array_equal(tables[0], luma)
    np.testing.assert_array_equal(tables[1], chroma)
    grey_tables = jpeg.quantization_tables(jpeg.compress(photo, 50, gray=True, tables=(luma, chroma)))
    assert list(grey_tables) == [0] and (grey_tables[0] == luma).all()
    with pytest.raises(ValueError, match="subsampling"):
        jpeg.compress(photo, 50, subsampling=3)


def test_ycbcr_is_jfifs_and_inverts(photo):
    # Hand-computed: pure red is Y = 0.299 * 255, Cb = 128 - 0.168736 * 255, Cr = 128 + 0.5 * 255.
    np.testing.assert_allclose(jpeg.ycbcr_from_rgb(np.array([255, 0, 0])), [76.245, 84.97232, 255.5], atol=1e-9)
    # Pillow's YCbCr (libjpeg's conversion, in integers) agrees to within its truncation.
    pillow = np.asarray(Image.fromarray(photo).convert("YCbCr")).astype(np.float64)
    assert np.abs(jpeg.ycbcr_from_rgb(photo) - pillow).max() < 1.01  # Pillow truncates in fixed point
    np.testing.assert_allclose(jpeg.rgb_from_ycbcr(jpeg.ycbcr_from_rgb(photo)), photo, atol=1e-9)


def test_chroma_subsampling_is_read_from_the_file(photo, tmp_path):
    for subsampling in (0, 1, 2):
        with Image.open(io.BytesIO(jpeg.compress(photo, 80, subsampling=subsampling))) as im:
            assert jpeg.chroma_subsampling(im) == subsampling
    with Image.open(io.BytesIO(jpeg.compress(photo, 80, gray=True))) as im:
        assert jpeg.chroma_subsampling(im) is None
    Image.fromarray(photo).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert jpeg.chroma_subsampling(im) is None
