"""Pretrained weights, resolved by name like timm: ``d2lnet.load_model("d2lnet-s-color")``.

A release file is an fp16 safetensors file whose header metadata carries the model's
configuration and its :class:`ModelCard`, so that any exported file is self-describing; the
card is also written beside it as JSON for people to read. :func:`save_release` writes both
and :func:`read_release` reads them: the card's only writer and reader (:mod:`d2lnet.cards`
declares the card and the bundled models, and reads cards without torch for listing them).
``load_model`` also takes training checkpoints (:mod:`d2lnet.checkpoint`).
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from d2lnet.atomic import atomic_write
from d2lnet.cards import DEFAULT_COLOR, DEFAULT_GRAY, PRETRAINED, WEIGHTS_DIR, ModelCard
from d2lnet.checkpoint import Checkpoint, CheckpointError
from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig

__all__ = ["DEFAULT_COLOR", "DEFAULT_GRAY", "PRETRAINED", "WEIGHTS_DIR", "ModelCard", "list_models", "load_model", "model_card",
           "read_release", "save_release"]  # fmt: skip


def save_release(model: D2LNet, path: str | Path, card: ModelCard) -> Path:
    """Write ``model`` as fp16 safetensors with its config and ``card`` in the header, and the card
    as JSON beside it (``NAME.json``). Written to a temporary file first, then renamed."""
    path = Path(path)
    card_dict = {**card.to_dict(), "channels": model.config.in_channels, "config": model.config.to_dict()}
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {"d2lnet.config": json.dumps(model.config.to_dict()), "d2lnet.card": json.dumps(card_dict)}
    with atomic_write(path) as f:
        f.write(safetensors.torch.save(tensors, metadata=metadata))
    with atomic_write(path.with_suffix(".json")) as f:
        f.write((json.dumps(card_dict, indent=2) + "\n").encode())
    return path


def read_release(path: str | Path, weights: bool = True) -> tuple[D2LNetConfig, ModelCard, dict[str, torch.Tensor]]:
    """(config, card, state dict) of a release file; the state dict is empty unless ``weights``.
    Raises ValueError, in one line, for anything else."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "d2lnet.config" not in metadata:
                raise ValueError(f"{path} is not a d2lnet release file (no d2lnet configuration in its header)")
            state = {k: f.get_tensor(k) for k in f.keys()} if weights else {}  # noqa: SIM118 (a file, not a dict)
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a safetensors file ({str(error).splitlines()[0] if str(error) else 'unreadable'})"
        ) from None
    try:
        config = D2LNetConfig.from_dict(json.loads(metadata["d2lnet.config"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} holds a configuration this d2lnet cannot build: {error}") from None
    stored = json.loads(metadata.get("d2lnet.card", "{}"))
    card = ModelCard.from_dict({"name": path.stem, **stored, "channels": config.in_channels, "config": config.to_dict()})
    return config, card, state


def _read_checkpoint(path: Path, weights: bool) -> tuple[D2LNetConfig, ModelCard, dict[str, torch.Tensor]]:
    checkpoint = Checkpoint.load(path)
    card = ModelCard(
        name=checkpoint.recipe.get("name", path.stem), summary=checkpoint.recipe.get("description", ""),
        channels=checkpoint.config.in_channels, training={"steps": checkpoint.step, "images_seen": checkpoint.samples_seen},
        config=checkpoint.config.to_dict(),
    )  # fmt: skip
    return checkpoint.config, card, checkpoint.weights if weights else {}


def _resolve(name_or_path: str | Path) -> Path:
    name = str(name_or_path)
    if name in PRETRAINED:
        path = WEIGHTS_DIR / PRETRAINED[name]
        if not path.is_file():
            raise FileNotFoundError(f"bundled weights for {name!r} are missing from this installation ({path})")
        return path
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if name in CONFIGS:
        raise ValueError(
            f"{name!r} is an untrained configuration, not a pretrained model: build it with "
            f"d2lnet.model.build({name!r}), or load one of {', '.join(PRETRAINED)}"
        )
    raise FileNotFoundError(f"no pretrained model or file named {name!r}; bundled models: {', '.join(PRETRAINED)}")


def _read(path: Path, weights: bool) -> tuple[D2LNetConfig, ModelCard, dict[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        return read_release(path, weights)
    if path.suffix in (".pt", ".pth"):
        try:
            return _read_checkpoint(path, weights)
        except CheckpointError as error:
            raise ValueError(str(error)) from None
    raise ValueError(f"{path} is neither a release file (.safetensors) nor a training checkpoint (.pt)")


def model_card(name_or_path: str | Path) -> ModelCard:
    """The model card of a bundled model, a release file or a training checkpoint."""
    return _read(_resolve(name_or_path), weights=False)[1]


def load_model(name_or_path: str | Path = DEFAULT_COLOR, device: str | torch.device = "cpu") -> D2LNet:
    """A D2LNet in eval mode, from a bundled name (``d2lnet-s-color``, ``d2lnet-s-gray``), a release
    ``.safetensors`` file, or a training checkpoint (``.pt``: its EMA weights when it has them).

    The model card is attached as ``model.card`` (a :class:`ModelCard`). Raises FileNotFoundError
    for a name or path that names nothing, ValueError (one line) for a file that is not a d2lnet
    model or whose weights do not fit its configuration.
    """
    path = _resolve(name_or_path)
    config, card, state = _read(path, weights=True)
    model = D2LNet(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit the configuration it declares ({str(error).splitlines()[0]})") from None
    model.card = card
    return model.to(device).eval()


def list_models() -> list[ModelCard]:
    """The model cards of the bundled models that are installed."""
    return [model_card(name) for name, file in PRETRAINED.items() if (WEIGHTS_DIR / file).is_file()]
