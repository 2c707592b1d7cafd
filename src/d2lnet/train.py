"""Training D2LNet: one file, top to bottom.

    d2lnet train configs/smoke.toml                                 # CPU, under a minute
    d2lnet train configs/s-color-blind.toml --set optim.steps=2000  # override any recipe value
    torchrun --nproc-per-node 4 -m d2lnet train configs/s-color-blind.toml   # DistributedDataParallel

The recipe is a TOML file with sections [model], [data], [val], [optim] and [run]
(see :class:`TrainConfig`; ``configs/`` has examples). The loss is the paper's
eq. (22); the optimiser is Adam with the paper's betas (Sec. 4.1), a linear
warm-up and a cosine decay. A run folder holds ``config.json``, ``log.jsonl``
(every logged step and validation), ``curves.png``, ``checkpoints/last.pt``
(written atomically; ``--resume`` continues from it exactly; Ctrl-C and SIGTERM stop the
run with a checkpoint) and, at the end,
``release.safetensors``: the EMA weights in fp16 with a model card.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from d2lnet import metrics
from d2lnet.atomic import atomic_write
from d2lnet.data import JPEGTrainSet, JPEGValidationSet, QualitySampler, StepSampler, list_images, split_holdout
from d2lnet.losses import D2LLoss
from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig, build
from d2lnet.pretrained import config_from_dict, load_model, model_card, save_release

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# --------------------------------------------------------------------------- the recipe


@dataclass
class ModelSection:
    name: str = "d2lnet-s"  # a named configuration of d2lnet.model.CONFIGS
    init_from: str = ""  # weights to start from (a release file or checkpoint): fine-tuning
    overrides: dict = field(default_factory=dict)  # any other key: a D2LNetConfig field


@dataclass
class DataSection:
    train: list[str] = field(default_factory=lambda: ["../shared/data/train"])
    gray: bool = False
    crop: int | list[int] = 256  # the paper's 256x256 patches (Sec. 4.1); a list: one size drawn per batch
    holdout: float = 0.0  # fraction of the images left out of training, to validate on (see [val] folder)
    quality: list[int] = field(default_factory=lambda: [10, 20, 30])  # the paper's QFs
    quality_range: list[int] = field(default_factory=list)  # [low, high]: blind training
    quality_choice_prob: float = 0.0  # with both: chance of drawing from `quality`
    rescale: list[float] = field(default_factory=list)  # [low, high] random scale, or none
    augment: bool = True
    cache: bool = True
    workers: int = 0


@dataclass
class ValSection:
    folder: str = ""  # a folder of ground-truth images; empty: the [data] holdout images (none: no validation)
    quality: list[int] = field(default_factory=lambda: [10])
    limit: int = 0  # at most this many images (0: all)
    crop: int = 0  # centre crop (0: whole images)
    every: int = 1000


@dataclass
class OptimSection:
    steps: int = 100_000
    batch_size: int = 8  # per process
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup_steps: int = 1000
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Sec. 4.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    alpha: float = 0.05  # eq. (22)
    ema: float = 0.999  # decay of the EMA weights; 0 disables
    qf_dropout: float = 0.1  # chance of hiding the QF from a blind model, so it also works without


@dataclass
class RunSection:
    seed: int = 0
    device: str = "auto"
    # "auto": bf16 autocast on CUDA, fp32 on the CPU; "bf16" also on the CPU (fast where it has
    # AMX or AVX512-BF16, slow where it does not); "fp32" everywhere. FFTs always stay fp32.
    precision: str = "auto"
    channels_last: bool = False
    threads: int = 0  # CPU threads (0: PyTorch's default)
    log_every: int = 50
    checkpoint_every: int = 1000
    max_minutes: float = 0.0  # stop (with a checkpoint) after this long; 0: no limit


@dataclass
class TrainConfig:
    name: str = "run"
    description: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    val: ValSection = field(default_factory=ValSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build and validate a recipe; unknown sections or keys are errors, not silently ignored."""
        values = copy.deepcopy(values)
        sections = {f.name: f.type for f in fields(cls)}
        unknown = set(values) - set(sections)
        if unknown:
            raise ValueError(f"unknown recipe key(s) {sorted(unknown)}; known: {sorted(sections)}")
        kwargs: dict = {k: values[k] for k in ("name", "description") if k in values}
        for name, section_cls in (("model", ModelSection), ("data", DataSection), ("val", ValSection), ("optim", OptimSection), ("run", RunSection)):
            given = values.get(name, {})
            known = {f.name for f in fields(section_cls)}
            if name == "model":  # any key that is not name/init_from overrides the architecture
                model_fields = {f.name for f in fields(D2LNetConfig)}
                extra = {k: given.pop(k) for k in list(given) if k not in known}
                bad = set(extra) - model_fields
                if bad:
                    raise ValueError(f"unknown [model] key(s) {sorted(bad)}; architecture fields: {sorted(model_fields)}")
                given["overrides"] = {**given.get("overrides", {}), **extra}
            bad = set(given) - known
            if bad:
                raise ValueError(f"unknown [{name}] key(s) {sorted(bad)}; known: {sorted(known)}")
            kwargs[name] = section_cls(**given)
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if self.model.name not in CONFIGS:
            raise ValueError(f"[model] name {self.model.name!r} is not one of {', '.join(CONFIGS)}")
        if any(c % 8 or c <= 0 for c in self.crops):
            raise ValueError(f"[data] crop must be positive multiples of 8, got {self.data.crop}")
        if len(self.data.quality_range) not in (0, 2) or len(self.data.rescale) not in (0, 2):
            raise ValueError("[data] quality_range and rescale take two numbers [low, high]")
        self.quality_sampler()  # checks the quality factors
        if self.optim.steps <= 0 or self.optim.batch_size <= 0:
            raise ValueError("[optim] steps and batch_size must be positive")
        if self.run.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"[run] precision must be auto, bf16 or fp32, got {self.run.precision!r}")
        if not 0 <= self.optim.ema < 1:
            raise ValueError(f"[optim] ema must be in [0, 1), got {self.optim.ema}")

    @property
    def crops(self) -> list[int]:
        return [self.data.crop] if isinstance(self.data.crop, int) else list(self.data.crop)

    def quality_sampler(self) -> QualitySampler:
        low, high = self.data.quality_range or (None, None)
        return QualitySampler(tuple(self.data.quality), low, high, self.data.quality_choice_prob)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_override(text: str) -> tuple[list[str], object]:
    """``"optim.lr=1e-4"`` -> (["optim", "lr"], 0.0001); values are TOML (strings may go unquoted)."""
    if "=" not in text:
        raise ValueError(f"--set takes KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML recipe and apply ``--set`` overrides."""
    with open(path, "rb") as f:
        values = tomllib.load(f)
    for text in overrides:
        keys, value = parse_override(text)
        target = values
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        target[keys[-1]] = value
    values.setdefault("name", Path(path).stem)
    return TrainConfig.from_dict(values)


# --------------------------------------------------------------------------- helpers


def lr_at(step: int, optim: OptimSection) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to a temporary file, flush it to disk, then rename it over ``path``:
    an interrupted write never damages the previous checkpoint."""
    with atomic_write(path, durable=True) as f:
        torch.save(state, f)


def rng_states() -> dict:
    """Every global RNG's state, as tensors and plain Python values (loadable with weights_only=True)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@torch.no_grad()
def update_ema(ema: D2LNet, model: D2LNet, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


@torch.no_grad()
def validate(model: D2LNet, dataset: JPEGValidationSet, device: torch.device) -> dict:
    """Mean PSNR, SSIM and PSNR-B of ``model`` (and PSNR of the JPEG input) on ``dataset``,
    overall and per quality factor."""
    model.eval()
    rows = []
    for item in dataset:
        lq = item["lq"][None].to(device)
        out = model(lq, item["qf"]).out2.clamp(0, 1)
        to_u8 = lambda t: t[0].mul(255).round().byte().permute(1, 2, 0).squeeze(-1).cpu().numpy()  # noqa: E731
        restored, gt, jpg = to_u8(out), to_u8(item["gt"][None]), to_u8(item["lq"][None])
        rows.append((item["qf"], metrics.psnr(gt, restored), metrics.ssim(gt, restored), metrics.psnrb(gt, restored), metrics.psnr(gt, jpg)))
    model.train()
    table = np.array(rows, dtype=np.float64)
    summary = {"psnr": table[:, 1].mean(), "ssim": table[:, 2].mean(), "psnrb": table[:, 3].mean(), "psnr_jpeg": table[:, 4].mean()}
    for qf in sorted(set(table[:, 0].astype(int))):
        sel = table[table[:, 0] == qf]
        summary[f"q{qf}"] = {"psnr": sel[:, 1].mean(), "ssim": sel[:, 2].mean(), "psnrb": sel[:, 3].mean(), "psnr_jpeg": sel[:, 4].mean()}
    return json.loads(json.dumps(summary, default=float))


def plot_log(log_path: str | Path, png_path: str | Path) -> bool:
    """Plot the training loss and the validation PSNR from a ``log.jsonl``; False without matplotlib."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global figure state
    except ImportError:
        return False
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val"]["psnr"], r["val"]["psnr_jpeg"]) for r in records if "val" in r]
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    axes = fig.subplots(1, 2)
    if train:
        steps, losses = zip(*train)
        axes[0].plot(steps, losses, lw=0.8)
        axes[0].set(xlabel="step", ylabel="loss (eq. 22)", yscale="log", title="training loss")
    if val:
        steps, psnr, psnr_jpeg = zip(*val)
        axes[1].plot(steps, psnr, marker="o", label="restored")
        axes[1].plot(steps, psnr_jpeg, ls="--", label="JPEG input")
        axes[1].set(xlabel="step", ylabel="PSNR (dB)", title="validation")
        axes[1].legend()
    fig.savefig(png_path, dpi=100)
    return True


def training_budget(config: TrainConfig, step: int, world: int, minutes: float, device: torch.device) -> dict:
    """This run's budget, and the cumulative one when it fine-tunes a release that recorded its own."""
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    samples = step * config.optim.batch_size * world
    budget = {
        "steps": step, "batch_size": config.optim.batch_size * world, "crop": config.data.crop, "images_seen": samples,
        "minutes": round(minutes, 1), "cpu_hours": round(minutes * threads * world / 60, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }  # fmt: skip
    before: dict = {}
    if config.model.init_from:
        previous = model_card(config.model.init_from).get("training", {})
        # A card without a cumulative record started from scratch: its own budget is the total (the
        # first bundled models, which predate cpu_hours, ran on one CPU thread each).
        before = previous.get("cumulative") or {
            "steps": previous.get("steps", 0), "images_seen": previous.get("images_seen", 0),
            "cpu_hours": previous.get("cpu_hours", round(previous.get("minutes", 0) / 60, 2)),
            "runs": [{"crop": previous.get("crop"), "steps": previous.get("steps", 0)}] if previous else [],
        }  # fmt: skip
    budget["cumulative"] = {
        "steps": before.get("steps", 0) + step,
        "images_seen": before.get("images_seen", 0) + samples,
        "cpu_hours": round(before.get("cpu_hours", 0) + budget["cpu_hours"], 2),
        "runs": [*before.get("runs", []), {"crop": config.data.crop, "steps": step}],
    }
    return budget


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device; joins the process group when run under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# --------------------------------------------------------------------------- the training loop


def train(config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None) -> dict:
    """Train from ``config`` into ``out_dir``; returns the last validation summary (or {})."""
    out_dir = Path(out_dir)
    rank, world, device = setup_distributed(config.run.device)
    main_process = rank == 0
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    torch.manual_seed(config.run.seed)
    np.random.seed(config.run.seed)
    random.seed(config.run.seed)
    opt = config.optim

    # Model, EMA copy, optimiser, loss.
    if config.model.init_from:
        model = load_model(config.model.init_from).train()
    else:
        gray_channels = {"in_channels": 1 if config.data.gray else 3}
        model = build(config.model.name, **{**gray_channels, **config.model.overrides})
    if model.config.in_channels != (1 if config.data.gray else 3):
        raise ValueError(f"the model has {model.config.in_channels} channel(s) but data.gray = {config.data.gray}")
    model.to(device)
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    ema = copy.deepcopy(model).requires_grad_(False) if opt.ema > 0 else None
    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=tuple(opt.betas), weight_decay=opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, opt) / opt.lr)
    criterion = D2LLoss(opt.alpha, model.config.fft_norm)
    use_bf16 = config.run.precision == "bf16" or (config.run.precision == "auto" and device.type == "cuda")

    # Resume: weights, optimiser, schedule, step and RNG states.
    step, elapsed, ckpt_path = 0, 0.0, out_dir / "checkpoints" / "last.pt"
    if resume:
        resume_path = ckpt_path if str(resume) == "auto" else Path(resume)
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if config_from_dict(state["config"]) != model.config:
            raise ValueError(f"{resume_path} holds a different architecture than this recipe")
        model.load_state_dict(state["model"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
        step, elapsed = state["step"], state.get("elapsed", 0.0)
    net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) if world > 1 else model

    # Data: samples are a function of (seed, index), so the sampler just restarts at `step`.
    dataset = JPEGTrainSet(
        config.data.train, config.crops, config.quality_sampler(), config.data.gray,
        tuple(config.data.rescale) or None, config.data.augment, config.run.seed, config.data.cache,
        config.data.holdout, opt.batch_size,
    )  # fmt: skip
    sampler = StepSampler(opt.batch_size, step, opt.steps, rank, world)
    loader = DataLoader(
        dataset, batch_size=opt.batch_size, sampler=sampler, num_workers=config.data.workers,
        pin_memory=device.type == "cuda", persistent_workers=config.data.workers > 0,
    )  # fmt: skip
    val_set = None
    val_source = config.val.folder or split_holdout(list_images(config.data.train), config.data.holdout)[1]
    if main_process and val_source:
        val_set = JPEGValidationSet(val_source, config.val.quality, config.data.gray, config.val.limit or None, config.val.crop or None)

    # Feedback: progress bar, JSONL log, optional TensorBoard.
    writer = None
    if main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass  # TensorBoard is an optional extra
    log = open(out_dir / "log.jsonl", "a") if main_process else None
    bar = tqdm(total=opt.steps, initial=step, desc=config.name, disable=not main_process, dynamic_ncols=True)
    last_val: dict = {}

    def checkpoint() -> None:
        if main_process:
            save_checkpoint({
                "config": model.config.to_dict(), "train_config": config.to_dict(), "step": step,
                "elapsed": elapsed + time.monotonic() - start, "samples_seen": step * opt.batch_size * world,
                "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states(),
            }, ckpt_path)  # fmt: skip

    def write_log(record: dict) -> None:
        log.write(json.dumps(record) + "\n")
        log.flush()

    def stop_on_sigterm(signum, frame) -> None:  # a scheduler's pre-emption: stop as Ctrl-C does
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # where signals can be handled
    previous_handler = signal.signal(signal.SIGTERM, stop_on_sigterm) if in_main_thread else None
    start = time.monotonic()
    window_start, window_samples = start, 0
    stop_reason = "finished"
    model.train()
    try:
        for batch in loader:
            lq = batch["lq"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            gt = batch["gt"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            qf = batch["qf"].to(device=device, dtype=torch.float32)
            # Hide the quality from a blind model now and then (0 = unknown), drawn from (seed, step).
            hide = torch.rand(len(qf), generator=torch.Generator().manual_seed(config.run.seed * 1_000_003 + step))
            qf_in = torch.where(hide.to(device) < opt.qf_dropout, torch.zeros_like(qf), qf)

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = net(lq, qf_in)
            loss = criterion(out.out1.float(), out.out2.float(), gt)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip if opt.grad_clip > 0 else float("inf"))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                update_ema(ema, model, min(opt.ema, (1 + step) / (10 + step)))
            step += 1
            window_samples += len(lq) * world

            if main_process:
                bar.update(1)
                if step % config.run.log_every == 0 or step == opt.steps:
                    now = time.monotonic()
                    record = {
                        "step": step, "loss": loss.total.item(), "spatial": loss.spatial.item(),
                        "amplitude": loss.amplitude.item(), "phase": loss.phase.item(),
                        "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                        "samples_per_s": window_samples / max(now - window_start, 1e-9),
                        "elapsed_s": elapsed + now - start,
                    }  # fmt: skip
                    window_start, window_samples = now, 0
                    write_log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    if writer is not None:
                        for key in ("loss", "spatial", "amplitude", "phase", "lr", "samples_per_s"):
                            writer.add_scalar(f"train/{key}", record[key], step)
                if val_set is not None and (step % config.val.every == 0 or step == opt.steps):
                    last_val = validate(ema if ema is not None else model, val_set, device)
                    write_log({"step": step, "val": last_val})
                    bar.write(f"step {step}: val PSNR {last_val['psnr']:.2f} dB (JPEG {last_val['psnr_jpeg']:.2f}), SSIM {last_val['ssim']:.4f}, PSNR-B {last_val['psnrb']:.2f}")
                    if writer is not None:
                        for key in ("psnr", "ssim", "psnrb"):
                            writer.add_scalar(f"val/{key}", last_val[key], step)
                    plot_log(out_dir / "log.jsonl", out_dir / "curves.png")
            if step % config.run.checkpoint_every == 0:
                checkpoint()
            if config.run.max_minutes and time.monotonic() - start > 60 * config.run.max_minutes:
                stop_reason = f"time budget of {config.run.max_minutes} min reached"
                break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        bar.close()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)

    checkpoint()
    if main_process:
        minutes = (elapsed + time.monotonic() - start) / 60
        print(f"{config.name}: {stop_reason} at step {step} ({minutes:.1f} min); checkpoint {ckpt_path}", file=sys.stderr)
        card = {
            "name": config.name, "summary": config.description, "channels": model.config.in_channels,
            "quality_range": config.data.quality_range or config.data.quality, "training_data": config.data.train,
            "training": training_budget(config, step, world, minutes, device),
            "scores": {"validation": last_val, "validation_set": config.val.folder or f"{config.data.holdout:.0%} of the training images, held out"} if last_val else {},
            # Models trained on crops score best when run on tiles of that size (README, "Whole image or tiles?").
            "inference": {"tile": max(config.crops)},
        }  # fmt: skip
        save_release(ema if ema is not None else model, out_dir / "release.safetensors", card)
        plot_log(out_dir / "log.jsonl", out_dir / "curves.png")
        log.close()
        if writer is not None:
            writer.close()
    if world > 1:
        dist.destroy_process_group()
    return last_val


def run_cli(args) -> int:
    """``d2lnet train CONFIG [--resume CHECKPOINT|auto] [--set key=value ...] [--out DIR]``."""
    try:
        config = load_recipe(args.config, args.set)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out or Path("runs") / config.name)
    train(config, out_dir, args.resume)
    return 0
