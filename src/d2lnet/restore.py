"""The inference engine: run a D2LNet on images of any size, whole or in tiles.

Tiles are aligned to the 8x8 JPEG grid (every tile starts at a multiple of 8),
so that each tile sees its blocking artifacts at the same phase as the training
crops, which are compressed after cropping. Overlapping tiles are blended with
weights that ramp linearly across the overlap, which hides tile seams.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import torch

from d2lnet.model import D2LNet

Precision = Literal["fp32", "bf16", "fp16"]
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
JPEG_BLOCK = 8


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was asked for but is not available (no GPU, or a CPU-only PyTorch build)")
    return device


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (1, C, H, W) in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255).unsqueeze(0)


def to_uint8(x: torch.Tensor, squeeze_channel: bool) -> np.ndarray:
    """float (1, C, H, W) in [0, 1] -> uint8 (H, W, C), or (H, W) when ``squeeze_channel``."""
    array = x[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if squeeze_channel else array


def tile_layout(size: int, tile: int, overlap: int) -> tuple[list[int], int]:
    """Start offsets of tiles of ``tile`` pixels overlapping by ``overlap`` along one side of
    ``size`` pixels, and the padded size they cover. Every start is a multiple of ``tile - overlap``."""
    step = tile - overlap
    count = max(1, math.ceil((size - overlap) / step))
    return [i * step for i in range(count)], (count - 1) * step + tile


def blend_ramp(tile: int, overlap: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1-D tile weights: 1 inside, rising linearly over ``overlap`` pixels at an inner edge."""
    w = torch.ones(tile)
    if overlap > 0:
        ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        if ramp_start:
            w[:overlap] = ramp
        if ramp_end:
            w[tile - overlap :] = ramp.flip(0)
    return w


# Peak inference memory per pixel per unit of model width, in fp32: measured on the CPU as 64
# bytes (d2lnet-s, 1024x1024 input); rounded up for allocator slack.
_BYTES_PER_PIXEL_PER_WIDTH = 80
FALLBACK_TILE = 512


def available_memory(device: torch.device) -> int:
    """Bytes free for inference on ``device`` (the CUDA free memory, or the system's available RAM)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_tile(model: D2LNet, height: int, width: int, device: torch.device, precision: Precision = "fp32") -> int | None:
    """The tile size that ``--tile auto`` uses for an image: the model card's preferred tile
    (``card["inference"]["tile"]``, None meaning whole images) unless the whole image would need
    more than half of the free memory, in which case tiles of ``FALLBACK_TILE``."""
    preferred = getattr(model, "card", {}).get("inference", {}).get("tile")
    if preferred is not None:
        return preferred
    need = height * width * model.config.width * _BYTES_PER_PIXEL_PER_WIDTH * (0.5 if precision != "fp32" else 1.0)
    return FALLBACK_TILE if need > available_memory(device) / 2 else None


class Restorer:
    """Runs a model on whole images or on tiles.

    Args:
        model: a D2LNet (its weights are moved to ``device``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        precision: ``"fp32"``, or ``"bf16"``/``"fp16"`` autocast on CUDA (FFTs stay in fp32).
        tile: tile side in pixels (a multiple of 8), or None for the whole image at once.
        overlap: overlap between neighbouring tiles (a multiple of 8).
        tile_batch: how many tiles go through the network together.
    """

    def __init__(
        self,
        model: D2LNet,
        device: str | torch.device = "auto",
        precision: Precision = "fp32",
        tile: int | None = None,
        overlap: int = 32,
        tile_batch: int = 4,
    ) -> None:
        self.device = resolve_device(device)
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
        if precision != "fp32" and self.device.type != "cuda":
            raise ValueError(f"{precision} inference needs a CUDA device; use fp32 on {self.device}")
        if tile is not None:
            if tile % JPEG_BLOCK or tile % model.config.stride or tile <= 0:
                raise ValueError(f"tile must be a positive multiple of {max(JPEG_BLOCK, model.config.stride)}, got {tile}")
            if overlap % JPEG_BLOCK or not 0 <= overlap < tile // 2 + 1:
                raise ValueError(f"overlap must be a multiple of 8 and at most half the tile, got {overlap}")
        self.model = model.to(self.device).eval()
        self.precision = precision
        self.tile, self.overlap, self.tile_batch = tile, overlap, tile_batch

    @property
    def channels(self) -> int:
        return self.model.config.in_channels

    def _forward(self, x: torch.Tensor, quality: int | None) -> torch.Tensor:
        x = x.to(self.device)
        with torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision), enabled=self.precision != "fp32"):
            return self.model(x, quality).out2.float()

    @torch.inference_mode()
    def restore_tensor(self, x: torch.Tensor, quality: int | None = None) -> torch.Tensor:
        """Restore a float (1, C, H, W) image in [0, 1]; returns it on the CPU, unclamped."""
        if self.tile is None or max(x.shape[-2:]) <= self.tile:
            return self._forward(x, quality).cpu()
        return self._restore_tiled(x, quality)

    def _restore_tiled(self, x: torch.Tensor, quality: int | None) -> torch.Tensor:
        _, c, h, w = x.shape
        tile, overlap = self.tile, self.overlap
        rows, padded_h = tile_layout(h, tile, overlap)
        cols, padded_w = tile_layout(w, tile, overlap)
        x = torch.nn.functional.pad(x, (0, padded_w - w, 0, padded_h - h), mode="replicate")
        out = torch.zeros(1, c, padded_h, padded_w)
        weight = torch.zeros(1, 1, padded_h, padded_w)
        boxes = [(top, left) for top in rows for left in cols]
        for i in range(0, len(boxes), self.tile_batch):
            batch = boxes[i : i + self.tile_batch]
            tiles = torch.cat([x[..., t : t + tile, l : l + tile] for t, l in batch])
            restored = self._forward(tiles, quality).cpu()
            for (t, l), y in zip(batch, restored):
                wy = blend_ramp(tile, overlap, t > 0, t + tile < padded_h)
                wx = blend_ramp(tile, overlap, l > 0, l + tile < padded_w)
                wt = wy[:, None] * wx[None, :]
                out[0, :, t : t + tile, l : l + tile] += y * wt
                weight[0, 0, t : t + tile, l : l + tile] += wt
        return (out / weight)[..., :h, :w]

    def restore(self, image: np.ndarray, quality: int | None = None) -> np.ndarray:
        """Restore a uint8 (H, W) or (H, W, C) array whose channels match the model's; returns uint8."""
        image = np.asarray(image)
        channels = 1 if image.ndim == 2 else image.shape[2]
        if channels != self.channels:
            kind = "grey" if self.channels == 1 else "RGB"
            raise ValueError(f"this model restores {kind} images ({self.channels} channel(s)); got {channels} channel(s)")
        return to_uint8(self.restore_tensor(to_tensor(image), quality), squeeze_channel=image.ndim == 2)
