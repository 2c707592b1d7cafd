"""The trainer: the smoke recipe learns, resuming is exact, checkpoints survive interrupted writes,
recipes validate, releases load."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d2lnet.data import JPEGTrainSet, QualitySampler
from d2lnet.losses import D2LLoss
from d2lnet.model import build
from d2lnet.pretrained import load_model, model_card
from d2lnet.train import TrainConfig, load_recipe, parse_override, save_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Eight 96x96 crops of real training images (smooth areas, edges and texture)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(8):
        y, x = np.mgrid[0:96, 0:96]
        image = np.stack([128 + 100 * np.sin((x + 7 * i) / (4 + i)), 128 + 100 * np.cos(y / 6), (x // 12 + y // 12) % 2 * 200], -1)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def _recipe(image_folder: Path, **optim) -> TrainConfig:
    return load_recipe(
        REPO / "configs" / "smoke.toml",
        [f'data.train=["{image_folder}"]', 'val.folder=""', "data.cache=true", "run.threads=1"]
        + [f"optim.{k}={v}" for k, v in optim.items()],
    )


def test_smoke_recipe_lowers_the_loss(image_folder, tmp_path):
    config = _recipe(image_folder, steps=40)
    fixed = JPEGTrainSet([image_folder], 64, QualitySampler(choices=(10,)), seed=99)
    batch = [fixed[i] for i in range(8)]
    lq, gt = torch.stack([b["lq"] for b in batch]), torch.stack([b["gt"] for b in batch])

    def loss_of(model) -> float:
        with torch.no_grad():
            out = model.eval()(lq, 10)
        return D2LLoss()(out.out1, out.out2, gt).spatial.item()

    before = loss_of(build("d2lnet-xs"))  # the identity map: the JPEG input's own error
    train(config, tmp_path / "run")
    after = loss_of(load_model(tmp_path / "run" / "checkpoints" / "last.pt"))
    assert after < 0.97 * before
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 40 and all("lr" in r and "loss" in r for r in records)
    assert (tmp_path / "run" / "release.safetensors").is_file()


def test_resumed_run_ends_with_the_same_weights(image_folder, tmp_path, monkeypatch):
    config = _recipe(image_folder, steps=6, warmup_steps=2)
    config.run.checkpoint_every = 100
    train(config, tmp_path / "straight")

    # Interrupt the second run just before its 4th update, as Ctrl-C would: it checkpoints step 3.
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def interrupting_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupting_step)
    train(config, tmp_path / "resumed")
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    train(config, tmp_path / "resumed", resume="auto")

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.ones(3)}, path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        save_checkpoint({"step": 2, "weights": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = torch.load(path, weights_only=True)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_recipe_reads_and_validates(recipe):
    config = load_recipe(recipe)
    assert config.optim.steps > 0 and config.model.name.startswith("d2lnet")
    build(config.model.name, in_channels=1 if config.data.gray else 3, **config.model.overrides)


def test_recipe_errors_and_overrides(tmp_path):
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("data.quality=[10, 20]") == (["data", "quality"], [10, 20])
    assert parse_override("model.name=d2lnet-s") == (["model", "name"], "d2lnet-s")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"optim": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"model": {"name": "d2lnet-xs", "widht": 8}})
    with pytest.raises(ValueError):
        TrainConfig.from_dict({"data": {"quality": [0]}})
    config = TrainConfig.from_dict({"model": {"name": "d2lnet-xs", "width": 12}})
    assert config.model.overrides == {"width": 12}


def test_release_is_fp16_with_a_card(image_folder, tmp_path):
    config = _recipe(image_folder, steps=2)
    train(config, tmp_path / "run")
    release = tmp_path / "run" / "release.safetensors"
    card = model_card(release)
    assert card["training"]["steps"] == 2 and card["config"]["width"] == 8
    assert card["inference"]["tile"] == config.data.crop  # restore's tile=auto runs it on training-sized tiles
    from safetensors import safe_open

    with safe_open(str(release), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    assert json.loads(release.with_suffix(".json").read_text())["name"] == "smoke"
    model = load_model(release)
    assert model.config.width == 8 and not model.training


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_torchrun_two_processes(image_folder, tmp_path):
    """DistributedDataParallel on the CPU (gloo): two ranks train and rank 0 writes the run."""
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "d2lnet", "train",
        str(REPO / "configs" / "smoke.toml"), "--out", str(tmp_path / "ddp"),
        "--set", f'data.train=["{image_folder}"]', "--set", 'val.folder=""', "--set", "optim.steps=3",
        "--set", "run.threads=1", "--set", "optim.batch_size=2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    card = model_card(tmp_path / "ddp" / "release.safetensors")
    assert card["training"]["batch_size"] == 4 and card["training"]["steps"] == 3


def test_sigterm_stops_with_a_checkpoint(image_folder, tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C) ends the run cleanly, checkpointing the step it reached."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "d2lnet", "train", str(REPO / "configs" / "smoke.toml"), "--out", str(out),
        "--set", f'data.train=["{image_folder}"]', "--set", 'val.folder=""', "--set", "optim.steps=100000",
        "--set", "run.log_every=1", "--set", "run.checkpoint_every=100000", "--set", "run.threads=1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "interrupted at step" in stderr
    step = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"]
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert step >= 3 and last_logged <= step <= last_logged + 1  # the signal may land between update and log
