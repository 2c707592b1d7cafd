"""The training checkpoint: one format, written by the trainer, read by the trainer and by
:func:`d2lnet.pretrained.load_model`.

A checkpoint is a ``torch.save`` file of plain dicts and tensors (loadable with
``weights_only=True``: no pickled code runs on load) holding everything a run needs to
continue exactly: the weights, their EMA, the optimiser and schedule, the step, and every
random generator's state. It is written to a temporary file, flushed to disk and renamed, so
an interrupted write never damages the previous one.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from d2lnet.atomic import atomic_write
from d2lnet.errors import CommandError
from d2lnet.model import D2LNetConfig

FORMAT = "d2lnet-checkpoint/1"  # checkpoints written before this field was added have no "format"


class CheckpointError(CommandError):
    """A file that is not a (usable) d2lnet checkpoint; the message says why, in one line."""


@dataclass
class Checkpoint:
    """A training run's state after ``step`` optimiser steps.

    Attributes:
        config: the architecture.
        model, ema: the weights and their exponential moving average (None without EMA).
        step: optimiser steps taken; ``samples_seen`` training samples over all processes.
        elapsed: seconds of training so far, over all sessions of the run.
        cpu_seconds: CPU-thread seconds so far: each session's wall time times its threads and
            processes (a run resumed with more threads counts each part at its own rate); None
            in checkpoints written before it was recorded.
        recipe: the resolved training recipe (:meth:`d2lnet.train.TrainConfig.to_dict`).
        optimizer, scheduler: their ``state_dict()``; None in a weights-only checkpoint.
        rng: every global random generator's state (:func:`rng_states`).
    """

    config: D2LNetConfig
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    step: int = 0
    samples_seen: int = 0
    elapsed: float = 0.0
    recipe: dict = field(default_factory=dict)
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict | None = None
    cpu_seconds: float | None = None

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The weights to infer with: the EMA when there is one."""
        return self.ema if self.ema is not None else self.model

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None and self.scheduler is not None and self.rng is not None

    def save(self, path: str | Path) -> None:
        state = {
            "format": FORMAT, "config": self.config.to_dict(), "train_config": self.recipe, "step": self.step,
            "elapsed": self.elapsed, "samples_seen": self.samples_seen, "model": self.model, "ema": self.ema,
            "optimizer": self.optimizer, "scheduler": self.scheduler, "rng": self.rng, "cpu_seconds": self.cpu_seconds,
        }  # fmt: skip
        with atomic_write(path, durable=True) as f:
            torch.save(state, f)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a checkpoint; raises :class:`CheckpointError` for anything else."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as error:
            # weights_only refuses foreign pickles with a page of advice; a truncated file gives EOF or zip errors.
            reason = "it holds Python objects other than tensors" if isinstance(error, pickle.UnpicklingError) else "unreadable"
            raise CheckpointError(f"{path} is not a d2lnet checkpoint ({reason})") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(f"{path} is not a d2lnet checkpoint (no model configuration and weights)")
        if state.get("format", FORMAT) != FORMAT:
            raise CheckpointError(f"{path} is a checkpoint of another format ({state['format']}); this d2lnet reads {FORMAT}")
        try:
            config = D2LNetConfig.from_dict(state["config"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path} holds a configuration this d2lnet cannot build: {error}") from None
        return cls(
            config, state["model"], state.get("ema"), int(state.get("step", 0)), int(state.get("samples_seen", 0)),
            float(state.get("elapsed", 0.0)), state.get("train_config") or {},
            state.get("optimizer"), state.get("scheduler"), state.get("rng"),
            None if state.get("cpu_seconds") is None else float(state["cpu_seconds"]),
        )  # fmt: skip


def rng_states() -> dict:
    """Every global random generator's state, as tensors and plain Python values (so that the
    checkpoint loads with ``weights_only=True``)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {
        "name": name,
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Put back what :func:`rng_states` captured."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
