"""Loading weights by name or path, and release files (``d2lnet models``: tests/test_cli.py)."""

import json

import pytest
import torch
from helpers import tiny_model

import d2lnet.pretrained as pretrained
from d2lnet.checkpoint import Checkpoint
from d2lnet.pretrained import PRETRAINED, ModelCard, load_model, model_card, save_release


def test_release_round_trip_is_the_fp16_model(tmp_path):
    model = tiny_model("busy")
    path = save_release(model, tmp_path / "m.safetensors", ModelCard("m", "test"))
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(b, a.half().float(), rtol=0, atol=0, msg=name)
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["name"] == "m" and card["config"]["width"] == 8 and loaded.card.to_dict() == card == model_card(path).to_dict()
    assert path.stat().st_mode & 0o777 == 0o644  # an ordinary file, not mkstemp's private 0600


def test_checkpoint_loads_its_ema_weights(tmp_path):
    model, ema = tiny_model("busy", seed=1), tiny_model("busy", seed=2)
    path = tmp_path / "last.pt"
    Checkpoint(model.config, model.state_dict(), ema.state_dict(), step=7).save(path)
    loaded = load_model(path)
    torch.testing.assert_close(loaded.refine_out[-1].weight, ema.refine_out[-1].weight)
    assert model_card(path).training["steps"] == 7


def test_checkpoints_from_before_the_format_field_load(tmp_path):
    model = tiny_model("busy", seed=1)
    torch.save({"config": model.config.to_dict(), "model": model.state_dict(), "ema": None, "step": 3}, tmp_path / "old.pt")
    torch.testing.assert_close(load_model(tmp_path / "old.pt").refine_out[-1].weight, model.refine_out[-1].weight)


def test_files_that_are_not_models_give_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    torch.save({"anything": [1, 2, 3]}, tmp_path / "foreign.pt")
    torch.save(tmp_path, tmp_path / "pickled.pt")  # a Path object: refused by weights_only loading
    wrong = tiny_model().state_dict()
    wrong.pop("sam.to_image.weight")
    torch.save({"config": tiny_model().config.to_dict(), "model": wrong}, tmp_path / "mismatched.pt")
    for name, reason in (("notes.txt", "neither a release file"), ("foreign.pt", "not a d2lnet checkpoint"),
                         ("pickled.pt", "not a d2lnet checkpoint"), ("mismatched.pt", "do not fit")):  # fmt: skip
        with pytest.raises(ValueError, match=reason) as error:
            load_model(tmp_path / name)
        assert "\n" not in str(error.value) and "weights_only" not in str(error.value)


def test_unknown_names_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="untrained configuration"):
        load_model("d2lnet-paper")
    with pytest.raises(FileNotFoundError, match="bundled models"):
        load_model("no-such-model")
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(tmp_path / "x.safetensors")


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_bundled_models_load_by_name(name):
    model = load_model(name)  # shipped with the package: a missing file is a failure, not a skip
    card = model.card
    assert card.name == name and card.channels == model.config.in_channels
    assert card.quality_range == [5, 95] and card.tile > 0
    assert (pretrained.WEIGHTS_DIR / PRETRAINED[name]).stat().st_size <= 16 * 2**20


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_bundled_models_improve_an_unseen_photo(name):
    # scikit-image's astronaut (NASA, public domain) is in none of the training or test sets;
    # PSNR from scikit-image, independent of d2lnet.metrics.
    from skimage.data import astronaut
    from skimage.metrics import peak_signal_noise_ratio

    from d2lnet.jpeg import roundtrip
    from d2lnet.metrics import rgb_to_y
    from d2lnet.restore import restore_image

    clean = astronaut()[64:224, 160:320]
    if name.endswith("gray"):
        clean = rgb_to_y(clean)
    model = load_model(name)
    for quality in (10, 50, 90):
        degraded = roundtrip(clean, quality)
        restored = restore_image(degraded, model=model, quality=quality)
        gain = peak_signal_noise_ratio(clean, restored) - peak_signal_noise_ratio(clean, degraded)
        assert gain > 0.1, f"{name} at QF {quality}: {gain:+.2f} dB"


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_bundled_cards_budgets_add_up(name):
    """A card's cumulative budget is the sum of its runs (each new release appends one run and adds
    it to the totals; a card written twice from its own output would count a run twice), and the
    card inside the weights file is the one beside it."""
    card = model_card(name)
    total = card.training.get("cumulative")
    if total is None:
        pytest.skip(f"{name} was trained in one run")
    runs = total["runs"]
    listed = [json.dumps(run, sort_keys=True) for run in runs]
    assert len(set(listed)) == len(listed), "a run is listed twice (a card rebuilt from its own output)"
    assert total["steps"] == sum(run["steps"] for run in runs)
    assert total["images_seen"] == sum(run["images_seen"] for run in runs)
    assert total["cpu_hours"] == pytest.approx(sum(run["cpu_hours"] for run in runs), abs=0.01)
    assert (runs[-1]["steps"], runs[-1]["images_seen"]) == (card.training["steps"], card.training["images_seen"])
    beside = json.loads((pretrained.WEIGHTS_DIR / f"{name}.json").read_text())
    assert beside == {**card.to_dict(), "channels": beside["channels"], "config": beside["config"]}
