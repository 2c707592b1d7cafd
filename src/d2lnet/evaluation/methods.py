"""What is evaluated: the JPEG baseline (the decoded JPEG as is) and models, one column each."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from d2lnet.device import Precision
from d2lnet.engine import Restorer, TileSpec
from d2lnet.evaluation import EvalError
from d2lnet.model import D2LNet
from d2lnet.pretrained import PRETRAINED, load_model

JPEG_METHOD = "JPEG"  # the baseline's name in results: the decoded JPEG, not restored


@dataclass
class Method:
    """One column of results: a model, or the JPEG baseline (``model`` None: the decoded JPEG as is)."""

    name: str
    model: D2LNet | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tile: TileSpec = "auto"
    precision: Precision = "auto"
    source: str | None = None  # what --model named: a bundled name or a file
    restorer: Restorer | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.model is not None:
            self.restorer = Restorer(self.model, self.device, self.precision, tile=self.tile)

    @property
    def is_baseline(self) -> bool:
        return self.model is None

    @property
    def channels(self) -> int | None:
        return None if self.model is None else self.model.config.in_channels

    def check_mode(self, gray: bool) -> None:
        """Raise a clear error when the model's channels do not fit grey (1) or colour (3) images."""
        if self.channels is None or self.channels == (1 if gray else 3):
            return
        if gray:
            raise EvalError(
                f"model {self.name!r} restores RGB images (in_channels=3) but --gray evaluates grey "
                "(BT.601 Y) images: give a grey model, or drop --gray"
            )
        raise EvalError(f"model {self.name!r} restores grey images (in_channels=1): add --gray to evaluate grey images")

    def restore(self, image: np.ndarray, quality: int) -> np.ndarray:
        """The method's output for a decoded JPEG compressed at ``quality``."""
        return image if self.restorer is None else self.restorer.restore(image, quality)

    def describe(self) -> dict:
        """What the JSON records about the method."""
        if self.model is None:
            return {"name": self.name, "kind": "baseline: the decoded JPEG, not restored"}
        return {
            "name": self.name, "source": self.source, "in_channels": self.channels, "precision": self.restorer.precision,
            "card": card.to_dict() if (card := getattr(self.model, "card", None)) else None,
        }  # fmt: skip


def load_method(spec: str, device: torch.device, tile: TileSpec, precision: Precision = "auto") -> Method:
    """``jpeg`` (the baseline), a bundled model name, or a weights file (.safetensors or .pt)."""
    if spec.lower() == "jpeg":
        return Method(JPEG_METHOD)
    try:
        model = load_model(spec, device=device)
    except (FileNotFoundError, ValueError) as error:
        raise EvalError(f"cannot load model {spec!r}: {error}") from error
    name = spec if spec in PRETRAINED else Path(spec).stem
    return Method(name, model, device, tile, precision, source=spec)


def load_methods(specs: Iterable[str], device: torch.device, tile: TileSpec, precision: Precision = "auto") -> list[Method]:
    methods = [load_method(spec, device, tile, precision) for spec in specs]
    names = [m.name for m in methods]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise EvalError(f"two methods are named {', '.join(duplicates)}: give each model a distinct file name")
    return methods
