"""Training D2LNet: a recipe in, a run folder out.

    d2lnet train configs/smoke.toml                                 # CPU, under a minute
    d2lnet train configs/s-color-blind.toml --set optim.steps=2000  # override any recipe value
    d2lnet train configs/s-color-blind.toml --out runs/c --resume auto   # first start and every requeue
    torchrun --nproc-per-node 4 -m d2lnet train configs/s-color-blind.toml   # DistributedDataParallel

:func:`train` reads top to bottom as a training step does: recipe -> data -> model -> loss ->
optimiser -> checkpoint. The recipe is a TOML file with sections [model], [data], [val],
[optim] and [run] (:class:`TrainConfig`; ``configs/`` has examples). The loss is the paper's
eq. (22); the optimiser is Adam with the paper's betas (Sec. 4.1), a linear warm-up and a
cosine decay. Validation scores the EMA weights with the evaluation protocol
(:mod:`d2lnet.evaluation.protocol`), so its numbers are those ``d2lnet eval`` gives.

Paths in a recipe file are relative to the recipe's folder; paths given with ``--set`` are
relative to the working directory; both may use ``~`` and environment variables. The default
training data is ``$D2LNET_DATA/train``.

The run folder holds ``config.json`` (the resolved recipe), ``log.jsonl`` (every logged step
and validation), ``curves.png``, ``checkpoints/last.pt`` (:mod:`d2lnet.checkpoint`) and, when
the run ends (all its steps, or ``run.max_minutes``), ``release.safetensors``: the EMA weights in
fp16 with a model card. A folder that holds a run is never started over: continue it with
``--resume auto`` (which starts a fresh run in a folder without one) or choose another ``--out``.
Ctrl-C or SIGTERM (a scheduler's pre-emption) ends the step under way, writes the checkpoint
and exits with status 130 or 143, without a release: the run is not finished.
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
import types
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from d2lnet.checkpoint import Checkpoint, rng_states, set_rng_states
from d2lnet.data import JPEG_SOURCES, Degradations, JPEGTrainSet, QualitySampler, StepSampler, split_holdout
from d2lnet.device import (
    Launch,
    Precision,
    autocast,
    join_process_group,
    launch,
    resolve_device,
    resolve_precision,
    training_channels_last,
)
from d2lnet.errors import CommandError, UsageError
from d2lnet.evaluation.methods import JPEG_METHOD, Method
from d2lnet.evaluation.protocol import ImageScore, evaluate_set
from d2lnet.evaluation.testsets import DATA_ENV, ImageSet
from d2lnet.images import find_images_in
from d2lnet.losses import D2LLoss, LossTerms
from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig, build
from d2lnet.pretrained import PRETRAINED, ModelCard, load_model, model_card, save_release
from d2lnet.progress import Progress
from d2lnet.winograd import winograd_convolutions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# --------------------------------------------------------------------------- the recipe


@dataclass
class ModelSection:
    name: str = "d2lnet-s"  # a named configuration of d2lnet.model.CONFIGS
    init_from: str = ""  # weights to start from (a bundled name, release file or checkpoint): fine-tuning
    overrides: dict = field(default_factory=dict)  # any other key: a D2LNetConfig field


@dataclass
class DataSection:
    train: list[str] = field(default_factory=lambda: [f"${DATA_ENV}/train"])
    gray: bool = False
    crop: int | list[int] = 256  # the paper's 256x256 patches (Sec. 4.1); a list: one size drawn per batch
    holdout: float = 0.0  # fraction of the images left out of training, to validate on (see [val] folder)
    quality: list[int] = field(default_factory=lambda: [10, 20, 30])  # the paper's QFs
    quality_range: list[int] = field(default_factory=list)  # [low, high]: blind training
    quality_choice_prob: float = 0.0  # with both: chance of drawing from `quality`
    rescale: list[float] = field(default_factory=list)  # [low, high] random scale, or none
    jpeg_sources: str = "keep"  # images that are decoded JPEGs: keep, downscale (2x) or drop them
    # Shares of crops with JPEG variants beyond the protocol's (d2lnet.data.Degradations).
    double_compression: float = 0.0  # compressed twice, the first time on a shifted grid
    other_subsampling: float = 0.0  # colour at 4:4:4 or 4:2:2 instead of 4:2:0
    other_tables: float = 0.0  # non-IJG quantization tables
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
    device: str = "auto"  # auto, cpu, cuda, cuda:N (d2lnet.device)
    precision: str = "auto"  # auto (d2lnet.device: bf16 where native), bf16 or fp32; FFTs stay fp32
    channels_last: bool | str = "auto"  # auto (d2lnet.device.training_channels_last), true or false
    threads: int = 0  # CPU threads (0: PyTorch's default)
    log_every: int = 50
    checkpoint_every: int = 1000
    max_minutes: float = 0.0  # stop (with a checkpoint and a release) after this long; 0: no limit


_SECTIONS = {"model": ModelSection, "data": DataSection, "val": ValSection, "optim": OptimSection, "run": RunSection}


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
        """Build and validate a recipe; unknown keys and values of the wrong type are errors
        (ValueError, one line), not silently ignored."""
        values = copy.deepcopy(values)
        unknown = set(values) - {"name", "description", *_SECTIONS}
        if unknown:
            raise ValueError(f"unknown recipe key(s) {sorted(unknown)}; known: name, description, {', '.join(_SECTIONS)}")
        kwargs: dict = {}
        for key in ("name", "description"):
            if key in values:
                kwargs[key] = _checked(key, values[key], str)
        for name, section_cls in _SECTIONS.items():
            given = values.get(name, {})
            if not isinstance(given, dict):
                raise ValueError(f"[{name}] must be a section of keys, got {given!r}")
            hints = typing.get_type_hints(section_cls)
            if name == "model":  # any key that is not name/init_from overrides the architecture
                model_fields = typing.get_type_hints(D2LNetConfig)
                extra = {k: given.pop(k) for k in list(given) if k not in hints}
                if bad := set(extra) - set(model_fields):
                    raise ValueError(f"unknown [model] key(s) {sorted(bad)}; architecture fields: {sorted(model_fields)}")
                extra = {k: _checked(f"model.{k}", v, model_fields[k]) for k, v in extra.items()}
                given["overrides"] = {**given.get("overrides", {}), **extra}
            if bad := set(given) - set(hints):
                raise ValueError(f"unknown [{name}] key(s) {sorted(bad)}; known: {sorted(hints)}")
            kwargs[name] = section_cls(**{k: _checked(f"{name}.{k}", v, hints[k]) for k, v in given.items()})
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        if self.model.name not in CONFIGS:
            raise ValueError(f"model.name {self.model.name!r} is not one of {', '.join(CONFIGS)}")
        if not self.data.train:
            raise ValueError("data.train names no folder")
        if any(c % 8 or c <= 0 for c in self.crops):
            raise ValueError(f"data.crop must be positive multiples of 8, got {self.data.crop}")
        if len(self.data.quality_range) not in (0, 2) or len(self.data.rescale) not in (0, 2):
            raise ValueError("data.quality_range and data.rescale take two numbers [low, high]")
        if self.data.jpeg_sources not in JPEG_SOURCES:
            raise ValueError(f"data.jpeg_sources is one of {', '.join(JPEG_SOURCES)}, got {self.data.jpeg_sources!r}")
        self.degradations()  # checks the shares
        if not 0 <= self.data.holdout < 1:
            raise ValueError(f"data.holdout is a fraction in [0, 1), got {self.data.holdout}")
        self.quality_sampler()  # checks the quality factors
        if bad := [q for q in self.val.quality if not 1 <= q <= 100]:
            raise ValueError(f"val.quality: JPEG quality factors are 1 to 100, got {bad}")
        for key in ("optim.steps", "optim.batch_size", "val.every", "run.log_every", "run.checkpoint_every"):
            section, name = key.split(".")
            if getattr(getattr(self, section), name) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(getattr(self, section), name)}")
        if self.optim.lr <= 0 or len(self.optim.betas) != 2:
            raise ValueError("optim.lr must be positive and optim.betas two numbers")
        if self.run.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"run.precision must be auto, bf16 or fp32, got {self.run.precision!r}")
        if self.run.channels_last not in ("auto", True, False):
            raise ValueError(f"run.channels_last must be auto, true or false, got {self.run.channels_last!r}")
        if not 0 <= self.optim.ema < 1:
            raise ValueError(f"optim.ema must be in [0, 1), got {self.optim.ema}")

    @property
    def crops(self) -> list[int]:
        return [self.data.crop] if isinstance(self.data.crop, int) else list(self.data.crop)

    def quality_sampler(self) -> QualitySampler:
        low, high = self.data.quality_range or (None, None)
        return QualitySampler(tuple(self.data.quality), low, high, self.data.quality_choice_prob)

    def degradations(self) -> Degradations:
        data = self.data
        return Degradations(double=data.double_compression, subsampling=data.other_subsampling, tables=data.other_tables)

    def to_dict(self) -> dict:
        return asdict(self)


_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string", dict: "a table", list: "a list"}


def _checked(key: str, value: object, expected: object) -> object:
    """``value`` if it is of the ``expected`` type (an int is a float too); else ValueError."""
    if _is_instance(value, expected):
        return float(value) if expected is float else value
    raise ValueError(f"{key} must be {_describe(expected)}, got {value!r}")


def _is_instance(value: object, expected: object) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is_instance(v, args[0]) for v in value)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is typing.Any:
        return True
    return isinstance(value, origin or expected)


def _describe(expected: object) -> str:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_NAMES.get(expected, getattr(expected, "__name__", str(expected)))


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


_PATH_KEYS = (("data", "train"), ("val", "folder"), ("model", "init_from"))


def resolve_path(text: str, base: Path) -> str:
    """``~`` and ``$VARIABLES`` expanded, then relative to ``base``. Raises ValueError for an
    unset variable. A bundled model name (for ``model.init_from``) is left as it is."""
    if not text or text in PRETRAINED:
        return text
    expanded = os.path.expanduser(os.path.expandvars(text))
    if "$" in expanded:
        variable = expanded[expanded.index("$") :].split("/")[0]
        hint = " (the folder holding train/ and test/)" if DATA_ENV in variable else ""
        raise ValueError(f"{text}: {variable} is not set; set it{hint}, or give the path")
    return str((base / expanded).resolve())


def _resolve_paths(values: dict, base: Path, skip: set = frozenset(), only: set | None = None) -> None:
    """Resolve, in place, the paths of a recipe dict (see :func:`resolve_path`), but those in
    ``skip`` or, given ``only``, those not in it."""
    for section, key in _PATH_KEYS:
        if (section, key) in skip or (only is not None and (section, key) not in only):
            continue
        if isinstance(values.get(section), dict) and key in values[section]:
            value = values[section][key]
            try:
                if isinstance(value, str):
                    values[section][key] = resolve_path(value, base)
                elif isinstance(value, list):
                    values[section][key] = [resolve_path(v, base) if isinstance(v, str) else v for v in value]
            except ValueError as error:
                raise ValueError(f"{section}.{key}: {error}") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """Read a TOML recipe and apply ``--set`` overrides; ValueError (one line) on any problem."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except OSError as error:
        raise ValueError(f"cannot read the recipe {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    sets = [parse_override(text) for text in overrides]
    overridden = {tuple(keys) for keys, _ in sets}
    _resolve_paths(values, path.resolve().parent, skip=overridden)
    for keys, value in sets:
        target = values
        for k in keys[:-1]:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {'.'.join(keys)}: {'.'.join(keys[:-1])} is not a section")
        target[keys[-1]] = value
    _resolve_paths(values, Path.cwd(), only=overridden)  # paths on the command line: relative to the working directory
    values.setdefault("name", path.stem)
    if isinstance(values.setdefault("data", {}), dict) and "train" not in values["data"]:
        values["data"]["train"] = DataSection().train
        _resolve_paths(values, Path.cwd(), only={("data", "train")})
    return TrainConfig.from_dict(values)


# --------------------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunFolder:
    """Where a run writes: see the module docstring."""

    path: Path

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def log(self) -> Path:
        return self.path / "log.jsonl"

    @property
    def release(self) -> Path:
        return self.path / "release.safetensors"

    def holds_a_run(self) -> bool:
        return any(p.exists() for p in (self.checkpoint, self.log, self.release, self.path / "config.json"))

    def start(self, resume: str | Path | None, check: bool = True) -> Checkpoint | None:
        """The checkpoint to continue from (None: a fresh run), refusing to start over a run
        (``check``: the main process checks, so that its first writes cannot fool the others)."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a folder")
        if resume is None:
            if check and self.holds_a_run():
                raise UsageError(
                    f"{self.path} already holds a run: continue it with --resume auto, or choose another --out "
                    "(nothing was changed)"
                )
            return None
        if str(resume) == "auto":
            return Checkpoint.load(self.checkpoint) if self.checkpoint.is_file() else None
        return Checkpoint.load(resume)


# --------------------------------------------------------------------------- the pieces of a run


def seed_everything(seed: int) -> None:
    """Seed the global generators; samples are seeded per index (:mod:`d2lnet.data`)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def build_model(config: TrainConfig) -> D2LNet:
    """The network to train: the recipe's configuration, or the weights it fine-tunes."""
    channels = 1 if config.data.gray else 3
    if config.model.init_from:
        try:
            model = load_model(config.model.init_from).train()
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(f"model.init_from: {error}") from None
    else:
        try:
            model = build(config.model.name, **{"in_channels": channels, **config.model.overrides})
        except (TypeError, ValueError) as error:
            raise UsageError(f"[model]: {error}") from None
    if model.config.in_channels != channels:
        raise UsageError(f"the model has {model.config.in_channels} channel(s) but data.gray = {str(config.data.gray).lower()}")
    return model


def training_data(config: TrainConfig, process: Launch, start_step: int, pin_memory: bool) -> tuple[JPEGTrainSet, DataLoader]:
    """The training samples from ``start_step`` on: a function of (seed, index), so that a resumed
    run sees exactly the samples it would have seen."""
    try:
        dataset = JPEGTrainSet(
            config.data.train, config.crops, config.quality_sampler(), config.data.gray,
            tuple(config.data.rescale) or None, config.data.augment, config.run.seed, config.data.cache,
            config.data.holdout, config.optim.batch_size, config.data.jpeg_sources, config.degradations(),
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(f"data.train: {error}") from None
    sampler = StepSampler(config.optim.batch_size, start_step, config.optim.steps, process.rank, process.world_size)
    loader = DataLoader(
        dataset, batch_size=config.optim.batch_size, sampler=sampler, num_workers=config.data.workers,
        pin_memory=pin_memory, persistent_workers=config.data.workers > 0,
    )  # fmt: skip
    return dataset, loader


def validation_set(config: TrainConfig) -> ImageSet | None:
    """The images to validate on: ``val.folder``, else the images held out of ``data.train``."""
    try:
        if config.val.folder:
            paths = find_images_in([config.val.folder])
            where = config.val.folder
        else:
            paths = split_holdout(find_images_in(config.data.train), config.data.holdout)[1]
            where = f"the {config.data.holdout:.0%} of data.train held out"
            if not paths:
                return None
    except FileNotFoundError as error:
        raise UsageError(f"val.folder: {error}") from None
    if not paths:
        raise UsageError(f"val.folder: no image files in {where}")
    paths = paths[: config.val.limit or None]
    return ImageSet("validation", tuple(paths), config.data.gray, crop=config.val.crop or None)


@dataclass
class Optimisation:
    """What an optimiser step changes: the weights, their EMA, Adam's moments and the schedule."""

    model: D2LNet
    ema: D2LNet | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0
    elapsed: float = 0.0  # seconds of training before this session
    cpu_seconds: float | None = 0.0  # CPU-thread seconds before this session (None: not recorded)

    @classmethod
    def create(cls, model: D2LNet, optim: OptimSection) -> Optimisation:
        ema = copy.deepcopy(model).requires_grad_(False) if optim.ema > 0 else None
        optimizer = adam(model.parameters(), lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, optim) / optim.lr)
        return cls(model, ema, optimizer, scheduler)

    def resume(self, checkpoint: Checkpoint, source: str) -> None:
        """Continue from ``checkpoint``: weights, EMA, optimiser, schedule, step and RNG states."""
        if checkpoint.config != self.model.config:
            raise UsageError(
                f"{source} holds a different architecture than this recipe builds: {checkpoint.config} vs {self.model.config}"
            )
        if not checkpoint.resumable:
            raise UsageError(f"{source} holds weights only (no optimiser state): fine-tune from it with model.init_from instead")
        self.model.load_state_dict(checkpoint.model)
        if self.ema is not None and checkpoint.ema is not None:
            self.ema.load_state_dict(checkpoint.ema)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        set_rng_states(checkpoint.rng)
        self.step, self.elapsed, self.cpu_seconds = checkpoint.step, checkpoint.elapsed, checkpoint.cpu_seconds

    def checkpoint(self, config: TrainConfig, samples_seen: int, clock: RunClock) -> Checkpoint:
        return Checkpoint(
            self.model.config, self.model.state_dict(), self.ema.state_dict() if self.ema is not None else None,
            self.step, samples_seen, clock.elapsed(), config.to_dict(),
            self.optimizer.state_dict(), self.scheduler.state_dict(), rng_states(), clock.cpu_seconds(),
        )  # fmt: skip

    @property
    def weights(self) -> D2LNet:
        """The weights to validate and release: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model


def adam(params: Iterable[torch.nn.Parameter], **options) -> torch.optim.Adam:
    """Adam, fused into one kernel per step where PyTorch has one for the parameters' device
    (CUDA; the CPU since PyTorch 2.4): 11 ms against 30 ms for d2lnet-s's step on one CPU thread,
    the same update."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except RuntimeError:  # no fused kernel for this device or PyTorch
        return torch.optim.Adam(params, **options)


def lr_at(step: int, optim: OptimSection) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``steps``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def hide_quality(qf: torch.Tensor, probability: float, seed: int, step: int) -> torch.Tensor:
    """The quality factors with some replaced by NaN, the model's "unknown quality", drawn from
    (seed, step): a blind model learns to restore without the QF too."""
    hide = torch.rand(len(qf), generator=torch.Generator().manual_seed(seed * 1_000_003 + step)).to(qf.device)
    return torch.where(hide < probability, torch.full_like(qf, float("nan")), qf)


def train_step(
    net: torch.nn.Module, state: Optimisation, batch: dict, criterion: D2LLoss, config: TrainConfig,
    device: torch.device, precision: Precision, memory_format: torch.memory_format,
) -> tuple[LossTerms, float]:  # fmt: skip
    """One optimiser step on ``batch``; returns the loss terms and the gradient norm."""
    lq = batch["lq"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
    gt = batch["gt"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
    qf = hide_quality(batch["qf"].to(device=device, dtype=torch.float32), config.optim.qf_dropout, config.run.seed, state.step)
    with autocast(device, precision), winograd_convolutions(device, precision):
        out = net(lq, qf)
    loss = criterion(out.out1.float(), out.out2.float(), gt)
    state.optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
    state.optimizer.step()
    state.scheduler.step()
    if state.ema is not None:
        update_ema(state.ema, state.model, min(config.optim.ema, (1 + state.step) / (10 + state.step)))
    state.step += 1
    return loss, grad_norm.item()


@torch.no_grad()
def update_ema(ema: D2LNet, model: D2LNet, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def validate(model: D2LNet, images: ImageSet, qualities: list[int], device: torch.device, precision: Precision) -> dict:
    """Mean PSNR, SSIM and PSNR-B of ``model`` (and PSNR of the JPEG input) on ``images``, overall
    and per quality factor: the evaluation protocol's computation, on a copy of the model (the
    one being trained is left as it is)."""
    restorer = Method("model", copy.deepcopy(model).eval(), device, tile=None, precision=precision)
    rows = evaluate_set(images, [Method(JPEG_METHOD), restorer], qualities, progress=False)

    def means(selected: list[ImageScore]) -> dict[str, float]:
        ours = [r for r in selected if r.method == "model"]
        jpeg = [r for r in selected if r.method == JPEG_METHOD]
        return {
            "psnr": float(np.mean([r.psnr for r in ours])), "ssim": float(np.mean([r.ssim for r in ours])),
            "psnrb": float(np.mean([r.psnrb for r in ours])), "psnr_jpeg": float(np.mean([r.psnr for r in jpeg])),
        }  # fmt: skip

    return {**means(rows), **{f"q{q}": means([r for r in rows if r.quality == q]) for q in qualities}}


@dataclass
class RunClock:
    """Wall and CPU-thread seconds of a run over all its sessions. This session counts its wall time
    at ``rate``, its CPU threads times its processes (0 on GPUs), so a run resumed with more
    threads counts each session at its own rate."""

    wall_before: float
    cpu_before: float | None  # None: a checkpoint that did not record it, counted at this rate
    rate: int
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.wall_before + time.monotonic() - self.start

    def cpu_seconds(self) -> float:
        before = self.wall_before * self.rate if self.cpu_before is None else self.cpu_before
        return before + (time.monotonic() - self.start) * self.rate


def training_budget(config: TrainConfig, step: int, world: int, clock: RunClock, device: torch.device) -> dict:
    """This run's budget, and the cumulative one when it fine-tunes a release that recorded its own."""
    samples = step * config.optim.batch_size * world
    budget = {
        "steps": step, "batch_size": config.optim.batch_size * world, "crop": config.data.crop, "images_seen": samples,
        "minutes": round(clock.elapsed() / 60, 1), "cpu_hours": round(clock.cpu_seconds() / 3600, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }  # fmt: skip
    before: dict = {}
    if config.model.init_from:
        previous = model_card(config.model.init_from).training
        before = previous.get("cumulative")
        if not before:  # a card that started from scratch: its own budget is the total and its only run
            # (the first bundled models, which predate cpu_hours, ran on one CPU thread each)
            only = {"recipe": previous.get("recipe"), "crop": previous.get("crop"), "steps": previous.get("steps", 0),
                    "images_seen": previous.get("images_seen", 0),
                    "cpu_hours": previous.get("cpu_hours", round(previous.get("minutes", 0) / 60, 2))}  # fmt: skip
            before = {**{key: only[key] for key in ("steps", "images_seen", "cpu_hours")}, "runs": [only] if previous else []}
    this_run = {"recipe": config.name, "crop": config.data.crop, "steps": step, "images_seen": samples,
                "cpu_hours": budget["cpu_hours"]}  # fmt: skip
    budget["cumulative"] = {
        "steps": before.get("steps", 0) + step,
        "images_seen": before.get("images_seen", 0) + samples,
        "cpu_hours": round(before.get("cpu_hours", 0) + budget["cpu_hours"], 2),
        "runs": [*before.get("runs", []), this_run],
    }
    return budget


def release_card(config: TrainConfig, budget: dict, images: int, last_val: dict) -> ModelCard:
    """The model card of a finished run's release."""
    qualities = [*config.data.quality, *config.data.quality_range]
    held_out = config.val.folder or f"{config.data.holdout:.0%} of the training images, held out by name"
    return ModelCard(
        name=config.name, summary=config.description, quality_range=[min(qualities), max(qualities)],
        # Models trained on crops score best when run on tiles of that size (README, "Whole image or tiles?").
        inference={"tile": max(config.crops)},
        training_data={"folders": config.data.train, "images": images, "holdout": config.data.holdout},
        training=budget, scores={"validation": last_val, "validation_set": held_out} if last_val else {},
    )  # fmt: skip


class RunLog:
    """What a run reports: progress on stderr, ``log.jsonl``, TensorBoard (optional) and
    ``curves.png``; only the main process reports."""

    def __init__(self, folder: RunFolder, config: TrainConfig, step: int, process: Launch, fresh: bool) -> None:
        self.folder, self.enabled = folder, process.is_main
        self.samples_per_step = config.optim.batch_size * process.world_size
        self.progress = Progress(config.optim.steps, config.name, "step", initial=step, enabled=self.enabled)
        self._window = (time.monotonic(), step)  # for samples per second since the last record
        self.file = self.writer = None
        if self.enabled:
            self.file = open(folder.log, "w" if fresh else "a")  # noqa: SIM115 (closed in close())
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(folder.path / "tensorboard"))
            except ImportError:
                pass  # TensorBoard is an optional extra

    def training(self, step: int, loss: LossTerms, grad_norm: float, lr: float, elapsed: float) -> None:
        """A training record: the loss terms of eq. (22), the learning rate, the throughput."""
        now, (since, since_step) = time.monotonic(), self._window
        self._window = (now, step)
        terms = {
            "loss": loss.total.item(), "spatial": loss.spatial.item(), "amplitude": loss.amplitude.item(),
            "phase": loss.phase.item(), "lr": lr, "samples_per_s": (step - since_step) * self.samples_per_step / max(now - since, 1e-9),
        }  # fmt: skip
        self._record({"step": step, **terms, "grad_norm": grad_norm, "elapsed_s": elapsed})
        self._scalars("train", terms, step)
        self.progress.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")

    def validation(self, step: int, scores: dict, elapsed: float) -> None:
        self._record({"step": step, "val": scores, "elapsed_s": elapsed})
        self._scalars("val", {k: scores[k] for k in ("psnr", "ssim", "psnrb")}, step)
        self.progress.write(
            f"step {step}: val PSNR {scores['psnr']:.2f} dB (JPEG {scores['psnr_jpeg']:.2f}), "
            f"SSIM {scores['ssim']:.4f}, PSNR-B {scores['psnrb']:.2f}"
        )

    def close(self) -> None:
        self.progress.close()
        if self.file is not None:
            self.file.close()
            plot_log(self.folder.log, self.folder.path / "curves.png")
        if self.writer is not None:
            self.writer.close()

    def _record(self, values: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(values) + "\n")
            self.file.flush()

    def _scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)


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
        steps, losses = zip(*train, strict=True)
        axes[0].plot(steps, losses, lw=0.8)
        axes[0].set(xlabel="step", ylabel="loss (eq. 22)", yscale="log", title="training loss")
    if val:
        steps, psnr, psnr_jpeg = zip(*val, strict=True)
        axes[1].plot(steps, psnr, marker="o", label="restored")
        axes[1].plot(steps, psnr_jpeg, ls="--", label="JPEG input")
        axes[1].set(xlabel="step", ylabel="PSNR (dB)", title="validation")
        axes[1].legend()
    fig.savefig(png_path, dpi=100)
    return True


class TrainingInterrupted(CommandError):
    """Ctrl-C or SIGTERM ended the run: its checkpoint is written, its release is not."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """While active, SIGINT and SIGTERM ask the loop to stop after the step under way (their
    numbers are appended to the yielded list); a second one stops at once (KeyboardInterrupt).
    Signals can only be handled in the main thread; elsewhere this does nothing."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request(signum: int, frame: object) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------- the training loop


def train(config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None) -> dict:
    """Train from ``config`` into ``out_dir``; returns the last validation summary (or {}).

    ``resume``: None for a new run (refused if ``out_dir`` holds one), ``"auto"`` to continue
    the run in ``out_dir`` if there is one, or a checkpoint file to continue from. Raises
    :class:`UsageError` for a recipe or data that cannot be used and
    :class:`TrainingInterrupted` after Ctrl-C or SIGTERM.
    """
    # The machine, and where the run goes: a bad folder or checkpoint fails before any heavy work.
    try:
        process = launch()
    except ValueError as error:
        raise UsageError(str(error)) from None
    folder = RunFolder(Path(out_dir))
    start_from = folder.start(resume, check=process.is_main)
    try:
        device = resolve_device(process.device(config.run.device))
        precision = resolve_precision(config.run.precision, device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    join_process_group(process, device)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    seed_everything(config.run.seed)

    # Model, loss, optimiser (continued from the checkpoint when resuming).
    channels_last = config.run.channels_last
    if channels_last == "auto":
        channels_last = training_channels_last(device, precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(config).to(device, memory_format=memory_format)
    criterion = D2LLoss(config.optim.alpha, model.config.fft_norm)
    state = Optimisation.create(model, config.optim)
    if start_from is not None:
        state.resume(start_from, str(resume if str(resume) != "auto" else folder.checkpoint))
    net = (
        DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if process.world_size > 1
        else model
    )

    # Data.
    dataset, loader = training_data(config, process, state.step, pin_memory=device.type == "cuda")
    val_set = validation_set(config) if process.is_main else None

    # Feedback.
    if process.is_main:
        folder.path.mkdir(parents=True, exist_ok=True)
        (folder.path / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = RunLog(folder, config, state.step, process, fresh=start_from is None)
    last_val: dict = {}
    out_of_time = False
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    clock = RunClock(state.elapsed, state.cpu_seconds, threads * process.world_size)

    def checkpoint() -> None:
        if process.is_main:
            samples = state.step * config.optim.batch_size * process.world_size
            state.checkpoint(config, samples, clock).save(folder.checkpoint)

    def due(every: int) -> bool:
        return state.step % every == 0 or state.step == config.optim.steps

    stop_reason = "finished"
    model.train()
    try:
        with stop_requests() as stop:
            for batch in loader:
                loss, grad_norm = train_step(net, state, batch, criterion, config, device, precision, memory_format)
                log.progress.update()
                if due(config.run.log_every):
                    log.training(state.step, loss, grad_norm, state.scheduler.get_last_lr()[0], clock.elapsed())
                if val_set is not None and due(config.val.every):
                    last_val = validate(state.weights, val_set, config.val.quality, device, precision)
                    log.validation(state.step, last_val, clock.elapsed())
                if state.step % config.run.checkpoint_every == 0:
                    checkpoint()
                if stop:
                    stop_reason = signal.Signals(stop[0]).name
                    break
                out_of_time = bool(config.run.max_minutes) and time.monotonic() - clock.start > 60 * config.run.max_minutes
                if out_of_time:
                    stop_reason = f"time budget of {config.run.max_minutes} min reached"
                    break
            if val_set is not None and out_of_time and not due(config.val.every):
                # A run cut by its time budget releases the weights of this step: their scores go in its card.
                last_val = validate(state.weights, val_set, config.val.quality, device, precision)
                log.validation(state.step, last_val, clock.elapsed())
        checkpoint()
    except KeyboardInterrupt:  # a second Ctrl-C: the step under way is lost, the last checkpoint stands
        raise TrainingInterrupted(f"interrupted at once; {folder.checkpoint} holds the last checkpoint", signal.SIGINT) from None
    finally:
        log.close()

    minutes = clock.elapsed() / 60
    if stop_reason in ("SIGINT", "SIGTERM"):
        raise TrainingInterrupted(
            f"stopped by {stop_reason} at step {state.step} of {config.optim.steps}: checkpoint written to "
            f"{folder.checkpoint}, no release (continue with --resume auto)",
            signal.Signals[stop_reason],
        )
    if process.is_main:
        print(
            f"{config.name}: {stop_reason} at step {state.step} ({minutes:.1f} min); checkpoint {folder.checkpoint}",
            file=sys.stderr,
        )
        budget = training_budget(config, state.step, process.world_size, clock, device)
        save_release(state.weights, folder.release, release_card(config, budget, len(dataset), last_val))
    if process.world_size > 1:
        torch.distributed.destroy_process_group()
    return last_val


def run_cli(args) -> int:
    """``d2lnet train RECIPE [--resume CHECKPOINT|auto] [--set key=value ...] [--out DIR]``."""
    try:
        config = load_recipe(args.config, args.set)
    except ValueError as error:
        raise UsageError(str(error)) from None
    train(config, args.out or Path("runs") / config.name, args.resume)
    return 0
