"""Pretrained weights, resolved by name like timm: ``d2lnet.load_model("d2lnet-s-color")``.

A release file is an fp16 safetensors file whose header metadata carries the
model's configuration and its model card, so that any exported file is
self-describing; the card is also written beside it as JSON for people to read.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import safetensors.torch
import torch
from safetensors import safe_open

from d2lnet.atomic import atomic_write
from d2lnet.model import CONFIGS, D2LNet, D2LNetConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"

# The bundled models: name -> file in ``WEIGHTS_DIR``. Their cards live in the files.
PRETRAINED: dict[str, str] = {
    "d2lnet-s-color": "d2lnet-s-color.safetensors",
    "d2lnet-s-gray": "d2lnet-s-gray.safetensors",
}
DEFAULT_COLOR = "d2lnet-s-color"
DEFAULT_GRAY = "d2lnet-s-gray"


def config_from_dict(values: dict) -> D2LNetConfig:
    """A :class:`D2LNetConfig` from a dict, ignoring keys this version does not know."""
    known = {f.name for f in fields(D2LNetConfig)}
    return D2LNetConfig(**{k: v for k, v in values.items() if k in known})


def save_release(model: D2LNet, path: str | Path, card: dict) -> Path:
    """Write ``model`` as fp16 safetensors with its config and ``card`` in the header, and the card
    as JSON beside it (``NAME.json``). Written to a temporary file first, then renamed."""
    path = Path(path)
    card = {**card, "config": model.config.to_dict()}
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    metadata = {"d2lnet.config": json.dumps(model.config.to_dict()), "d2lnet.card": json.dumps(card)}
    with atomic_write(path) as f:
        f.write(safetensors.torch.save(tensors, metadata=metadata))
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path


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


def _read(path: Path, weights: bool) -> tuple[D2LNetConfig, dict, dict[str, torch.Tensor]]:
    """(config, card, state dict) of a release file, or of a training checkpoint (its EMA weights
    when it has them); the state dict is empty unless ``weights``."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if "d2lnet.config" not in metadata:
                raise ValueError(f"{path} is not a d2lnet release file (no config in its metadata)")
            state = {k: f.get_tensor(k) for k in f.keys()} if weights else {}
        return config_from_dict(json.loads(metadata["d2lnet.config"])), json.loads(metadata.get("d2lnet.card", "{}")), state
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise ValueError(f"{path} is not a d2lnet checkpoint")
    card = {"name": path.stem, "config": checkpoint["config"], "step": checkpoint.get("step")}
    state = (checkpoint.get("ema") or checkpoint["model"]) if weights else {}
    return config_from_dict(checkpoint["config"]), card, state


def model_card(name_or_path: str | Path) -> dict:
    """The model card stored in a release file (or a training checkpoint's config and step)."""
    return _read(_resolve(name_or_path), weights=False)[1]


def load_model(name_or_path: str | Path = DEFAULT_COLOR, device: str | torch.device = "cpu") -> D2LNet:
    """A D2LNet in eval mode, from a bundled name (``d2lnet-s-color``, ``d2lnet-s-gray``), a release
    ``.safetensors`` file, or a training checkpoint (``.pt``: its EMA weights when it has them).

    The model card is attached as ``model.card``.
    """
    config, card, state = _read(_resolve(name_or_path), weights=True)
    model = D2LNet(config)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.card = card
    return model.to(device).eval()


def list_models() -> list[dict]:
    """The model cards of the bundled models that are installed."""
    return [model_card(name) for name, file in PRETRAINED.items() if (WEIGHTS_DIR / file).is_file()]
