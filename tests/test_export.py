"""ONNX export (``d2lnet export``): the export-only FFT formulation against torch.fft and IEEE atan2,
the export graph against ``D2LNet.forward``, and the exported file in ONNX Runtime against PyTorch.

The tests that export need onnx, onnxscript and onnxruntime (``pip install -e ".[onnx]"``) and are
skipped, with that reason, without them. One export (about 30 s) serves all of them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_model, torch_threads

from d2lnet.cli import main
from d2lnet.export import ExportGraph, atan2_ieee, irfft2_via_ifft, irfft_via_ifft, max_difference, rfft2_via_fft2
from d2lnet.model import QualityFiLM
from d2lnet.pretrained import ModelCard, load_model, save_release

MISSING = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
needs_onnx = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install -e '.[onnx]'")
# Max abs difference on [0, 1] allowed between ONNX Runtime and PyTorch: under one 8-bit level.
# ONNX Runtime's DFT is 1e-4 off at sides that are not powers of two, and the random-weight test
# model amplifies that to 1e-3-2e-3 (the bundled ones to 5e-4), varying with how PyTorch rounds.
TOLERANCE = 1 / 255


# --------------------------------------------------------------------------- the export-only formulation


@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
@pytest.mark.parametrize("size", [(8, 6), (7, 9), (5, 2)])
def test_rfft2_via_fft2_is_rfft2(norm: str, size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    got = rfft2_via_fft2(x, norm=norm)
    expected = torch.fft.rfft2(x, norm=norm)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_rfft2_via_fft2_makes_real_coefficients_exactly_real() -> None:
    """Rows 0 and H/2 of columns 0 and W/2 of a real input's spectrum are real: +0, not noise."""
    x = torch.rand(1, 2, 6, 8)
    imag = rfft2_via_fft2(x).imag
    for u in (0, 3):
        for v in (0, 4):
            values = imag[..., u, v]
            assert torch.all(values == 0) and not torch.any(torch.signbit(values))


@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
@pytest.mark.parametrize("size", [(8, 6), (7, 9), (6, 2), (4, 3)])
def test_irfft2_via_ifft_is_irfft2(norm: str, size: tuple[int, int]) -> None:
    """Any half-spectrum, Hermitian or not (the network's corrected spectra are not): irfft2's result."""
    h, w = size
    half = torch.randn(2, 3, h, w // 2 + 1, dtype=torch.complex128)
    got = irfft2_via_ifft(half, s=(h, w), norm=norm)
    expected = torch.fft.irfft2(half, s=(h, w), norm=norm)
    assert got.shape == (2, 3, h, w)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [6, 7, 2, None])
def test_irfft_via_ifft_is_irfft(n: int | None) -> None:
    """The 1-D inverse the network's fast irfft2 ends with (d2lnet.fourier), odd lengths too."""
    half = torch.randn(2, 3, 5, 4, dtype=torch.complex128)
    torch.testing.assert_close(irfft_via_ifft(half, n=n), torch.fft.irfft(half, n=n), rtol=0, atol=1e-12)


def test_atan2_ieee_follows_ieee_754() -> None:
    """Against Python's math.atan2 (C's, IEEE 754), on the axes too; +0 on the negative axis gives pi."""
    values = [-2.0, -1e-9, 0.0, 1e-9, 3.0]
    y, x = torch.meshgrid(torch.tensor(values, dtype=torch.float64), torch.tensor(values, dtype=torch.float64), indexing="ij")
    expected = torch.tensor([[math.atan2(a, b) for b in values] for a in values], dtype=torch.float64)
    torch.testing.assert_close(atan2_ieee(y, x), expected, rtol=0, atol=1e-15)
    assert atan2_ieee(torch.tensor(0.0), torch.tensor(-1.0)).item() == torch.tensor(math.pi).item()


@pytest.mark.parametrize("size", [(37, 53), (16, 24)])
def test_export_graph_equals_forward(size: tuple[int, int]) -> None:
    """What is exported (padding, gathers, complex FFTs, IEEE atan2) computes what forward computes.

    In float64: the phase correction is discontinuous where a coefficient sits on the negative
    real axis (phase pi or -pi), so in float32 a rounding difference of 1e-7 can move an output
    by 1e-3 here and there, whichever of two equal formulations runs (see d2lnet.export)."""
    model = tiny_model("busy").double()
    image = torch.rand(2, 3, *size, dtype=torch.float64)
    quality = torch.tensor([30.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        got = ExportGraph(model)(image, quality)
        expected = model(image, torch.tensor([30.0, float("nan")], dtype=torch.float64)).out2.clamp(0, 1)  # 0: unknown
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-9


# --------------------------------------------------------------------------- the exported file


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A non-trivial tiny model saved as a release file and exported with ``d2lnet export``. Its
    quality input is live, as a trained model's is: as initialised, the quality FiLM is nearly the
    identity, and an unknown quality would restore within a hundredth of an 8-bit level of any
    known one, too close for the tests below to tell them apart."""
    if MISSING:
        pytest.skip(f"needs {', '.join(MISSING)}: pip install -e '.[onnx]'")
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model("busy")
    with torch.no_grad():
        for film in (module for module in model.modules() if isinstance(module, QualityFiLM)):
            film.linear.weight.normal_(0, 0.3)
    weights = save_release(model, folder / "tiny-busy.safetensors", ModelCard("tiny-busy", "for tests"))
    output = folder / "tiny-busy.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), torch_threads(torch.get_num_threads()):  # export sets its own
        status = main(["export", str(weights), "-o", str(output)])
    return {"status": status, "stdout": stdout.getvalue(), "path": output, "model": load_model(weights)}


def _session(path: Path):
    from d2lnet.export import onnxruntime_session

    return onnxruntime_session(path, threads=1)


@needs_onnx
def test_cli_writes_and_checks_the_file(exported: dict) -> None:
    assert exported["status"] == 0
    assert exported["path"].is_file()
    assert "onnxruntime matches PyTorch within" in exported["stdout"]


@needs_onnx
def test_the_commands_check_reads_zero_as_unknown(exported: dict) -> None:
    """``max_difference``, the figure ``d2lnet export`` prints, gives PyTorch the file's unknown
    quality (0) as the model's (NaN). At a size where ONNX Runtime's DFT is as exact as PyTorch's
    FFT it is then far within the tolerance; given 0 as a number, the model restores differently
    (see test_unknown_quality_differs_from_a_known_one). At the command's own odd size, where this
    random-weight model's phases are fragile, it is 4e-3-9e-3 either way (the bundled colour
    model: 3e-4)."""
    assert max_difference(exported["path"], exported["model"], (64, 64)) < TOLERANCE


NAN = float("nan")


@needs_onnx
@pytest.mark.parametrize(
    "size, quality, model_quality",
    [
        ((61, 29), [30.0, 0.0], [30.0, NAN]),  # padded inside to 64x32; one known, one unknown quality
        ((37, 53), [0.0], [NAN]),  # padded inside to 40x56; one quality (unknown) for the whole batch
        ((37, 53), [NAN, 75.0], [NAN, 75.0]),  # NaN is unknown too
        ((32, 48), [-5.0, 10.0], [NAN, 10.0]),  # so is any value below 0
    ],
)
def test_onnxruntime_matches_pytorch(
    exported: dict, size: tuple[int, int], quality: list[float], model_quality: list[float]
) -> None:
    """The file's qualities (0 or less, or NaN: unknown) against the model's (NaN: unknown)."""
    torch.manual_seed(7)
    image = torch.rand(2, 3, *size)
    q = torch.tensor(quality)
    with torch.no_grad():
        expected = exported["model"](image, torch.tensor(model_quality)).out2.clamp(0, 1)
    (got,) = _session(exported["path"]).run(None, {"image": image.numpy(), "quality": q.numpy()})
    assert got.shape == tuple(expected.shape)
    assert (torch.from_numpy(got) - expected).abs().max().item() < TOLERANCE


@needs_onnx
def test_unknown_quality_differs_from_a_known_one(exported: dict) -> None:
    """The quality input is live, well beyond the tolerance of the comparisons above: 0 (unknown)
    and 10 give different restorations, and so, in PyTorch, do the model's NaN (unknown) and 0 taken
    as a number, which the file's 0 must not be read as."""
    image = torch.rand(1, 3, 24, 32)
    session = _session(exported["path"])
    unknown, low = (session.run(None, {"image": image.numpy(), "quality": torch.tensor([q]).numpy()})[0] for q in (0.0, 10.0))
    assert abs(unknown - low).max() > 4 * TOLERANCE
    with torch.no_grad():
        nan, zero = (exported["model"](image, torch.tensor([q])).out2.clamp(0, 1) for q in (NAN, 0.0))
    assert (nan - zero).abs().max().item() > 4 * TOLERANCE


@needs_onnx
def test_metadata_and_signature(exported: dict) -> None:
    session = _session(exported["path"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["name"] == "tiny-busy"
    assert meta["channels"] == "3" and meta["layout"] == "NCHW" and meta["stride"] == "4"
    assert meta["quality_unknown"].startswith("0 ")
    assert meta["tile"] == "" and meta["overlap"] == "32"  # no card: whole images, the default overlap
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert inputs["image"] == ["batch", 3, "height", "width"]
    assert inputs["quality"] == ["quality_batch"]
    assert [o.name for o in session.get_outputs()] == ["restored"]


def test_cli_refuses_to_replace_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "model.onnx"
    output.write_bytes(b"keep me")
    status = main(["export", "d2lnet-s-color", "-o", str(output)])
    err = capsys.readouterr().err.strip().splitlines()
    if {"onnx", "onnxscript"} & set(MISSING):  # then it stops earlier, on the missing packages, in one line all the same
        assert status == 1 and len(err) == 1 and err[0].startswith("d2lnet export: error:")
        return
    assert status == 2 and len(err) == 1 and "exists" in err[0] and err[0].startswith("d2lnet export: error:")
    assert output.read_bytes() == b"keep me"
