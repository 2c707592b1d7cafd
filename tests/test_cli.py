"""The ``d2lnet`` command's surface: what answers without PyTorch, ``d2lnet models``, the help
texts' defaults, and the restore conventions (-i, -o results/, --fp32, --ext auto, -t, --strength).

Restoring end to end is tested in tests/test_cli_restore.py; here the expected pixels come from
Pillow and numpy, or from the model run directly, never from the command's own output.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model
from PIL import Image

import d2lnet.cards as cards
from d2lnet.cli import build_parser, main
from d2lnet.images import to_tensor
from d2lnet.pretrained import ModelCard, save_release
from d2lnet.restore import restore_image
from d2lnet.restore_cli import plan_jobs

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
        "assert set(d2lnet.__all__) == {*d2lnet._EXPORTS, '__version__'} and set(d2lnet.__all__) <= set(dir(d2lnet))\n"
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
        "tiny-a", "a tiny model", quality_range=[5, 95], inference={"tile": 64, "keep_444_chroma_from": 70},
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
    assert (
        "120 steps x 4 x 64px, 3 min" in a
        and "30.12 dB (JPEG 29.00), LIVE1_color" in a
        and a.endswith("tiles of 64 (overlap 32); 4:4:4 chroma kept from QF 70")
    )
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


# --------------------------------------------------------------------------- help texts


def _option_entries(help_text: str) -> dict[str, str]:
    """The options section of a --help text: first option string -> its whole entry."""
    entries: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        match = re.match(r"^  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("command", ["restore", "eval", "train", "models", "serve", "export"])
def test_every_help_states_the_defaults(command: str) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    entries = _option_entries(sub.format_help())
    takes_value = [a for a in sub._actions if a.option_strings and a.nargs != 0]
    assert takes_value or command == "models"
    for action in takes_value:
        entry = entries[action.option_strings[0]]
        assert "default" in entry, entry
        assert "(default: None)" not in entry and "(default: )" not in entry, entry


def test_defaults_shown_are_the_parsed_values() -> None:
    restore = _option_entries(build_parser()._subparsers._group_actions[0].choices["restore"].format_help())
    args = build_parser().parse_args(["restore", "x.jpg"])
    assert f"(default: {args.strength})" in restore["--strength"]
    assert "(default: auto)" in restore["--overlap"] and args.overlap is None  # auto: the card's
    assert f"(default: {args.output})" in restore["-o"] and args.output == "results"


# --------------------------------------------------------------------------- restore conventions


def test_aliases_parse_like_the_long_forms() -> None:
    parse = build_parser().parse_args
    for command in (["restore", "a.jpg"], ["eval"], ["serve"]):
        assert parse([*command, "--fp32"]).precision == parse([*command, "--precision", "fp32"]).precision == "fp32"
        assert parse(command).precision == "auto"
        assert parse([*command, "-t", "64"]).tile == parse([*command, "--tile", "64"]).tile == "64"
    args = parse(["restore", "a.jpg", "-i", "b.jpg", "c.jpg", "--input", "d"])
    assert args.inputs == ["a.jpg"] and args.more_inputs == ["b.jpg", "c.jpg", "d"]


@pytest.fixture(scope="module")
def busy_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny colour model that changes its input (and records no tile: whole images)."""
    return save_release(tiny_model("busy"), tmp_path_factory.mktemp("w") / "busy.safetensors", ModelCard("busy"))


def _photo(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 90 * np.sin(x / 4.0 + y / 7.0)[..., None] + rng.normal(0, 12, (h, w, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _restore(capsys, *argv: object) -> tuple[int, list[str]]:
    status = main(["restore", *map(str, argv), "--device", "cpu", "--fp32", "--tile", "0"])
    err = [line for line in capsys.readouterr().err.splitlines() if "quality factor is unknown" not in line]
    return status, err


def test_inputs_from_i_and_positionals_go_to_results(tmp_path, monkeypatch, capsys, busy_weights) -> None:
    for name in ("a", "b", "c"):
        Image.fromarray(_photo(seed=ord(name))).save(tmp_path / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    status, err = _restore(capsys, "a.png", "-i", "b.png", "--input", "c.png", "--model", busy_weights)
    assert status == 0 and err == []
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["a.png", "b.png", "c.png"]
    assert _restore(capsys, "--model", busy_weights) == (
        2,
        ["d2lnet restore: error: no input: give image files, folders or globs (as INPUT or with -i)"],
    )


def test_ext_auto_keeps_each_inputs_format(tmp_path, capsys, busy_weights) -> None:
    images = tmp_path / "in"
    images.mkdir()
    for name, fmt in (("a.jpg", "JPEG"), ("b.webp", "WEBP"), ("c.bmp", "BMP"), ("d.PNG", "PNG"), ("e.tif", "TIFF")):
        Image.fromarray(_photo()).save(images / name, fmt)
    jobs = plan_jobs([str(images)], str(tmp_path / "out"), "auto")
    assert sorted(job.dest.name for job in jobs) == ["a.jpg", "b.webp", "c.png", "d.PNG", "e.png"]
    assert [job.dest.name for job in plan_jobs([str(images / "c.bmp")], str(tmp_path / "x.webp"), "auto")] == ["x.webp"]
    # Two inputs with one stem: distinct outputs under auto, one refused under png.
    assert all(
        job.error is None for job in plan_jobs([str(images / "a.jpg"), str(images / "b.webp")], str(tmp_path / "o"), "auto")
    )

    status, err = _restore(capsys, images, "-o", tmp_path / "out", "--ext", "auto", "--model", busy_weights)
    assert status == 0 and err == []
    formats = {p.name: Image.open(p).format for p in (tmp_path / "out").iterdir()}
    assert formats == {"a.jpg": "JPEG", "b.webp": "WEBP", "c.png": "PNG", "d.PNG": "PNG", "e.png": "PNG"}


def test_strength_blends_input_and_restoration(tmp_path, capsys, busy_weights) -> None:
    photo = _photo(seed=5)
    Image.fromarray(photo).save(tmp_path / "a.png")
    # The reference: the model run directly, the blend computed here in float.
    model = tiny_model("busy")
    x = to_tensor(photo)[None]
    with torch.no_grad():
        restored = model(x).out2[0].clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64) * 255
    outputs = {}
    for strength in ("0", "0.3", "1"):
        status, err = _restore(
            capsys, tmp_path / "a.png", "-o", tmp_path / f"s{strength}.png", "--strength", strength, "--model", busy_weights
        )
        assert status == 0 and err == []
        outputs[strength] = np.asarray(Image.open(tmp_path / f"s{strength}.png")).astype(np.float64)
        expected = np.clip(np.round(photo + float(strength) * (restored - photo)), 0, 255)
        assert np.abs(outputs[strength] - expected).max() <= 1, strength
    assert np.array_equal(outputs["0"], photo)  # strength 0 is the input, exactly
    assert np.abs(outputs["1"] - photo).mean() > 2  # the model does change it
    # The default is the full restoration.
    _restore(capsys, tmp_path / "a.png", "-o", tmp_path / "default.png", "--model", busy_weights)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "default.png")), outputs["1"])


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan", "half"])
def test_strength_outside_0_1_is_refused(value: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["restore", "a.png", "--strength", value])
    assert exit.value.code == 2 and "--strength: must be a number from 0 to 1" in capsys.readouterr().err


def test_strength_in_the_python_api() -> None:
    photo = _photo(seed=7)
    model = tiny_model("busy")
    assert np.array_equal(restore_image(photo, model=model, strength=0.0), photo)
    full = restore_image(photo, model=model).astype(np.int16)
    half = restore_image(photo, model=model, strength=0.5).astype(np.int16)
    assert np.abs(half - (photo + full) / 2).max() <= 1
    with pytest.raises(ValueError, match="strength"):
        restore_image(photo, model=model, strength=2.0)


def test_the_readmes_first_command_writes_where_git_ignores(tmp_path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    readme = (REPO / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "d2lnet restore " in line and not line.lstrip().startswith("#"))
    words = shlex.split(first[first.index("d2lnet restore") :].split("#")[0])
    args = build_parser().parse_args(words[1:])
    outputs = [args.output] if Path(args.output).suffix else [f"{args.output}/{Path(i).stem}.png" for i in args.inputs]
    for output in outputs:
        result = subprocess.run(["git", "check-ignore", "-q", output], cwd=REPO)
        assert result.returncode == 0, f"{output}, written by the README's first command ({first.strip()}), is not ignored by git"


def test_models_table_shows_the_totals_of_a_model_trained_in_several_runs() -> None:
    from d2lnet.cards import _budget

    one_run = {"steps": 1300, "batch_size": 4, "crop": 96, "minutes": 106.0}
    assert _budget(one_run) == "1300 steps x 4 x 96px, 106 min"
    runs = [{"steps": 10000}, {"steps": 1300}]
    two_runs = {**one_run, "cumulative": {"steps": 11300, "images_seen": 45200, "cpu_hours": 4.88, "runs": runs}}
    assert _budget(two_runs) == "11300 steps in 2 runs, 45200 crops, 4.9 CPU h"


def test_models_table_shows_a_held_out_comparison_as_its_mean_over_qualities() -> None:
    from d2lnet.cards import _validation, _validation_qualities

    jpeg, whole = {"q10": 24.0, "q50": 30.0}, {"q10": 25.5, "q50": 31.0}
    nested = {"validation": {"jpeg": jpeg, "this_release": {"whole": whole, "tiles_96": {"q10": 9.0, "q50": 9.0}}}}
    assert _validation(nested) == "28.25 dB (JPEG 27.00), held-out, whole"
    assert _validation({"validation": {"jpeg": jpeg, "whole": whole}}) == "28.25 dB (JPEG 27.00), held-out, whole"
    assert _validation_qualities(nested) == [10, 50]
    tiled = {"validation": {"jpeg": jpeg, "this_release": {"tiles_256_16": whole}}}  # a card without whole images
    assert _validation(tiled) == "28.25 dB (JPEG 27.00), held-out, tiles 256/16"
    # A model run in tiles of 96 by default is shown in that view, even where whole images were measured.
    assert _validation(nested, "tiles_96") == "9.00 dB (JPEG 27.00), held-out, tiles 96"
    assert _validation(nested, "tiles_256_16") == "28.25 dB (JPEG 27.00), held-out, whole"  # not measured: whole
    assert _validation({"validation": {"psnr": 30.0, "psnr_jpeg": 29.0}, "validation_set": "x/LIVE1_gray"}) == (
        "30.00 dB (JPEG 29.00), LIVE1_gray"
    )


def test_commands_import_with_the_garbage_collector_off_and_freeze_what_they_imported() -> None:
    """In a fresh interpreter (this one has imported everything already): the collector is off
    during a command's first import and on after it, with the imported objects frozen; a second
    import of nothing new freezes nothing more, and a collector the caller turned off stays off."""
    script = """
import gc
from d2lnet.cli import _importing
with _importing():
    off_inside = not gc.isenabled()
    import d2lnet.restore_cli
first, on_after = gc.get_freeze_count(), gc.isenabled()
with _importing():
    import d2lnet.restore_cli
second = gc.get_freeze_count()
gc.disable()
with _importing():
    pass
print(off_inside, on_after, gc.isenabled(), first > 100000, second == first)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True", "False", "True", "True"]
