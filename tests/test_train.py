"""The trainer: the smoke recipe learns, resuming is exact, checkpoints survive interrupted writes,
recipes validate, releases load."""

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from d2lnet import winograd
from d2lnet.checkpoint import Checkpoint
from d2lnet.data import Degradations, JPEGTrainSet, QualitySampler
from d2lnet.losses import D2LLoss
from d2lnet.model import build
from d2lnet.pretrained import load_model, model_card
from d2lnet.train import TrainConfig, TrainingInterrupted, load_recipe, parse_override, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Eight 96x96 crops of real training images (smooth areas, edges and texture)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(8):
        y, x = np.mgrid[0:96, 0:96]
        image = np.stack(
            [128 + 100 * np.sin((x + 7 * i) / (4 + i)), 128 + 100 * np.cos(y / 6), (x // 12 + y // 12) % 2 * 200], -1
        )
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def _recipe(image_folder: Path, **optim) -> TrainConfig:
    return load_recipe(
        REPO / "configs" / "smoke.toml",
        [f'data.train=["{image_folder}"]', 'val.folder=""', "data.holdout=0", "data.cache=true", "run.threads=1"]
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


@pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch has no NNPACK")
def test_the_trainer_routes_3x3_convolutions_through_winograd_where_it_pays(
    image_folder, tmp_path, winograd_everywhere, monkeypatch
):
    """In float32 NCHW on one thread of an AVX2 CPU (here: wherever it may run) the training step's
    3x3 convolutions go through d2lnet.winograd.Conv3x3."""
    calls = []
    apply = winograd.Conv3x3.apply
    monkeypatch.setattr(winograd.Conv3x3, "apply", lambda *args: calls.append(args[0].shape) or apply(*args))
    config = _recipe(image_folder, steps=2)
    config.run.channels_last, config.run.precision = False, "fp32"
    train(config, tmp_path / "run")
    assert len(calls) > 20 and all(shape[0] == config.optim.batch_size for shape in calls)


def test_resumed_run_ends_with_the_same_weights(image_folder, tmp_path, monkeypatch):
    config = _recipe(image_folder, steps=6, warmup_steps=2)
    config.run.checkpoint_every = 100
    train(config, tmp_path / "straight")

    # Ctrl-C during the second run's 3rd update: the step under way finishes, then it checkpoints step 3.
    real_step, calls = torch.optim.Adam.step, {"n": 0}

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, tmp_path / "resumed")
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert stopped.value.exit_status == 130
    assert Checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt").step == 3
    assert not (tmp_path / "resumed" / "release.safetensors").exists()  # not a finished model
    train(config, tmp_path / "resumed", resume="auto")

    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    model = build("d2lnet-xs")
    Checkpoint(model.config, {"w": torch.ones(3)}, step=1).save(path)

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        Checkpoint(model.config, {"w": torch.zeros(3)}, step=2).save(path)
    monkeypatch.undo()
    state = Checkpoint.load(path)
    assert state.step == 1 and torch.equal(state.model["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_recipe_reads_and_validates(recipe, monkeypatch):
    monkeypatch.setenv("D2LNET_DATA", "/data")
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
    with pytest.raises(ValueError, match="share"):
        TrainConfig.from_dict({"data": {"double_compression": 2}})
    with pytest.raises(ValueError, match="jpeg_sources"):
        TrainConfig.from_dict({"data": {"jpeg_sources": "shrink"}})
    assert TrainConfig.from_dict({}).run.channels_last == "auto"
    assert TrainConfig.from_dict({"run": {"channels_last": False}}).run.channels_last is False
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.from_dict({"run": {"channels_last": "yes"}})
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig.from_dict({"run": {"channels_last": 1}})
    varied = TrainConfig.from_dict({"data": {"double_compression": 0.1, "other_subsampling": 0.2, "other_tables": 0.3}})
    assert varied.degradations() == Degradations(double=0.1, subsampling=0.2, tables=0.3)


def test_release_is_fp16_with_a_card(image_folder, tmp_path):
    config = _recipe(image_folder, steps=2)
    train(config, tmp_path / "run")
    release = tmp_path / "run" / "release.safetensors"
    card = model_card(release)
    assert card.training["steps"] == 2 and card.config["width"] == 8
    assert card.tile == config.data.crop  # restore's tile=auto runs it on training-sized tiles
    from safetensors import safe_open

    with safe_open(str(release), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())  # noqa: SIM118 (a file, not a dict)
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
        "--set", f'data.train=["{image_folder}"]', "--set", 'val.folder=""', "--set", "data.holdout=0", "--set", "optim.steps=3",
        "--set", "run.threads=1", "--set", "optim.batch_size=2",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    card = model_card(tmp_path / "ddp" / "release.safetensors")
    assert card.training["batch_size"] == 4 and card.training["steps"] == 3


def test_sigterm_stops_with_a_checkpoint(image_folder, tmp_path):
    """A scheduler's SIGTERM (or Ctrl-C) ends the run cleanly, checkpointing the step it reached."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "d2lnet", "train", str(REPO / "configs" / "smoke.toml"), "--out", str(out),
        "--set", f'data.train=["{image_folder}"]', "--set", 'val.folder=""', "--set", "data.holdout=0", "--set", "optim.steps=100000",
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
    assert process.returncode == 143, stderr[-2000:]  # 128 + SIGTERM: a scheduler sees that the run did not finish
    assert "d2lnet train: error: stopped by SIGTERM at step" in stderr and "Traceback" not in stderr
    step = Checkpoint.load(out / "checkpoints" / "last.pt").step
    last_logged = json.loads(log.read_text().splitlines()[-1])["step"]
    assert step >= 3 and last_logged <= step <= last_logged + 1  # the signal may land between update and log
    assert not (out / "release.safetensors").exists() and not (out / "release.json").exists()


# --------------------------------------------------------------------------- a run folder is never destroyed


def _cli(capsys, *argv) -> tuple[int, list[str]]:
    from d2lnet.cli import main

    rc = main(["train", *map(str, argv)])
    return rc, capsys.readouterr().err.splitlines()


def _smoke_args(image_folder: Path, out: Path, steps: int = 2) -> list[str]:
    return [REPO / "configs" / "smoke.toml", "--out", out, "--set", f'data.train=["{image_folder}"]', "--set", "data.holdout=0",
            "--set", 'val.folder=""', "--set", f"optim.steps={steps}", "--set", "run.threads=1"]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_into_the_same_folder_is_refused(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, *_smoke_args(image_folder, out))[0] == 0
    before = _snapshot(out)
    rc, err = _cli(capsys, *_smoke_args(image_folder, out, steps=3))
    assert rc == 2 and len(err) == 1 and err[0].startswith("d2lnet train: error:") and "--resume auto" in err[0]
    assert _snapshot(out) == before  # the first run's checkpoint, config, log and release untouched


def test_resume_auto_starts_a_fresh_run_and_then_continues_it(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(capsys, *_smoke_args(image_folder, out, steps=2), "--resume", "auto")[0] == 0  # first start
    assert Checkpoint.load(out / "checkpoints" / "last.pt").step == 2
    assert _cli(capsys, *_smoke_args(image_folder, out, steps=3), "--resume", "auto")[0] == 0  # the requeue
    assert Checkpoint.load(out / "checkpoints" / "last.pt").step == 3
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == sorted(steps) and steps[-1] == 3


def test_bad_checkpoints_are_one_line_errors(image_folder, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    other = build("d2lnet-xs", width=12)
    Checkpoint(other.config, other.state_dict(), step=1, optimizer={}, scheduler={}, rng={}).save(tmp_path / "wide.pt")
    cases = [
        ("notes.txt", 1, "not a d2lnet checkpoint"),
        ("missing.pt", 1, "no checkpoint at"),
        ("wide.pt", 2, "different architecture"),
    ]
    for name, status, reason in cases:
        rc, err = _cli(capsys, *_smoke_args(image_folder, tmp_path / f"run-{name}"), "--resume", tmp_path / name)
        assert rc == status and len(err) == 1 and reason in err[0] and err[0].startswith("d2lnet train: error:"), err


def test_bad_data_folders_are_one_line_errors(image_folder, tmp_path, capsys):
    empty, corrupt = tmp_path / "empty", tmp_path / "corrupt"
    empty.mkdir()
    corrupt.mkdir()
    (corrupt / "a.png").write_bytes(b"not a png")
    (corrupt / "b.jpg").write_bytes(b"")
    cases = [
        ([f'data.train=["{tmp_path / "missing"}"]'], "image folder not found"),
        ([f'data.train=["{empty}"]'], "no image files"),
        ([f'data.train=["{corrupt}"]'], "none of its 2 image files"),
        ([f'val.folder="{tmp_path / "missing"}"'], "val.folder"),
        ([f'val.folder="{empty}"'], "no image files"),
        (["optim.steps=abc"], "optim.steps must be a whole number, got 'abc'"),
        (["run.device=bogus"], "unknown device 'bogus'"),
    ]
    for i, (sets, reason) in enumerate(cases):
        args = _smoke_args(image_folder, tmp_path / f"run{i}")
        rc, err = _cli(capsys, *args, *(x for s in sets for x in ("--set", s)))
        errors = [line for line in err if not line.startswith("warning: skipping")]  # unreadable files are named
        assert rc == 2 and len(errors) == 1 and reason in errors[0] and errors[0].startswith("d2lnet train: error:"), (sets, err)
        assert not (tmp_path / f"run{i}").exists()
    rc, err = _cli(capsys, tmp_path / "no-recipe.toml")
    assert rc == 2 and len(err) == 1 and "cannot read the recipe" in err[0]


def test_recipe_paths_are_relative_to_the_recipe_and_set_paths_to_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.toml"
    recipe.write_text('[data]\ntrain = ["images", "~/more", "$EXTRA_IMAGES/x"]\n[val]\nfolder = "../val"\n')
    monkeypatch.setenv("EXTRA_IMAGES", "/mnt/extra")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load_recipe(recipe)
    assert config.data.train == [str(tmp_path / "recipes" / "images"), str(tmp_path / "home" / "more"), "/mnt/extra/x"]
    assert config.val.folder == str(tmp_path / "val")
    monkeypatch.chdir(tmp_path / "recipes")
    config = load_recipe(recipe, ['val.folder="v"', "model.init_from=d2lnet-s-color"])
    assert config.val.folder == str(tmp_path / "recipes" / "v") and config.model.init_from == "d2lnet-s-color"
    monkeypatch.delenv("D2LNET_DATA", raising=False)
    recipe.write_text("[optim]\nsteps = 5\n")  # the default data: $D2LNET_DATA/train
    with pytest.raises(ValueError, match="D2LNET_DATA is not set"):
        load_recipe(recipe)
    monkeypatch.setenv("D2LNET_DATA", str(tmp_path / "data"))
    assert load_recipe(recipe).data.train == [str(tmp_path / "data" / "train")]


def test_validation_scores_are_those_of_d2lnet_eval(image_folder, tmp_path, capsys):
    """The log's validation PSNR is the evaluation protocol's: ``d2lnet eval`` of the run's
    checkpoint (its EMA weights) on the same images gives the same numbers."""
    out = tmp_path / "run"
    args = _smoke_args(image_folder, out, steps=3)
    args[args.index('val.folder=""')] = f'val.folder="{image_folder}"'
    assert _cli(capsys, *args, "--set", "val.limit=2", "--set", "val.quality=[10, 30]", "--set", "val.every=3")[0] == 0
    logged = [json.loads(line)["val"] for line in (out / "log.jsonl").read_text().splitlines() if '"val"' in line][-1]
    two = tmp_path / "two"
    two.mkdir()
    for name in sorted(p.name for p in image_folder.iterdir())[:2]:
        shutil.copy(image_folder / name, two / name)
    from d2lnet.cli import main

    argv = ["eval", "--model", str(out / "checkpoints" / "last.pt"), "jpeg", "--data", str(two), "--quality", "10", "30",
            "--tile", "0", "--json", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    means = json.loads((tmp_path / "eval.json").read_text())["means"]
    for quality in (10, 30):
        model = next(m for m in means if m["quality"] == quality and m["method"] == "last")
        jpeg = next(m for m in means if m["quality"] == quality and m["method"] == "JPEG")
        assert logged[f"q{quality}"]["psnr"] == pytest.approx(model["psnr"], abs=1e-5)
        assert logged[f"q{quality}"]["ssim"] == pytest.approx(model["ssim"], abs=1e-5)
        assert logged[f"q{quality}"]["psnr_jpeg"] == pytest.approx(jpeg["psnr"], abs=1e-5)


def test_a_run_cut_by_its_time_budget_validates_what_it_releases(image_folder, tmp_path, capsys):
    """The release of a run stopped by ``run.max_minutes`` is scored at its own step, not at the
    last ``val.every``: the log ends with that validation (timed) and the card holds it."""
    out = tmp_path / "run"
    args = _smoke_args(image_folder, out, steps=1000)
    args[args.index('val.folder=""')] = f'val.folder="{image_folder}"'
    argv = [*args, "--set", "val.limit=1", "--set", "val.every=1000", "--set", "run.max_minutes=1e-6"]
    assert _cli(capsys, *argv)[0] == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val" in r]
    step = Checkpoint.load(out / "checkpoints" / "last.pt").step
    assert step < 1000 and len(vals) == 1 and vals[0]["step"] == step and vals[0]["elapsed_s"] > 0
    card = json.loads((out / "release.json").read_text())
    assert card["scores"]["validation"]["psnr"] == pytest.approx(vals[0]["val"]["psnr"])


def test_progress_lines_when_stderr_is_not_a_terminal(image_folder, tmp_path, capsys, monkeypatch):
    import d2lnet.progress

    monkeypatch.setattr(d2lnet.progress, "PLAIN_EVERY_S", 0.0)
    from d2lnet.cli import main

    assert main(["train", *map(str, _smoke_args(image_folder, tmp_path / "run", steps=3))]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err  # no progress bar, whose carriage returns make one unreadable line of a log
    lines = [line for line in err.splitlines() if line.startswith("smoke: ") and " steps" in line]
    assert lines[0].startswith("smoke: 1/3 steps (33%)") and lines[-1].startswith("smoke: 3/3 steps (100%)")


def test_adam_steps_as_the_textbook_update():
    """The trainer's Adam (fused where PyTorch has a kernel for the device) against two steps of
    Kingma & Ba's update with L2 weight decay, computed by hand in float64."""
    from d2lnet.train import adam

    p0, grads = np.array([0.5, -1.0, 2.0]), [np.array([0.1, -0.3, 0.02]), np.array([-0.2, 0.05, 0.4])]
    lr, (b1, b2), eps, wd = 0.01, (0.9, 0.99), 1e-8, 0.1
    param = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    optimizer = adam([param], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    if torch.__version__ >= "2.4":
        assert optimizer.defaults["fused"], "PyTorch 2.4+ has a fused Adam for the CPU"
    p, m, v = p0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(grads, start=1):
        param.grad = torch.tensor(g, dtype=torch.float32)
        optimizer.step()
        g = g + wd * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    np.testing.assert_allclose(param.detach().numpy(), p, rtol=1e-6)


def test_a_fine_tune_adds_its_budget_to_the_release_it_started_from(tmp_path, monkeypatch):
    """The cumulative record a card carries across sessions: 2 runs before (hand-summed
    totals), plus this one's 30 steps of batch 2 on 3 threads for 20 minutes (1.0 CPU hour)."""
    from d2lnet.pretrained import ModelCard, save_release
    from d2lnet.train import RunClock, training_budget

    runs = [{"recipe": "a", "steps": 100, "images_seen": 400, "cpu_hours": 1.5},
            {"recipe": "b", "steps": 50, "images_seen": 100, "cpu_hours": 0.25}]  # fmt: skip
    before = {"steps": 150, "images_seen": 500, "cpu_hours": 1.75, "runs": runs}
    card = ModelCard("previous", training={"steps": 50, "cumulative": before})
    previous = save_release(build("d2lnet-xs"), tmp_path / "previous.safetensors", card)
    config = TrainConfig.from_dict({"name": "c", "data": {"train": ["x"], "crop": 64}, "optim": {"batch_size": 2},
                                    "model": {"name": "d2lnet-xs", "init_from": str(previous)}})  # fmt: skip
    monkeypatch.setattr(time, "monotonic", lambda: 1300.0)
    clock = RunClock(wall_before=0.0, cpu_before=0.0, rate=3, start=100.0)  # 20 minutes on 3 threads
    budget = training_budget(config, step=30, world=1, clock=clock, device=torch.device("cpu"))
    assert (budget["steps"], budget["images_seen"], budget["cpu_hours"]) == (30, 60, 1.0)
    total = budget["cumulative"]
    assert (total["steps"], total["images_seen"], total["cpu_hours"]) == (180, 560, 2.75)
    assert total["runs"] == [*runs, {"recipe": "c", "crop": 64, "steps": 30, "images_seen": 60, "cpu_hours": 1.0}]
    # A card without a cumulative record started from scratch: its own budget is the total.
    first = save_release(build("d2lnet-xs"), tmp_path / "first.safetensors",
                         ModelCard("first", training={"steps": 40, "images_seen": 160, "minutes": 90.0, "crop": 96}))  # fmt: skip
    config.model.init_from = str(first)
    total = training_budget(config, step=30, world=1, clock=clock, device=torch.device("cpu"))["cumulative"]
    assert (total["steps"], total["images_seen"], total["cpu_hours"]) == (70, 220, 2.5)
    assert total["runs"][0] == {"recipe": None, "crop": 96, "steps": 40, "images_seen": 160, "cpu_hours": 1.5}


def test_cpu_hours_count_each_session_at_its_own_thread_count(tmp_path, monkeypatch):
    """10 minutes on one thread, then 5 on two: 20 CPU-thread minutes, not 15 x 2. A checkpoint
    keeps the count; one written before it was recorded counts its time at the new rate."""
    from d2lnet.train import RunClock

    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    first = RunClock(wall_before=0.0, cpu_before=0.0, rate=1, start=0.0)
    now[0] = 600.0
    saved = Checkpoint(build("d2lnet-xs").config, {}, elapsed=first.elapsed(), cpu_seconds=first.cpu_seconds())
    saved.save(tmp_path / "last.pt")
    loaded = Checkpoint.load(tmp_path / "last.pt")
    assert (loaded.elapsed, loaded.cpu_seconds) == (600.0, 600.0)
    second = RunClock(loaded.elapsed, loaded.cpu_seconds, rate=2, start=600.0)
    now[0] = 900.0
    assert (second.elapsed(), second.cpu_seconds()) == (900.0, 1200.0)
    assert RunClock(600.0, None, rate=2, start=600.0).cpu_seconds() == 1800.0
    torch.save({"config": loaded.config.to_dict(), "model": {}}, tmp_path / "old.pt")
    assert Checkpoint.load(tmp_path / "old.pt").cpu_seconds is None
