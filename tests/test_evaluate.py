"""``d2lnet eval``: the protocol against DATA.md's JPEG rows, model rows against independent
computations (scikit-image), the report formats, and the paper's numbers against paper.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from d2lnet import cli, jpeg
from d2lnet.engine import Restorer
from d2lnet.evaluation import EvalError
from d2lnet.evaluation.methods import JPEG_METHOD, Method
from d2lnet.evaluation.paper import PAPER
from d2lnet.evaluation.protocol import evaluate_set, mean_scores
from d2lnet.evaluation.testsets import find_data_root, image_set
from d2lnet.metrics import psnrb, rgb_to_y
from d2lnet.pretrained import ModelCard, load_model, save_release

CELL = r"\d+\.\d{2} / \d\.\d{3} / \d+\.\d{2}"  # PSNR / SSIM / PSNR-B at the paper's decimals


def independent_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's SSIM set up as Wang et al. (Gaussian sigma 1.5, population covariance)."""
    return structural_similarity(
        a,
        b,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        channel_axis=2 if a.ndim == 3 else None,
    )


@pytest.fixture(scope="module")
def restoring_weights(tiny_weights: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny models with perturbed weights: untrained ones return their input exactly, which
    would hide a report of the JPEG in place of the restored image."""
    folder = tmp_path_factory.mktemp("restoring")
    paths = {}
    for kind, path in tiny_weights.items():
        model = load_model(path)
        generator = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=generator))
        paths[kind] = save_release(model, folder / f"restoring-{kind}.safetensors", ModelCard(f"restoring-{kind}"))
    return paths


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small RGB ground truths with edges, gradients and texture (odd sizes on purpose)."""
    folder = tmp_path_factory.mktemp("small") / "small_set"
    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:45, 0:61]
    a = np.stack([128 + 100 * np.sin(x / 5.0), np.where((x // 8 + y // 8) % 2, 200, 50), 255 * y / 44.0], axis=-1)
    b = np.clip(rng.normal(128, 40, (52, 38, 3)).cumsum(axis=1) / np.arange(1, 39)[None, :, None], 0, 255)
    for name, image in (("a.png", a), ("b.png", b)):
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / name)
    return folder


# --------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize(
    ("folder", "gray", "expected"),
    [
        ("LIVE1_color", False, (25.69, 0.743, 24.20)),
        ("LIVE1_gray", True, (27.77, 0.773, 25.33)),
        ("LIVE1_color", True, (27.77, 0.773, 25.33)),  # LIVE1_gray is LIVE1_color's Y: same row
        ("Classic5", True, (27.82, 0.760, 25.21)),
    ],
)
def test_jpeg_rows_of_data_md(shared_data: Path, folder: str, gray: bool, expected: tuple[float, float, float]) -> None:
    """DATA.md's JPEG rows at QF 10, through the evaluation code path, to the printed decimals."""
    rows = evaluate_set(image_set(shared_data / "test" / folder, gray), [Method(JPEG_METHOD)], [10], progress=False)
    (mean,) = mean_scores(rows)
    assert mean.images == {"Classic5": 5}.get(folder, 29)
    assert (round(mean.psnr, 2), round(mean.ssim, 3), round(mean.psnrb, 2)) == expected


# --------------------------------------------------------------------------- a model, end to end


@pytest.fixture(scope="module")
def model_run(restoring_weights: dict[str, Path], small_set: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``d2lnet eval`` of the colour model and the baseline on ``small_set`` at QF 20 and 40."""
    out = tmp_path_factory.mktemp("run")
    argv = ["eval", "--model", str(restoring_weights["color"]), "jpeg", "--data", str(small_set), "--quality", "20", "40",
            "--tile", "0", "--threads", "1", "--save-images", str(out / "images"), "--crops", str(out / "crops"),
            "--json", str(out / "report.json"), "--markdown", str(out / "report.md")]  # fmt: skip
    assert cli.main(argv) == 0
    return {"out": out, "data": small_set, "weights": restoring_weights["color"]}


def test_model_rows_match_independent_computation(model_run: dict[str, Path]) -> None:
    report = json.loads((model_run["out"] / "report.json").read_text())
    rows = {(r["method"], r["image"], r["quality"]): r for r in report["images"]}
    assert len(rows) == len(report["images"]) == 2 * 2 * 2  # images x QFs x methods
    restorer = Restorer(load_model(model_run["weights"]), "cpu")
    for name in ("a.png", "b.png"):
        truth = np.asarray(Image.open(model_run["data"] / name))
        for quality in (20, 40):
            compressed = jpeg.roundtrip(truth, quality)
            saved = np.asarray(Image.open(model_run["out"] / "images" / "small_set" / str(quality) / name))
            # The saved image is the model's restoration of this JPEG, told this QF.
            np.testing.assert_array_equal(saved, restorer.restore(compressed, quality))
            assert not np.array_equal(saved, restorer.restore(compressed, 90))
            assert not np.array_equal(saved, compressed)
            for method, output in (("restoring-color", saved), (JPEG_METHOD, compressed)):
                row = rows[method, name, quality]
                assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(truth, output, data_range=255), abs=1e-5)
                assert row["ssim"] == pytest.approx(independent_ssim(truth, output), abs=1e-5)
                assert row["psnrb"] == pytest.approx(psnrb(truth, output), abs=1e-5)  # reference first: BEF of the output
    for mean in report["means"]:
        members = [r for r in report["images"] if (r["method"], r["quality"]) == (mean["method"], mean["quality"])]
        assert mean["images"] == 2
        assert mean["psnr"] == pytest.approx(np.mean([r["psnr"] for r in members]), abs=1e-5)


def test_report_structure(model_run: dict[str, Path]) -> None:
    report = json.loads((model_run["out"] / "report.json").read_text())
    assert list(report) == ["config", "notes", "means", "images"]
    assert report["config"]["quality"] == [20, 40] and report["config"]["gray"] is False
    assert [m["name"] for m in report["config"]["methods"]] == ["restoring-color", JPEG_METHOD]
    assert set(report["images"][0]) == {"set", "mode", "quality", "method", "image", "psnr", "ssim", "psnrb"}
    assert len(report["means"]) == 2 * 2

    lines = (model_run["out"] / "report.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["Set", "QF", "restoring-color", JPEG_METHOD]
    assert re.fullmatch(r"\|[-|]+\|", table[1])
    assert len(table) == 2 + 2  # header, rule, one row per QF
    for line, quality in zip(table[2:], ("20", "40")):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:2] == ["small_set", quality]
        assert all(re.fullmatch(CELL, c) for c in cells[2:])
        jpeg_mean = next(m for m in report["means"] if m["method"] == JPEG_METHOD and str(m["quality"]) == quality)
        assert cells[3] == f"{jpeg_mean['psnr']:.2f} / {jpeg_mean['ssim']:.3f} / {jpeg_mean['psnrb']:.2f}"


def test_crops(model_run: dict[str, Path]) -> None:
    crops = sorted((model_run["out"] / "crops").iterdir())
    assert [c.name for c in crops][:2] == ["small_set_q20_a_restoring-color.png", "small_set_q20_b_restoring-color.png"]
    assert len(crops) == 4  # the baseline has no crops of its own: it is the left panel
    with Image.open(crops[0]) as im:  # a.png is 45x61: 45-pixel crops, upscaled 2x, three panels
        assert im.size[0] == 3 * 90 + 2 * 4 and im.size[1] > 90


def test_plot_qf(restoring_weights: dict[str, Path], small_set: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "qf.png"
    argv = ["eval", "--model", str(restoring_weights["gray"]), "--gray", "--data", str(small_set), "--plot-qf", str(plot)]
    assert cli.main(argv) == 0
    with Image.open(plot) as im:
        assert im.format == "PNG"
    curves = json.loads(plot.with_suffix(".json").read_text())["curves"]["small_set-gray"]
    assert set(curves) == {JPEG_METHOD, "restoring-gray"}
    assert curves[JPEG_METHOD]["quality"] == list(range(5, 100, 5))
    truths = [rgb_to_y(np.asarray(Image.open(p))) for p in sorted(small_set.iterdir())]
    for i in (0, 9, 18):
        q = curves[JPEG_METHOD]["quality"][i]
        expected = np.mean([peak_signal_noise_ratio(t, jpeg.roundtrip(t, q), data_range=255) for t in truths])
        assert curves[JPEG_METHOD]["psnr"][i] == pytest.approx(expected, abs=1e-5)
    table = [line for line in plot.with_suffix(".md").read_text().splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["QF", JPEG_METHOD, "restoring-gray", "Δ PSNR restoring-gray"]
    assert len(table) == 2 + 19


# --------------------------------------------------------------------------- errors


def test_model_of_the_wrong_mode_is_a_clear_error(
    restoring_weights: dict[str, Path], small_set: Path, capsys: pytest.CaptureFixture
) -> None:
    assert cli.main(["eval", "--model", str(restoring_weights["color"]), "--data", str(small_set), "--gray"]) == 2
    error = capsys.readouterr().err
    assert "in_channels=3" in error and "--gray" in error
    assert cli.main(["eval", "--model", str(restoring_weights["gray"]), "--data", str(small_set)]) == 2
    assert "add --gray" in capsys.readouterr().err
    with pytest.raises(EvalError, match="grey"):
        color = Method("c", load_model(restoring_weights["color"]))
        evaluate_set(image_set(small_set, gray=True), [color], [10], progress=False)


def test_bad_arguments_are_clear_errors(tmp_path: Path, small_set: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", "--data", str(small_set), "--model", "jpeg", "--tile", "100"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    with pytest.raises(EvalError, match="no test data"):
        find_data_root(tmp_path / "missing")
    assert cli.main(["eval", "--model", "no-such-model", "--data", str(small_set)]) == 2
    assert "cannot load model 'no-such-model'" in capsys.readouterr().err
    assert cli.main(["eval", "--suite", "paper", "--data-root", str(small_set), "--quality", "40"]) == 2
    assert "QF 10, 20, 30" in capsys.readouterr().err


def test_data_root_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "test").mkdir()
    monkeypatch.setenv("D2LNET_DATA", str(tmp_path))
    assert find_data_root() == (tmp_path / "test").resolve()
    monkeypatch.setenv("D2LNET_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(EvalError, match="elsewhere"):  # no silent fallback to ../shared
        find_data_root()


# --------------------------------------------------------------------------- the paper suite


@pytest.fixture
def live1_root(small_set: Path, tmp_path: Path) -> Path:
    """A data root with LIVE1 folders (colour, and its BT.601 Y) of the two small images, no other set."""
    root = tmp_path / "test"
    (root / "LIVE1_color").mkdir(parents=True)
    (root / "LIVE1_gray").mkdir()
    for path in small_set.iterdir():
        rgb = np.asarray(Image.open(path))
        Image.fromarray(rgb).save(root / "LIVE1_color" / path.name)
        Image.fromarray(rgb_to_y(rgb)).save(root / "LIVE1_gray" / path.name)
    return root


def test_paper_suite_on_a_small_data_root(restoring_weights: dict[str, Path], live1_root: Path, tmp_path: Path) -> None:
    """LIVE1 folders of two small images, no Classic5 or BSDS500: Tables 1 and 2 with skip notes."""
    root = live1_root
    argv = ["eval", "--suite", "paper", "--data-root", str(root), "--quality", "10",
            "--model", str(restoring_weights["color"]), str(restoring_weights["gray"]),
            "--json", str(tmp_path / "suite.json"), "--markdown", str(tmp_path / "suite.md")]  # fmt: skip
    assert cli.main(argv) == 0

    markdown = (tmp_path / "suite.md").read_text()
    assert "ICB" in markdown and "Classic5 (Table 1) is not in" in markdown and "BSDS500_test" in markdown
    tables = {m.group(1): m.group(2) for m in re.finditer(r"### (Table \d)[^\n]*\n\n(.*?)(?:\n\n|$)", markdown, re.S)}
    assert set(tables) == {"Table 1", "Table 2"}
    for name, model, paper in (("Table 1", "restoring-gray", PAPER["gray"]["LIVE1"][10]),
                               ("Table 2", "restoring-color", PAPER["color"]["LIVE1"][10])):  # fmt: skip
        header, _, row = ([c.strip() for c in line.strip("|").split("|")] for line in tables[name].splitlines())
        assert header == ["Set", "QF", "JPEG", "JPEG (paper)", "Δ JPEG", "FBCNN (paper)", "D2LNet (paper)", model, f"Δ {model}"]
        cell = dict(zip(header, row))
        assert cell["D2LNet (paper)"] == "{:.2f} / {:.3f} / {:.2f}".format(*paper["D2LNet"])
        measured = [float(v) for v in cell["JPEG"].split(" / ")]
        delta = [float(v) for v in cell["Δ JPEG"].split(" / ")]
        assert delta == pytest.approx([m - p for m, p in zip(measured, paper["JPEG"])], abs=1e-9)

    report = json.loads((tmp_path / "suite.json").read_text())
    assert {(m["set"], m["method"]) for m in report["means"]} == {
        ("LIVE1_gray", JPEG_METHOD), ("LIVE1_gray", "restoring-gray"),
        ("LIVE1_color", JPEG_METHOD), ("LIVE1_color", "restoring-color"),
    }  # fmt: skip
    jpeg_row = next(m for m in report["means"] if m["set"] == "LIVE1_color" and m["method"] == JPEG_METHOD)
    assert jpeg_row["paper"] == {"method": "JPEG", "psnr": 25.69, "ssim": 0.743, "psnrb": 24.20}
    assert jpeg_row["delta"]["psnr"] == pytest.approx(round(jpeg_row["psnr"], 2) - 25.69, abs=1e-9)


def test_paper_suite_with_a_grey_model_only_runs_table_1(
    restoring_weights: dict[str, Path], live1_root: Path, tmp_path: Path
) -> None:
    """A grey model alone: Table 1 only; the colour sets are skipped with a note, not scored for JPEG."""
    root = live1_root
    argv = ["eval", "--suite", "paper", "--data-root", str(root), "--quality", "10",
            "--model", str(restoring_weights["gray"]), "--json", str(tmp_path / "suite.json")]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "suite.json").read_text())
    assert {(m["set"], m["method"]) for m in report["means"]} == {("LIVE1_gray", JPEG_METHOD), ("LIVE1_gray", "restoring-gray")}
    assert any("LIVE1_color (Table 2): no colour model" in note for note in report["notes"])


# --------------------------------------------------------------------------- the paper's numbers


def test_paper_constants_spot_checks() -> None:
    """Values read by hand from paper.md, Tables 1 and 2."""
    assert PAPER["color"]["LIVE1"][10]["D2LNet"] == (27.82, 0.805, 27.80)
    assert PAPER["gray"]["LIVE1"][10]["D2LNet"] == (30.08, 0.840, 30.06)
    assert PAPER["gray"]["Classic5"][30]["FBCNN"] == (33.54, 0.894, 32.78)
    assert PAPER["color"]["BSD500"][20]["JPEG"] == (28.21, 0.827, 26.37)
    assert PAPER["gray"]["BSD500"][10]["D2LNet"] == (29.61, 0.810, 29.53)
    assert set(PAPER["gray"]) == {"LIVE1", "BSD500", "Classic5"} and set(PAPER["color"]) == {"LIVE1", "BSD500"}


def test_paper_constants_appear_in_paper_md(shared_data: Path) -> None:
    """Every typed-in triple is printed, tab-separated, in paper.md."""
    paper_md = shared_data.parent / "paper.md"
    if not paper_md.is_file():
        pytest.skip(f"{paper_md} not found")
    text = paper_md.read_text()
    for mode, sets in PAPER.items():
        for name, by_quality in sets.items():
            for quality, methods in by_quality.items():
                for method, (p, s, b) in methods.items():
                    assert f"{p:.2f}\t{s:.3f}\t{b:.2f}" in text, (mode, name, quality, method)


def test_output_and_data_problems_are_one_line_errors_before_the_work(tmp_path: Path, small_set: Path, capsys) -> None:
    (tmp_path / "somefile.txt").write_text("a file, not a folder")
    for argv, reason in (
        (["--json", str(tmp_path / "somefile.txt" / "r.json")], "is a file, not a folder"),
        (["--markdown", str(tmp_path)], "is a folder, not a file"),
        (["--save-images", str(tmp_path / "somefile.txt")], "exists and is not a folder"),
        (["--device", "bogus"], "unknown device 'bogus'"),
    ):
        assert cli.main(["eval", "--model", "jpeg", "--data", str(small_set), *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and reason in err[0] and err[0].startswith("d2lnet eval: error:"), err
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"not a png")
    assert cli.main(["eval", "--model", "jpeg", "--data", str(broken)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "b.png" in err[0] and "not an image file" in err[0]
