"""The Python API: restore_image and restore_pil, modes, alpha, models and the quality factor.

The identity models (a D2LNet whose output convolutions are zeroed) make expected pixels
exact and independent of the code under test: the input's, or Pillow's conversions of it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import tiny_model
from PIL import Image

import d2lnet
import d2lnet.restore as restore_module
from d2lnet.engine import Restorer
from d2lnet.metrics import psnr
from d2lnet.model import D2LNet
from d2lnet.restore import restore_image

# --------------------------------------------------------------------------- restore_image


def test_restore_image_pil_and_numpy_identity(rgb_image: np.ndarray) -> None:
    model = tiny_model("identity")
    out = restore_image(Image.fromarray(rgb_image), model)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), rgb_image)
    out = d2lnet.restore_image(rgb_image, model)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb_image)


def test_restore_image_keeps_shape_mode_and_alpha(rgb_image: np.ndarray) -> None:
    model = tiny_model("identity")  # colour: grey inputs take the replicate-and-back path, exactly
    grey = rgb_image[..., 1]
    alpha = np.tile(np.arange(61, dtype=np.uint8)[None] * 4, (45, 1))
    cases = [grey, grey[..., None], np.dstack([grey, alpha]), np.dstack([rgb_image, alpha])]
    for array in cases:
        out = restore_image(array, model)
        assert out.shape == array.shape
        np.testing.assert_array_equal(out, array)
    for mode, array in (("L", cases[0]), ("LA", cases[2]), ("RGBA", cases[3])):
        image = Image.fromarray(array)
        out = restore_image(image, model)
        assert image.mode == out.mode == mode
        np.testing.assert_array_equal(np.asarray(out), array)


def test_grey_model_restores_luma_of_colour_images(rgb_image: np.ndarray) -> None:
    out = restore_image(Image.fromarray(rgb_image), tiny_model("identity", channels=1))
    # An identity on Y leaves what a YCbCr round trip leaves.
    expected = Image.fromarray(rgb_image).convert("YCbCr").convert("RGB")
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_colour_model_restores_grey_images_through_rgb(rgb_image: np.ndarray) -> None:
    restorer = Restorer(tiny_model("busy"), "cpu")
    grey = rgb_image[..., 1]
    rgb = restorer.restore(np.repeat(grey[..., None], 3, axis=2), 50).astype(np.int64)
    assert (rgb[..., 0] != rgb[..., 2]).any()  # the channels come out different: the way back matters
    # ITU-R 601-2 luma in Pillow's fixed point: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16.
    expected = (rgb @ np.array([19595, 38470, 7471]) + 32768) >> 16
    np.testing.assert_array_equal(restore_image(grey, restorer, quality=50), expected)


def test_restore_image_model_kinds(tiny_weights, rgb_image: np.ndarray) -> None:
    from d2lnet.pretrained import load_model

    by_path = restore_image(rgb_image, str(tiny_weights["color"]), quality=40, device="cpu")
    by_model = restore_image(rgb_image, load_model(tiny_weights["color"]), quality=40)
    by_restorer = restore_image(rgb_image, Restorer(load_model(tiny_weights["color"]), "cpu"), quality=40)
    np.testing.assert_array_equal(by_path, by_model)
    np.testing.assert_array_equal(by_path, by_restorer)


def test_restore_image_default_model_by_channels(monkeypatch: pytest.MonkeyPatch, rgb_image: np.ndarray) -> None:
    asked: list[str] = []

    def fake_load(name, device="cpu"):
        asked.append(name)
        return tiny_model("identity", channels=1 if "gray" in name else 3)

    monkeypatch.setattr(restore_module, "load_model", fake_load)
    restore_image(rgb_image[..., 0])
    restore_image(Image.fromarray(rgb_image).convert("RGBA"))
    assert asked == ["d2lnet-s-gray", "d2lnet-s-color"]


def test_restore_image_passes_quality(monkeypatch: pytest.MonkeyPatch, rgb_image: np.ndarray, tmp_path) -> None:
    seen = []
    forward = D2LNet.forward
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: seen.append(qf) or forward(self, x, qf))
    model = tiny_model("identity")
    restore_image(rgb_image, model, quality=37)
    tiled = np.tile(rgb_image, (2, 2, 1))  # 90x122: enough 8x8 blocks to show a JPEG's quantization
    noisy = np.clip(tiled + np.random.default_rng(0).normal(0, 12, tiled.shape), 8, 247).astype(np.uint8)
    restore_image(noisy, model)  # never a JPEG: unknown
    Image.fromarray(noisy).save(tmp_path / "q33.jpg", quality=33)
    with Image.open(tmp_path / "q33.jpg") as opened:
        restore_image(opened, model)  # read from the file it was opened from
        decoded = np.asarray(opened.convert("RGB"))
    restore_image(decoded, model)  # an array of JPEG pixels: the quality they show
    restore_image(Image.fromarray(decoded), model)
    assert seen[:3] == [37, None, 33] and [float(q) for q in seen[3:]] == [33.0, 33.0]


def test_restore_image_rejects_bad_input(rgb_image: np.ndarray) -> None:
    model = tiny_model("identity")
    with pytest.raises(TypeError, match="uint8"):
        restore_image(rgb_image.astype(np.float32), model)
    with pytest.raises(ValueError, match="floating-point"):
        restore_image(Image.fromarray(rgb_image[..., 0].astype(np.float32)), model)
    with pytest.raises(ValueError, match="1 to 100"):
        restore_image(rgb_image, model, quality=0)
    with pytest.raises(TypeError):
        restore_image(io.BytesIO(), model)


def test_other_kinds_are_converted_first(rgb_image: np.ndarray) -> None:
    model = tiny_model("identity")
    for mode in ("CMYK", "P", "1"):
        image = Image.fromarray(rgb_image).convert(mode)
        expected = image.convert("L" if mode == "1" else "RGB")  # Pillow's own conversion
        out = restore_image(image, model)
        assert out.mode == expected.mode
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_a_jpeg_opened_from_its_file_is_projected_onto_it(tmp_path, rgb_image: np.ndarray) -> None:
    """The identity "restores" a JPEG to its decoded pixels; projecting them onto the file's
    quantization intervals (on by default) brings them nearer the original here, whose colours
    the decoder's chroma upsampling blurs."""
    pytest.importorskip("jpeglib")
    Image.fromarray(rgb_image).save(tmp_path / "a.jpg", quality=90)
    with Image.open(tmp_path / "a.jpg") as opened:
        decoded = np.asarray(opened.convert("RGB"))
        plain = np.asarray(restore_image(opened, tiny_model("identity"), project_jpeg=False))
        projected = np.asarray(restore_image(opened, tiny_model("identity")))
    np.testing.assert_array_equal(plain, decoded)
    assert psnr(rgb_image, projected) > psnr(rgb_image, decoded)


def test_a_444_jpeg_keeps_its_chroma_from_the_quality_the_card_names(tmp_path, rgb_image: np.ndarray) -> None:
    """From the card's ``keep_444_chroma_from`` up, a 4:4:4 file keeps its decoded chroma and only the
    luma is restored; below it, and for 4:2:0 files, the model's output is left as it is. Chroma and
    luma are compared in Pillow's YCbCr (libjpeg's conversion, to its rounding)."""
    from d2lnet.cards import ModelCard
    from d2lnet.images import read_image
    from d2lnet.restore import restore_loaded

    model = tiny_model("busy")
    plain, keeping = Restorer(model, "cpu", "fp32"), Restorer(model, "cpu", "fp32")

    def restored(path, restorer):
        loaded = read_image(path)
        return loaded, *restore_loaded(loaded, restorer, project_jpeg=False)

    def ycbcr(image) -> np.ndarray:
        return np.asarray(image.convert("RGB").convert("YCbCr")).astype(int)

    Image.fromarray(rgb_image).save(tmp_path / "444_q90.jpg", quality=90, subsampling=0)
    Image.fromarray(rgb_image).save(tmp_path / "444_q50.jpg", quality=50, subsampling=0)
    Image.fromarray(rgb_image).save(tmp_path / "420_q90.jpg", quality=90, subsampling=2)
    model.card = ModelCard("busy")  # no keep_444_chroma_from: never
    baseline = {name: restored(tmp_path / name, plain)[1] for name in ("444_q90.jpg", "444_q50.jpg", "420_q90.jpg")}
    model.card = ModelCard("busy", inference={"keep_444_chroma_from": 70})

    loaded, out, notes = restored(tmp_path / "444_q90.jpg", keeping)
    assert loaded.subsampling == 0 and any("4:4:4 JPEG at quality 90" in note for note in notes)
    inside = ((np.asarray(out) > 0) & (np.asarray(out) < 255)).all(-1)  # where the colour was not clipped to RGB
    assert inside.mean() > 0.5 and np.abs(ycbcr(out)[inside, 1:] - ycbcr(loaded.image)[inside, 1:]).max() <= 1
    assert np.abs(ycbcr(out)[inside, 0] - ycbcr(baseline["444_q90.jpg"])[inside, 0]).max() <= 1
    assert np.abs(ycbcr(baseline["444_q90.jpg"])[..., 1:] - ycbcr(loaded.image)[..., 1:]).max() > 1  # the model did move chroma
    for name in ("444_q50.jpg", "420_q90.jpg"):
        _, out, notes = restored(tmp_path / name, keeping)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(baseline[name]))
        assert not any("chroma" in note for note in notes)
    with Image.open(tmp_path / "444_q90.jpg") as opened:  # the Python API on a PIL image opened from the file
        api = restore_image(opened, keeping, project_jpeg=False)
    np.testing.assert_array_equal(np.asarray(api), np.asarray(restored(tmp_path / "444_q90.jpg", keeping)[1]))
