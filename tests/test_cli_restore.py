"""``d2lnet restore`` end to end, in-process on small images with tiny models.

Most tests use a D2LNet whose output convolutions are zeroed, which makes it the exact
identity map: the expected output pixels are then the input's, computed independently
of the code under test (with Pillow and numpy).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image, ImageCms

import d2lnet.pretrained
import d2lnet.restore as restore_module
import d2lnet.restore_cli as restore_cli_module
from d2lnet import jpeg
from d2lnet.cli import main
from d2lnet.device import Launch, launch
from d2lnet.engine import parse_tile
from d2lnet.images import ImageError, read_image
from d2lnet.metrics import psnr
from d2lnet.model import D2LNet
from d2lnet.pretrained import ModelCard, save_release
from d2lnet.restore_cli import parse_quality, plan_jobs, shard


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release files: "identity" (colour), "identity-gray", and "busy" (colour, a non-trivial map)."""
    folder = tmp_path_factory.mktemp("cli-weights")
    paths = {}
    for name, kind, channels in (("identity", "identity", 3), ("identity-gray", "identity", 1), ("busy", "busy", 3)):
        paths[name] = save_release(tiny_model(kind, channels), folder / f"{name}.safetensors", ModelCard(name))
    return paths


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo what a run changes in the process, and run outside torchrun."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


UNKNOWN_QUALITY = "quality factor is unknown"


def run(capsys: pytest.CaptureFixture, *argv: object, all_lines: bool = False) -> tuple[int, str, list[str]]:
    """Run ``d2lnet restore ARGV``; returns the exit status, stdout, and the lines of stderr
    (without the once-per-run warning that a non-JPEG input's quality is unknown, unless ``all_lines``)."""
    rc = main(["restore", *map(str, argv)])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    return rc, captured.out, lines if all_lines else [line for line in lines if UNKNOWN_QUALITY not in line]


def image(h: int = 24, w: int = 40, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth uint8 test image (so that JPEG keeps it recognisable)."""
    y, x = np.mgrid[0:h, 0:w]
    planes = [128 + 100 * np.sin(x / (3.0 + c) + y / (5.0 + seed)) for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8).squeeze()


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (and holds no pixels): a decompression bomb's front."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_one_line_each_and_the_rest_go_on(tmp_path: Path, capsys, weights) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(image()).save(src / "good.png")
    (src / "empty.jpg").write_bytes(b"")
    jpeg = io.BytesIO()
    Image.fromarray(image(64, 64)).save(jpeg, "JPEG", quality=90)
    (src / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (src / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(image().astype(np.float32)[..., 0]).save(src / "float.tif")
    (src / "huge.png").write_bytes(png_header_only(20000, 20000))
    reasons = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "float.tif": "floating-point images are not supported",
        "huge.png": "too large: 400 megapixels is over the limit of 200 megapixels",
    }

    rc, stdout, err = run(capsys, src, "-o", out, "--model", weights["identity"])

    assert rc == 1
    assert len(err) == len(reasons), err
    for name, reason in reasons.items():
        (line,) = [line for line in err if name in line]
        assert reason in line, line
    assert "Traceback" not in "\n".join(err)
    assert files_under(out) == {"good.png"}  # nothing partial, no temporary files
    np.testing.assert_array_equal(np.asarray(Image.open(out / "good.png")), image())
    assert "restored 1 image" in stdout and "5 failed" in stdout


def test_truncated_file_fails_at_read_time(tmp_path: Path) -> None:
    jpeg = io.BytesIO()
    Image.fromarray(image(64, 64)).save(jpeg, "JPEG", quality=90)
    (tmp_path / "t.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(tmp_path / "t.jpg")


def test_max_megapixels(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image(64, 64)).save(tmp_path / "a.png")  # 0.004 megapixels
    Image.fromarray(image(8, 8)).save(tmp_path / "b.png")  # 0.000064 megapixels
    rc, _, err = run(capsys, tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out",
                     "--model", weights["identity"], "--max-megapixels", 0.001)  # fmt: skip
    assert rc == 1 and len(err) == 1 and "a.png" in err[0] and "too large" in err[0]
    assert "over the limit of 0.001 megapixels" in err[0]  # the limit asked for (Pillow's message names twice it)
    assert files_under(tmp_path / "out") == {"b.png"}


def test_unwritable_output_folder(tmp_path: Path, capsys, weights) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    Image.fromarray(image()).save(src / "a" / "x.png")
    Image.fromarray(image()).save(src / "b" / "y.png")
    out.mkdir()
    (out / "b").write_text("a file where the output folder b should be")  # root can write anywhere; not here
    rc, _, err = run(capsys, src, "-o", out, "--model", weights["identity"])
    assert rc == 1
    assert len(err) == 1 and "y.png" in err[0] and "cannot write" in err[0]
    assert files_under(out) == {"a/x.png", "b"}


def test_failed_write_leaves_nothing(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    Image.fromarray(image()).save(tmp_path / "a.png")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out", "--model", weights["identity"])
    assert rc == 1 and len(err) == 1 and "No space left on device" in err[0]
    assert files_under(tmp_path / "out") == set()


def test_missing_inputs_and_models(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    Image.fromarray(image()).save(tmp_path / "a.png")
    rc, _, err = run(capsys, tmp_path / "nope.png", tmp_path / "*.webp", tmp_path / "a.png", "-o", tmp_path / "out",
                     "--model", weights["identity"])  # fmt: skip
    assert rc == 1 and len(err) == 2 and "no such file" in err[0] and "no image files match" in err[1]
    assert files_under(tmp_path / "out") == {"a.png"}

    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out2", "--model", tmp_path / "missing.safetensors")
    assert rc == 1 and len(err) == 1 and "cannot load model" in err[0]
    (tmp_path / "notes.txt").write_text("not a model")
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out2", "--model", tmp_path / "notes.txt")
    assert rc == 1 and len(err) == 1 and "neither a release file (.safetensors) nor a training checkpoint" in err[0]

    # The bundled default is not installed: one line that says to pass --model.
    monkeypatch.setattr(d2lnet.pretrained, "WEIGHTS_DIR", tmp_path / "no-weights")
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out3")
    assert rc == 1 and len(err) == 1 and "--model" in err[0]
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


@pytest.mark.parametrize("argv", [["--quality", "0"], ["--quality", "101"], ["--quality", "high"], ["--tile", "100"],
                                  ["--tile", "-8"], ["--threads", "0"], ["--precision", "fp16", "--device", "cpu"],
                                  ["--device", "bogus"], ["--device", "cuda:7"]])  # fmt: skip
def test_bad_arguments(tmp_path: Path, capsys, weights, argv: list[str]) -> None:
    Image.fromarray(image()).save(tmp_path / "a.png")
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out", "--model", weights["identity"], *argv)
    assert rc == 2 and len(err) == 1 and err[0].startswith("d2lnet restore: error:")
    assert len(err[0]) < 200  # one readable line, not PyTorch's list of device types
    assert not (tmp_path / "out").exists()


def test_parse_quality_and_tile() -> None:
    assert parse_quality("auto") is None and parse_quality("1") == 1 and parse_quality("100") == 100
    assert parse_tile("auto") == "auto" and parse_tile("0") is None and parse_tile("256") == 256


# --------------------------------------------------------------------------- what is kept


def test_modes_are_kept_and_alpha_carried(tmp_path: Path, capsys, weights) -> None:
    rgb, grey = image(), image(channels=1)
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (24, 1))
    inputs = {"l.png": grey, "la.png": np.dstack([grey, alpha]), "rgb.png": rgb, "rgba.png": np.dstack([rgb, alpha])}
    for name, array in inputs.items():
        Image.fromarray(array).save(tmp_path / name)
    for model in ("identity", "identity-gray"):  # each restores the other kind through the conversions
        out = tmp_path / f"out-{model}"
        rc, _, err = run(capsys, *(tmp_path / name for name in inputs), "-o", out, "--model", weights[model])
        assert rc == 0, err
        for name, array in inputs.items():
            restored = Image.open(out / name)
            assert restored.mode == Image.fromarray(array).mode
            expected = array
            if model == "identity-gray" and array.ndim == 3 and array.shape[2] >= 3:
                # A grey model restores the luma of colour images: identity on Y is a YCbCr round trip.
                expected = np.asarray(Image.fromarray(array[..., :3]).convert("YCbCr").convert("RGB"))
                restored_alpha = np.asarray(restored)[..., 3:]
                np.testing.assert_array_equal(restored_alpha, array[..., 3:])
                restored = np.asarray(restored)[..., :3]
            np.testing.assert_array_equal(np.asarray(restored), expected)


def test_default_models_by_mode_loaded_once(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    monkeypatch.setattr(restore_module, "DEFAULT_COLOR", str(weights["identity"]))
    monkeypatch.setattr(restore_module, "DEFAULT_GRAY", str(weights["identity-gray"]))
    loaded, channels_seen = [], []
    load, forward = restore_cli_module.load_model, D2LNet.forward
    monkeypatch.setattr(restore_cli_module, "load_model", lambda name: loaded.append(Path(name).stem) or load(name))
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: channels_seen.append(x.shape[1]) or forward(self, x, qf))
    for i in range(2):
        Image.fromarray(image(seed=i)).save(tmp_path / f"c{i}.png")
        Image.fromarray(image(channels=1, seed=i)).save(tmp_path / f"g{i}.png")
    rc, _, err = run(capsys, *sorted(tmp_path.glob("*.png")), "-o", tmp_path / "out")
    assert rc == 0, err
    assert loaded == ["identity", "identity-gray"]
    assert channels_seen == [3, 3, 1, 1]  # c0, c1, g0, g1: grey images to the grey model


def test_exif_orientation_applied_icc_and_exif_kept(tmp_path: Path, capsys, weights) -> None:
    array = image(24, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    exif[0x010F] = "TestCam"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(array).save(tmp_path / "photo.png", exif=exif.tobytes(), icc_profile=icc)
    Image.fromarray(array).save(tmp_path / "photo.jpg", exif=exif.tobytes(), icc_profile=icc, quality=95)
    original = np.rot90(array, k=-1)  # clockwise; Image.open does not rotate
    for source in ("photo.png", "photo.jpg"):
        upright = np.rot90(np.asarray(Image.open(tmp_path / source)), k=-1)
        for ext in ("png", "webp", "jpg"):
            out = tmp_path / f"out-{Path(source).suffix[1:]}-{ext}"
            rc, _, err = run(capsys, tmp_path / source, "-o", out, "--model", weights["identity"], "--ext", ext)
            assert rc == 0, err
            with Image.open(out / f"photo.{ext}") as restored:
                assert restored.size == (24, 40)
                assert restored.info.get("icc_profile") == icc
                tags = restored.getexif()
                assert tags.get(0x010F) == "TestCam" and tags.get(0x0112) == 1
                if source.endswith(".png") and ext != "jpg":  # lossless output: exact pixels
                    np.testing.assert_array_equal(np.asarray(restored), upright)
                elif source.endswith(".png"):
                    assert np.abs(np.asarray(restored).astype(int) - upright).mean() < 2
                else:  # projected onto the file's coefficients, in the file's orientation: nearer the original
                    assert psnr(original, np.asarray(restored)) > psnr(original, upright) + 1


def test_jpg_output_drops_alpha_with_a_warning(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(np.dstack([image(), np.full((24, 40), 128, np.uint8)])).save(tmp_path / "a.png")
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out", "--model", weights["identity"], "--ext", "jpg")
    assert rc == 0 and len(err) == 1 and "a.png" in err[0] and "alpha" in err[0]
    with Image.open(tmp_path / "out" / "a.jpg") as restored:
        assert restored.mode == "RGB" and restored.size == (40, 24)
        assert [(h, v) for _, h, v, _ in restored.layer] == [(1, 1)] * 3  # 4:4:4: no chroma subsampling


# --------------------------------------------------------------------------- quality factor


def test_quality_is_read_from_jpeg_files_and_overridden(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    seen = []
    forward = D2LNet.forward
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: seen.append(qf) or forward(self, x, qf))
    Image.fromarray(image()).save(tmp_path / "a.jpg", quality=23)
    Image.fromarray(image(channels=1)).save(tmp_path / "b.jpg", quality=77)
    Image.fromarray(image()).save(tmp_path / "c.png")
    inputs = [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.png"]
    rc, _, err = run(capsys, *inputs, "-o", tmp_path / "out", "--model", weights["busy"])
    assert rc == 0, err
    assert seen == [23, 77, None]  # the QFs the files were saved with; PNG: unknown
    seen.clear()
    rc, _, err = run(capsys, *inputs, "-o", tmp_path / "out", "--model", weights["busy"], "--quality", "50", "--overwrite")
    assert rc == 0, err
    assert seen == [50, 50, 50]


# --------------------------------------------------------------------------- outputs


def test_never_overwrites_without_overwrite(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"precious")
    rc, stdout, err = run(capsys, tmp_path / "a.png", "-o", out, "--model", weights["identity"])
    assert rc == 0 and len(err) == 1 and "skipped" in err[0] and "--overwrite" in err[0]
    assert (out / "a.png").read_bytes() == b"precious" and "1 skipped" in stdout
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", out, "--model", weights["identity"], "--overwrite")
    assert rc == 0, err
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), image())


def test_inputs_are_never_overwritten(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image()).save(tmp_path / "a.png")
    Image.fromarray(image(seed=1)).save(tmp_path / "b.jpg")
    before = {name: (tmp_path / name).read_bytes() for name in ("a.png", "b.jpg")}
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "a.png", "--model", weights["identity"], "--overwrite")
    assert rc == 1 and len(err) == 1 and "input file" in err[0]
    rc, _, err = run(capsys, tmp_path, "-o", tmp_path, "--model", weights["identity"], "--overwrite")
    assert rc == 1 and len(err) == 1 and "a.png" in err[0] and "input file" in err[0]
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert (tmp_path / "b.png").is_file()  # b.jpg's output, beside it


def test_two_inputs_with_one_output_name(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image(seed=1)).save(tmp_path / "x.jpg", quality=30)
    Image.fromarray(image(seed=2)).save(tmp_path / "x.png")
    rc, _, err = run(
        capsys, tmp_path / "x.jpg", tmp_path / "x.png", "-o", tmp_path / "out", "--model", weights["identity"], "--no-project"
    )
    assert rc == 1 and len(err) == 1 and "x.png" in err[0] and "also the output of" in err[0]
    decoded_jpeg = np.asarray(Image.open(tmp_path / "x.jpg"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "x.png")), decoded_jpeg)


def test_folder_structure_single_file_suffix_and_ext(tmp_path: Path, capsys, weights) -> None:
    src = tmp_path / "in"
    for folder in ("sub/deeper", ".hidden"):
        (src / folder).mkdir(parents=True)
    Image.fromarray(image()).save(src / "a.png")
    Image.fromarray(image()).save(src / "sub" / "b.JPG", format="JPEG")
    Image.fromarray(image()).save(src / "sub" / "deeper" / "c.webp", lossless=True)
    Image.fromarray(image()).save(src / ".hidden" / "d.png")  # hidden folders are left alone
    (src / "sub" / "notes.txt").write_text("not an image, and not looked at")
    rc, _, err = run(capsys, src, "-o", tmp_path / "out", "--model", weights["identity"], "--suffix", "_r", "--ext", "webp")
    assert rc == 0, err
    assert files_under(tmp_path / "out") == {"a_r.webp", "sub/b_r.webp", "sub/deeper/c_r.webp"}

    rc, _, err = run(capsys, src / "a.png", "-o", tmp_path / "single.jpg", "--model", weights["identity"])
    assert rc == 0 and (tmp_path / "single.jpg").is_file()
    with Image.open(tmp_path / "single.jpg") as written:
        assert written.format == "JPEG"

    rc, _, err = run(capsys, src / "a.png", src / "sub", "-o", tmp_path / "two.png", "--model", weights["identity"])
    assert rc == 2 and len(err) == 1 and "exactly one input file" in err[0]


def test_deterministic_across_runs(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image(48, 72)).save(tmp_path / "a.jpg", quality=20)
    for run_name in ("one", "two"):
        rc, _, err = run(capsys, tmp_path / "a.jpg", "-o", tmp_path / run_name, "--model", weights["busy"],
                           "--tile", "32", "--overlap", "8")  # fmt: skip
        assert rc == 0, err
    assert (tmp_path / "one" / "a.png").read_bytes() == (tmp_path / "two" / "a.png").read_bytes()


# --------------------------------------------------------------------------- several processes


def test_shard_and_launch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert shard(list(range(10)), 1, 3) == [1, 4, 7]
    assert sorted(sum((shard(list(range(10)), r, 3) for r in range(3)), [])) == list(range(10))
    assert launch() == Launch(0, 1, None)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch() == Launch(3, 4, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Launch(3, 4, 1).device("auto") == Launch(3, 4, 1).device("cuda") == "cuda:1"
    assert Launch(3, 4, 1).device("cuda:0") == "cuda:0" and Launch(3, 4, 1).device("cpu") == "cpu"
    assert Launch().device("auto") == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Launch(3, 4, 1).device("auto") == "auto"


def test_ranks_split_the_files(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(image(seed=i)).save(src / f"{i}.png")
    monkeypatch.setenv("WORLD_SIZE", "2")
    written = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        out = tmp_path / f"out{rank}"
        rc, stdout, err = run(capsys, src, "-o", out, "--model", weights["identity"])
        assert rc == 0, err
        assert stdout.startswith(f"[rank {rank}/2] restored {3 - rank} images")
        written.append(files_under(out))
    assert written == [{"0.png", "2.png", "4.png"}, {"1.png", "3.png"}]
    assert plan_jobs([str(src)], str(tmp_path / "o"))[1].source.name == "1.png"  # sorted order


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed")
def test_torchrun_two_processes(tmp_path: Path, weights) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(image(seed=i)).save(src / f"{i}.png")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "d2lnet", "restore", str(src), "-o", str(tmp_path / "out"),
               "--model", str(weights["identity"]), "--device", "cpu", "--threads", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("torchrun took over 120 s on this (busy) machine")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[rank 0/2] restored 2 images" in result.stdout and "[rank 1/2] restored 2 images" in result.stdout
    assert files_under(tmp_path / "out") == {f"{i}.png" for i in range(4)}


# --------------------------------------------------------------------------- image kinds


def png_16bit(array: np.ndarray) -> bytes:
    """A PNG with 16 bits per sample (grey, grey + alpha, RGB or RGBA by the last axis), written by
    hand: Pillow cannot write 48/64-bit PNGs."""
    kinds = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type
    array = array if array.ndim == 3 else array[..., None]
    h, w, c = array.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, kinds[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_image_kinds_are_converted_with_a_note(tmp_path: Path, capsys, weights) -> None:
    """CMYK (Adobe's inverted CMYK, as Pillow writes it), palette with and without transparency,
    1-bit, and 16 bits per sample (grey, grey + alpha, RGB, RGBA; PNG and TIFF) are restored; the
    identity model shows what they were converted to, computed here with Pillow and numpy."""
    rgb = image()
    deep = (image(channels=4).astype(np.uint16) * 257 + np.arange(40, dtype=np.uint16)[None, :, None]).astype(np.uint16)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb).convert("CMYK").save(src / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).convert("P").save(src / "palette.png")
    Image.fromarray(rgb).convert("P").save(src / "transparent.png", transparency=0)
    Image.fromarray(rgb[..., 0] > 128).save(src / "bilevel.png")
    (src / "grey16.png").write_bytes(png_16bit(deep[..., 0]))
    (src / "greyalpha32.png").write_bytes(png_16bit(deep[..., :2]))
    (src / "rgb48.png").write_bytes(png_16bit(deep[..., :3]))
    (src / "rgba64.png").write_bytes(png_16bit(deep))
    Image.fromarray(deep[..., 0]).save(src / "tiff16.tif")
    high = (deep >> 8).astype(np.uint8)  # 16 -> 8 bits: the high byte of each sample
    expected = {
        "cmyk": (np.asarray(Image.open(src / "cmyk.jpg").convert("RGB")), "CMYK image: converted to RGB"),
        "palette": (np.asarray(Image.open(src / "palette.png").convert("RGB")), "palette image: restored as RGB"),
        "transparent": (np.asarray(Image.open(src / "transparent.png").convert("RGBA")), "restored as RGBA"),
        "bilevel": ((rgb[..., 0] > 128).astype(np.uint8) * 255, None),
        "grey16": (high[..., 0], "16 bits per sample: restored at 8 bits"),
        "tiff16": (high[..., 0], "16 bits per sample: restored at 8 bits"),
        "greyalpha32": (high[..., :2], "16 bits per sample"),
        "rgb48": (high[..., :3], "16 bits per sample"),
        "rgba64": (high, "16 bits per sample"),
    }
    rc, _, err = run(capsys, src, "-o", tmp_path / "out", "--model", weights["identity"], "--no-project")
    assert rc == 0, "\n".join(err)
    for name, (pixels, note) in expected.items():
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{name}.png")), pixels, err_msg=name)
        notes = [line for line in err if f"/{name}." in line]
        assert (note is None and not notes) or (len(notes) == 1 and note in notes[0] and notes[0].startswith("warning:")), (
            name,
            notes,
        )


def test_cmyk_is_converted_through_its_icc_profile(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    """The embedded profile is what the CMYK-to-RGB transform gets, and the output says sRGB."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    fake_cmyk_profile = b"a CMYK profile, as bytes"
    Image.fromarray(image()).convert("CMYK").save(tmp_path / "c.jpg", icc_profile=fake_cmyk_profile)
    seen = []

    def transform(im, input_profile, output_profile, outputMode):
        seen.append((im.mode, input_profile.data, outputMode))
        return Image.new("RGB", im.size, (10, 20, 30))

    class FakeProfile:  # the embedded profile (bytes), or sRGB
        def __init__(self, source) -> None:
            self.data = source.getvalue() if hasattr(source, "getvalue") else srgb

        def tobytes(self) -> bytes:
            return self.data

    monkeypatch.setattr(ImageCms, "ImageCmsProfile", FakeProfile)
    monkeypatch.setattr(ImageCms, "profileToProfile", transform)
    rc, _, err = run(capsys, tmp_path / "c.jpg", "-o", tmp_path / "out", "--model", weights["identity"])
    assert rc == 0 and len(err) == 1 and "through its ICC profile" in err[0], err
    assert seen == [("CMYK", fake_cmyk_profile, "RGB")]
    with Image.open(tmp_path / "out" / "c.png") as out:
        assert np.asarray(out)[0, 0].tolist() == [10, 20, 30] and out.info.get("icc_profile") == srgb


def test_a_png_saved_from_a_jpeg_is_restored_at_the_quality_its_pixels_show(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    seen = []
    forward = D2LNet.forward
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: seen.append(qf) or forward(self, x, qf))
    textured = np.clip(image(64, 96) + np.random.default_rng(1).normal(0, 12, (64, 96, 3)), 8, 247).astype(np.uint8)
    Image.open(io.BytesIO(jpeg.compress(textured, 40))).save(tmp_path / "from_jpeg.png")
    rc, _, err = run(capsys, tmp_path / "from_jpeg.png", "-o", tmp_path / "out", "--model", weights["busy"], all_lines=True)
    assert rc == 0 and seen and {float(q) for q in seen} == {40.0}, (seen, err)
    assert len(err) == 1 and "quality 40 estimated from the JPEG quantization its pixels show" in err[0]


def test_unknown_quality_is_said_once_per_run(tmp_path: Path, capsys, weights) -> None:
    for name in ("a", "b"):
        Image.fromarray(image()).save(tmp_path / f"{name}.png")
    Image.fromarray(image()).save(tmp_path / "c.jpg", quality=50)
    rc, _, err = run(capsys, tmp_path, "-o", tmp_path / "out", "--model", weights["busy"], all_lines=True)
    assert rc == 0 and len(err) == 1 and "a.png" in err[0] and UNKNOWN_QUALITY in err[0] and "--quality" in err[0]
    rc, _, err = run(
        capsys, tmp_path / "a.png", "-o", tmp_path / "out2", "--model", weights["busy"], "--quality", "40", all_lines=True
    )
    assert rc == 0 and err == []


# --------------------------------------------------------------------------- reliability


def test_restoring_into_the_input_folder_twice_with_a_suffix(tmp_path: Path, capsys, weights) -> None:
    Image.fromarray(image()).save(tmp_path / "one.jpg", quality=30)
    args = (tmp_path, "-o", tmp_path, "--suffix", "_r", "--model", weights["identity"])
    rc, stdout, err = run(capsys, *args)
    assert rc == 0 and err == [] and "restored 1 image" in stdout
    rc, stdout, err = run(capsys, *args)  # one_r.png is one.jpg's output, not an input
    assert rc == 0 and "restored 0 images" in stdout and "1 skipped" in stdout and "0 failed" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jpg", "one_r.png"]


def test_output_problems_are_found_before_any_work(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    forward = D2LNet.forward
    calls = []
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: calls.append(1) or forward(self, x, qf))
    Image.fromarray(image()).save(tmp_path / "a.png")
    (tmp_path / "file.txt").write_text("not a folder")
    cases = [
        (["-o", tmp_path / "file.txt"], 2, "exists and is not a folder"),
        (["-o", tmp_path / "file.txt" / "sub"], 2, "is a file, not a folder"),
        (["-o", tmp_path / "x.tif"], 2, "cannot write .tif files"),
        (["-o", tmp_path / "a.webp.png", "--ext", "webp"], 2, "--ext is webp"),
        (["-o", tmp_path / "o", "--max-megapixels", "inf"], 2, "--max-megapixels must be a positive number"),
    ]
    for argv, status, reason in cases:
        rc, _, err = run(capsys, tmp_path / "a.png", *argv, "--model", weights["identity"])
        assert rc == status and len(err) == 1 and reason in err[0] and err[0].startswith("d2lnet restore: error:"), (argv, err)
    assert calls == [] and not (tmp_path / "x.tif").exists() and not (tmp_path / "o").exists()


def test_a_missing_input_is_named_before_the_output(tmp_path: Path, capsys, weights) -> None:
    rc, _, err = run(capsys, tmp_path / "nope.jpg", "-o", tmp_path / "nope.png", "--model", weights["identity"])
    assert rc == 1 and len(err) == 1 and "nope.jpg" in err[0] and "no such file" in err[0]


def test_an_image_too_large_for_memory_is_refused_before_decoding(tmp_path: Path, capsys, weights) -> None:
    (tmp_path / "vast.png").write_bytes(png_header_only(65000, 65000))  # 4.2 gigapixels: ~290 GB to restore
    rc, _, err = run(
        capsys, tmp_path / "vast.png", "-o", tmp_path / "out", "--model", weights["identity"], "--max-megapixels", 5000
    )
    assert rc == 1 and len(err) == 1 and "needs about" in err[0] and "GB of memory" in err[0]


def test_tile_progress_is_reported_off_a_terminal(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    import d2lnet.engine
    import d2lnet.progress

    monkeypatch.setattr(d2lnet.progress, "PLAIN_EVERY_S", 0.0)
    monkeypatch.setattr(d2lnet.engine, "TILE_BATCH_PIXELS", 4 * 32 * 32)  # batches of 4 tiles: several of them
    Image.fromarray(image(96, 128)).save(tmp_path / "big.png")
    rc, _, err = run(
        capsys, tmp_path / "big.png", "-o", tmp_path / "out", "--model", weights["identity"], "--tile", "32", "--overlap", "8"
    )
    assert rc == 0
    tiles = [line for line in err if line.startswith("big.png: ")]
    assert tiles and tiles[-1].startswith("big.png: 20/20 tiles (100%)")  # 4 rows x 5 columns of 32px tiles, stepping 24


def test_models_json_into_a_closed_pipe(tmp_path: Path) -> None:
    """``d2lnet models --json | head -1``: the reader leaves early; no traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "d2lnet", "models", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_tta_is_used_when_asked(tmp_path: Path, capsys, weights, monkeypatch) -> None:
    shapes = []
    forward = D2LNet.forward
    monkeypatch.setattr(D2LNet, "forward", lambda self, x, qf=None: shapes.append(tuple(x.shape[-2:])) or forward(self, x, qf))
    Image.fromarray(image(21, 30)).save(tmp_path / "a.png")
    rc, _, err = run(capsys, tmp_path / "a.png", "-o", tmp_path / "out", "--model", weights["busy"], "--tta", "--tile", "0")
    assert rc == 0, err
    assert sorted(shapes) == [(24, 32)] * 4 + [(32, 24)] * 4  # padded to the 8x8 grid, then turned
