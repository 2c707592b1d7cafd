"""The ``d2lnet`` command's surface: what answers without PyTorch, ``d2lnet models``, the help
texts' defaults, and the restore conventions (-i, -o results/, --fp32, --ext auto, -t, --strength).

Restoring end to end is tested in tests/test_cli_restore.py; here the expected pixels come from
Pillow and numpy, or from the model run directly, never from the command's own output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_model

import d2lnet.cards as cards
from d2lnet.cli import main
from d2lnet.pretrained import ModelCard, save_release

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- no torch for help and listing


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["--version"], ["models"], ["models", "--json"]]
    + [[command, "--help"] for command in ("restore", "eval", "train", "models", "serve", "export")],
)
def test_answers_without_importing_torch(argv: list[str]) -> None:
    # A fresh interpreter: this one has torch loaded already.
    code = (
        "import sys, d2lnet.cli\n"
        "try:\n"
        f"    status = d2lnet.cli.main({argv!r})\n"
        "except SystemExit as exit:\n"  # argparse's --help and --version exit
        "    status = exit.code\n"
        "heavy = sorted(m for m in ('torch', 'PIL', 'gradio', 'onnx') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_the_package_imports_its_api_on_first_use() -> None:
    code = (
        "import sys, d2lnet\n"
        "assert 'torch' not in sys.modules\n"
        "from d2lnet import build, load_model, restore_image, CONFIGS, PRETRAINED\n"
        "assert 'torch' in sys.modules and type(d2lnet.build('d2lnet-xs')).__name__ == 'D2LNet'\n"
        "assert callable(d2lnet.load_model) and callable(d2lnet.restore_image) and 'd2lnet-s-color' in d2lnet.PRETRAINED\n"
        "assert set(d2lnet.__all__) <= set(dir(d2lnet))\n"
        "try:\n"
        "    d2lnet.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- d2lnet models


@pytest.fixture
def two_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Two release files as the bundled models, one with a full card, and one catalogued but absent."""
    colour, grey = tiny_model(channels=3), tiny_model(channels=1)
    card = ModelCard(
        "tiny-a", "a tiny model", quality_range=[5, 95], inference={"tile": 64},
        training={"steps": 120, "batch_size": 4, "crop": 64, "minutes": 2.6},
        scores={"validation": {"psnr": 30.123, "psnr_jpeg": 29.0, "q10": {}, "q50": {}}, "validation_set": "/data/LIVE1_color"},
    )  # fmt: skip
    save_release(colour, tmp_path / "a.safetensors", card)
    save_release(grey, tmp_path / "b.safetensors", ModelCard("tiny-b"))
    monkeypatch.setattr(cards, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(cards, "PRETRAINED", {"tiny-a": "a.safetensors", "absent": "none.safetensors", "tiny-b": "b.safetensors"})
    count = {name: sum(p.numel() for p in m.parameters()) for name, m in (("tiny-a", colour), ("tiny-b", grey))}
    return {"folder": tmp_path, "parameters": count}


def test_models_prints_a_table(two_models, capsys) -> None:
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, a, b = lines[:3]
    assert header.split()[:4] == ["model", "channels", "quality", "params"]
    count = two_models["parameters"]
    assert a.split()[:5] == ["tiny-a", "3", "(RGB)", "5-95", f"{count['tiny-a'] / 1e6:.2f}M"]
    assert "120 steps x 4 x 64px, 3 min" in a and "30.12 dB (JPEG 29.00), LIVE1_color" in a and a.endswith("tiles of 64")
    assert b.split()[:5] == ["tiny-b", "1", "(grey)", "-", f"{count['tiny-b'] / 1e6:.2f}M"] and b.endswith("whole images")
    assert not any("absent" in line for line in lines)
    # Columns line up: each header word starts where its cells start.
    for word in ("quality", "params", "inference"):
        assert a[header.index(word) - 2 : header.index(word)] == "  " and a[header.index(word)] != " "
    assert "mean over QF 10, 50" in "\n".join(lines[3:])


def test_models_json_is_the_cards_with_parameters(two_models, capsys) -> None:
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listed] == ["tiny-a", "tiny-b"]
    folder = two_models["folder"]
    for entry, file in zip(listed, ("a", "b")):
        written = json.loads((folder / f"{file}.json").read_text())  # the card save_release wrote beside the weights
        assert {k: v for k, v in entry.items() if k not in ("parameters", "file")} == written
        assert entry["parameters"] == two_models["parameters"][entry["name"]]
        assert Path(entry["file"]) == folder / f"{file}.safetensors"


def test_models_with_none_installed(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cards, "WEIGHTS_DIR", tmp_path)
    assert main(["models"]) == 1 and "no bundled models" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []


def test_bundled_listing_matches_the_loaded_models() -> None:
    from d2lnet.pretrained import load_model

    listings = cards.bundled_listings()
    assert [item.card.name for item in listings] == list(cards.PRETRAINED)
    for item in listings:
        model = load_model(item.card.name)
        assert item.parameters == sum(p.numel() for p in model.parameters())
        assert item.card.to_dict() == model.card.to_dict()


def test_a_file_that_is_not_a_release(tmp_path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a safetensors file"):
        cards.read_listing(tmp_path / "x.safetensors")
