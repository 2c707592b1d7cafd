"""Model cards and the bundled models, readable without PyTorch.

A release file (:func:`d2lnet.pretrained.save_release`) is a safetensors file whose header
carries the model's :class:`ModelCard`; safetensors puts the header (metadata, tensor names
and shapes) before the tensors, so a card and a parameter count are read here without
loading a weight or importing torch. That keeps ``d2lnet models`` (and ``--help``) fast;
:mod:`d2lnet.pretrained` loads the weights.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The bundled models: name -> file in ``WEIGHTS_DIR``. Their cards live in the files.
PRETRAINED: dict[str, str] = {
    "d2lnet-s-color": "d2lnet-s-color.safetensors",
    "d2lnet-s-gray": "d2lnet-s-gray.safetensors",
}
DEFAULT_COLOR = "d2lnet-s-color"
DEFAULT_GRAY = "d2lnet-s-gray"


DEFAULT_OVERLAP = 32  # tile overlap for cards that do not record one (measured on release 1)


@dataclass(frozen=True)
class ModelCard:
    """What a weights file says about its model (timm's ``PretrainedCfg`` plays this part there).

    Attributes:
        name: the model's name.
        summary: one line for people.
        channels: 3 for RGB, 1 for grey (BT.601 Y) images.
        quality_range: ``[low, high]``, the JPEG quality factors it was trained on.
        inference: defaults for running it; ``tile``: the tile side that ``--tile auto`` uses
            (None or absent: whole images); ``overlap``: how far neighbouring tiles overlap
            (absent: :data:`DEFAULT_OVERLAP`); ``keep_444_chroma_from``: the JPEG quality from
            which a 4:4:4 file keeps its own chroma and only its luma is restored (absent: never).
        training_data: the training images (folders, counts, what was held out).
        training: the budget and recipe (steps, batch, crops, time, device, cumulative totals).
        scores: validation and benchmark scores.
        config: the architecture (:meth:`d2lnet.model.D2LNetConfig.to_dict`).
        extra: any other key of the stored card, kept as is.
    """

    name: str
    summary: str = ""
    channels: int | None = None
    quality_range: list[int] = field(default_factory=list)
    inference: dict[str, Any] = field(default_factory=dict)
    training_data: Any = None
    training: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tile(self) -> int | None:
        """The tile side the model runs best on (its training crop), or None for whole images."""
        return self.inference.get("tile")

    @property
    def overlap(self) -> int:
        """How many pixels neighbouring tiles overlap, measured per model: the least that
        loses nothing against larger overlaps (``benchmarks/size_robustness.py --overlap``)."""
        return self.inference.get("overlap", DEFAULT_OVERLAP)

    @property
    def keep_444_chroma_from(self) -> int | None:
        """The JPEG quality from which a file with full-resolution chroma (4:4:4) keeps its own
        chroma: a model trained on 4:2:0 files restores chroma as if it had been halved, which
        gains at low quality and loses at high (``benchmarks/degradations.py``). None: never."""
        return self.inference.get("keep_444_chroma_from")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        extra = values.pop("extra")
        return {**values, **extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelCard:
        known = {f.name for f in fields(cls)} - {"extra"}
        if not isinstance(values.get("name"), str):
            raise ValueError("a model card needs a name")
        return cls(**{k: v for k, v in values.items() if k in known}, extra={k: v for k, v in values.items() if k not in known})


def overlap_for(model: object) -> int:
    """The tile overlap of ``model``'s card (which :func:`d2lnet.pretrained.load_model` sets as
    ``model.card``), or :data:`DEFAULT_OVERLAP` for a model without one."""
    card = getattr(model, "card", None)
    return card.overlap if card is not None else DEFAULT_OVERLAP


@dataclass(frozen=True)
class Listing:
    """A release file as ``d2lnet models`` lists it: its card, its parameter count and where it is."""

    card: ModelCard
    parameters: int
    path: Path


def read_listing(path: str | Path) -> Listing:
    """The card and parameter count of a release file, from its header alone (no tensor is read).
    Raises ValueError, in one line, for a file that is not a d2lnet release file."""
    path = Path(path)
    try:
        # framework="numpy": safetensors needs one, and numpy is far lighter than torch; no tensor is loaded.
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            parameters = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118 (a file, not a dict)
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a safetensors file ({str(error).splitlines()[0] if str(error) else 'unreadable'})"
        ) from None
    if "d2lnet.card" not in metadata:
        raise ValueError(f"{path} is not a d2lnet release file (no model card in its header)")
    return Listing(ModelCard.from_dict({"name": path.stem, **json.loads(metadata["d2lnet.card"])}), parameters, path)


def bundled_listings() -> list[Listing]:
    """The bundled models that are installed, in :data:`PRETRAINED`'s order."""
    return [read_listing(WEIGHTS_DIR / file) for file in PRETRAINED.values() if (WEIGHTS_DIR / file).is_file()]


# --------------------------------------------------------------------------- d2lnet models


def _budget(training: dict[str, Any]) -> str:
    """``10000 steps x 4 x 96px, 188 min``: steps, batch, crop side and time, as far as the card says;
    for a model trained in several runs, their totals (``11300 steps in 2 runs, 45200 crops, 4.9 CPU h``)."""
    total = training.get("cumulative")
    if total and len(total.get("runs", [])) > 1:
        return (
            f"{total['steps']} steps in {len(total['runs'])} runs, {total['images_seen']} crops, {total['cpu_hours']:.1f} CPU h"
        )
    parts = [f"{training['steps']} steps" if "steps" in training else None]
    parts += [
        str(training["batch_size"]) if "batch_size" in training else None,
        f"{training['crop']}px" if "crop" in training else None,
    ]
    text = " x ".join(p for p in parts if p)
    return ", ".join(t for t in (text, f"{training['minutes']:.0f} min" if "minutes" in training else "") if t) or "-"


def _held_out(validation: dict[str, Any], preferred: str = "whole") -> tuple[str, dict[str, float], dict[str, float]] | None:
    """(policy, PSNR by QF (``q10``, ...), the JPEG's) when the validation is a comparison on
    held-out training images (``benchmarks/size_robustness.py``): the ``preferred`` view when
    measured (``tiles_256_16`` reads ``tiles 256/16``), else whole images, else the first tiling
    recorded; None otherwise."""
    measured, jpeg = validation.get("this_release", validation), validation.get("jpeg")
    views = (preferred, "whole", *(key for key in measured if key.startswith("tiles_")))
    key = next((key for key in views if key in measured), None)
    psnr = measured.get(key)
    if not (isinstance(psnr, dict) and isinstance(jpeg, dict) and psnr.keys() == jpeg.keys()):
        return None
    return (key if key == "whole" else "tiles " + "/".join(key.split("_")[1:])), psnr, jpeg


def _validation(scores: dict[str, Any], preferred: str = "whole") -> str:
    """``31.20 dB (JPEG 29.80), LIVE1_color``: the validation PSNR beside the JPEG input's; for a
    held-out comparison, the mean over its quality factors in the ``preferred`` view (see :func:`_held_out`)."""
    validation = scores.get("validation", {})
    held_out = _held_out(validation, preferred)
    if held_out:
        policy, psnr, jpeg = held_out
        return f"{sum(psnr.values()) / len(psnr):.2f} dB (JPEG {sum(jpeg.values()) / len(jpeg):.2f}), held-out, {policy}"
    if "psnr" not in validation:
        return "-"
    text = f"{validation['psnr']:.2f} dB" + (f" (JPEG {validation['psnr_jpeg']:.2f})" if "psnr_jpeg" in validation else "")
    return text + (f", {Path(scores['validation_set']).name}" if scores.get("validation_set") else "")


def _validation_qualities(scores: dict[str, Any]) -> list[int]:
    """The quality factors the validation scores are a mean over (its ``q10``, ``q50``, ... entries)."""
    validation = scores.get("validation", {})
    held_out = _held_out(validation)
    keys = held_out[2] if held_out else validation
    return sorted(int(key[1:]) for key in keys if key[:1] == "q" and key[1:].isdigit())


def _default_view(card: ModelCard) -> str:
    """The held-out view that is how the model runs by default: ``tiles_256_16``, or ``whole``."""
    return f"tiles_{card.tile}_{card.overlap}" if card.tile else "whole"


def _inference(card: ModelCard) -> str:
    """How the model runs by default: ``tiles of 256 (overlap 16); 4:4:4 chroma kept from QF 70``."""
    layout = f"tiles of {card.tile} (overlap {card.overlap})" if card.tile else "whole images"
    chroma = card.keep_444_chroma_from
    return layout if chroma is None else f"{layout}; 4:4:4 chroma kept from QF {chroma}"


def table(listings: list[Listing]) -> str:
    """The listings as an aligned text table, one row per model."""
    header = ("model", "channels", "quality", "params", "training (steps x batch x crop)", "validation PSNR", "inference")
    rows = [header]
    for listing in listings:
        card = listing.card
        rows.append((
            card.name,
            {1: "1 (grey)", 3: "3 (RGB)"}.get(card.channels, str(card.channels)),
            "-".join(map(str, card.quality_range)) or "-",
            f"{listing.parameters / 1e6:.2f}M",
            _budget(card.training),
            _validation(card.scores, _default_view(card)),
            _inference(card),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet models``: a table of the bundled models, or (``--json``) their full cards with
    ``parameters`` and ``file`` added. Exit status 1 when none is installed."""
    listings = bundled_listings()
    if args.json:
        cards = [{**item.card.to_dict(), "parameters": item.parameters, "file": str(item.path)} for item in listings]
        print(json.dumps(cards, indent=2))
        return 0
    if not listings:
        print("no bundled models are installed")
        return 1
    print(table(listings))
    qualities = {tuple(q) for q in (_validation_qualities(item.card.scores) for item in listings) if q}
    over = f"; validation PSNR: mean over QF {', '.join(map(str, qualities.pop()))}" if len(qualities) == 1 else ""
    print(f"\nquality: the JPEG quality factors it was trained for (restore reads each JPEG's from the file){over}.")
    print("Full cards (summary, data, recipe, scores): d2lnet models --json")
    return 0
