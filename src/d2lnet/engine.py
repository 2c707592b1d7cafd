"""The inference engine: a D2LNet run on images of any size, whole or in tiles.

Tiles are aligned to the 8x8 JPEG grid (every tile starts at a multiple of 8), so that each
tile sees its blocking artifacts at the same phase as the training crops, which are
compressed after cropping. Overlapping tiles are blended with weights that ramp linearly
across the overlap, which hides tile seams. If a whole image runs out of memory, it is
restored again in tiles. Results are deterministic: the same image, model, device, tile and
precision give the same pixels on every run.

The quality factor is an ``int`` from 1 to 100, or None when it is unknown (a blind model
then uses the embedding it learned for images of unknown quality); models without quality
conditioning ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from d2lnet.cards import overlap_for
from d2lnet.device import Compiled, Precision, autocast, available_memory, resolve_device, resolve_precision
from d2lnet.fusion import fuse_activations
from d2lnet.images import to_image, to_tensor
from d2lnet.jpeg import BLOCK as JPEG_BLOCK
from d2lnet.model import D2LNet
from d2lnet.winograd import winograd_pays

TileSpec = int | None | Literal["auto"]  # pixels, whole images, or chosen per image by auto_tile


def tile_layout(size: int, tile: int, overlap: int, align: int = JPEG_BLOCK) -> tuple[list[int], int, int]:
    """Tiles along one side of ``size`` pixels: their start offsets, their common side, and the
    padded size they cover.

    As few tiles as tiles of at most ``tile`` pixels overlapping by ``overlap`` need, each then
    shrunk to the smallest multiple of ``align`` that still covers the side, so that no tile
    computes padding it could do without (five tiles of 256 over 1000 pixels would cover 1152;
    five of 232 cover 1032). Starts are multiples of ``side - overlap``, hence of ``align`` when
    ``overlap`` is one.
    """
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    side = min(tile, align * math.ceil((size + (count - 1) * overlap) / (count * align)))
    step = side - overlap
    return [i * step for i in range(count)], side, (count - 1) * step + side


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
# Pixels per batch of tiles: four tiles of 256. Batches of 1 to 12 such tiles ran alike, but a batch
# of four 96px tiles spends much of its time in the ~1000 operator calls of a forward pass: a grey
# 768x512 image in tiles of 96 took 4.7 s in batches of 4, 3.6 s in batches of 28 (2 threads).
TILE_BATCH_PIXELS = 4 * 256 * 256


def host_bytes(height: int, width: int, channels: int) -> int:
    """Host memory to restore an image, besides the network's own (which tiling bounds): the
    decoded image and its uint8 copies, the float input and its padded copy, the blended
    output and the blending weights."""
    return height * width * (channels * (4 * 1 + 3 * 4) + 4)


def auto_tile(model: D2LNet, height: int, width: int, device: torch.device, precision: Precision = "fp32") -> int | None:
    """The tile size that ``--tile auto`` uses for an image: the model card's preferred tile
    (:attr:`d2lnet.pretrained.ModelCard.tile`, None meaning whole images) unless the whole image would need
    more than half of the free memory, in which case tiles of ``FALLBACK_TILE``."""
    card = getattr(model, "card", None)  # set by load_model; a model built in Python has none
    preferred = card.tile if card is not None else None
    if preferred is not None:
        return preferred
    need = height * width * model.config.width * _BYTES_PER_PIXEL_PER_WIDTH * (0.5 if precision != "fp32" else 1.0)
    return FALLBACK_TILE if need > available_memory(device) / 2 else None


def inference_layout(device: torch.device, precision: Precision, compile: bool = False) -> torch.memory_format:
    """The memory layout the model runs in: channels-last, oneDNN's fast layout on CPUs (12% faster
    in fp32, 1.6x in bf16) and cuDNN's for bf16; but the plain one where NNPACK's Winograd
    convolutions, which read it, pay (d2lnet.winograd: decided by the threads at the time of asking)."""
    if precision != "fp32":
        return torch.channels_last
    if device.type != "cpu" or not compile and winograd_pays(device, precision):
        return torch.contiguous_format
    return torch.channels_last


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "memory" in str(error).lower()


class Restorer:
    """Runs a model on whole images or on tiles.

    Args:
        model: a D2LNet (its weights are moved to ``device``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (:func:`d2lnet.device.resolve_device`).
        precision: ``"auto"`` (:mod:`d2lnet.device`), ``"fp32"``, ``"bf16"`` autocast
            (CUDA or CPU), or ``"fp16"`` autocast (CUDA only). FFTs always run in fp32.
        tile: tile side in pixels (a multiple of 8), None for the whole image at once, or
            ``"auto"`` to choose per image with :func:`auto_tile`. A whole image that runs out
            of memory is restored again in tiles.
        overlap: overlap between neighbouring tiles (a multiple of 8); None: the one the model's
            card records (:func:`d2lnet.cards.overlap_for`).
        tile_batch: how many tiles go through the network together; None: as many as hold
            ``TILE_BATCH_PIXELS`` pixels (4 tiles of 256, 28 of 96).
        tta: average the restorations of the 8 flips and rotations of the image (a self-ensemble,
            8 times the work; see :func:`self_ensemble`).
        compile: run the model through ``torch.compile`` (:class:`d2lnet.device.Compiled`):
            compiling takes a minute on a small CPU (seconds from Inductor's cache later), and on
            the CPU it is barely faster than the eager model with its fused convolutions
            (:mod:`d2lnet.fusion`); falls back to eager with a warning if it fails.

    ``on_tiles``, when set, is called with the number of tiles each time a batch of them is done.
    """

    def __init__(
        self,
        model: D2LNet,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: TileSpec = None,
        overlap: int | None = None,
        tile_batch: int | None = None,
        tta: bool = False,
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        precision = resolve_precision(precision, self.device)
        if overlap is None:
            overlap = overlap_for(model)
        if isinstance(tile, int):
            if tile % JPEG_BLOCK or tile % model.config.stride or tile <= 0:
                raise ValueError(f"tile must be a positive multiple of {max(JPEG_BLOCK, model.config.stride)}, got {tile}")
            if overlap % JPEG_BLOCK or not 0 <= overlap < tile // 2 + 1:
                raise ValueError(f"overlap must be a multiple of 8 and at most half the tile, got {overlap}")
        elif tile not in (None, "auto"):
            raise ValueError(f"tile must be a number of pixels, None or 'auto', got {tile!r}")
        elif overlap % JPEG_BLOCK or overlap < 0:
            raise ValueError(f"overlap must be a non-negative multiple of 8, got {overlap}")
        if tile_batch is not None and tile_batch < 1:
            raise ValueError(f"tile_batch must be a positive number of tiles or None, got {tile_batch}")
        self.memory_format = inference_layout(self.device, precision, compile)
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        # Compiled: Inductor fuses on its own. Eager on the CPU: every convolution through oneDNN, with
        # its activation where one follows (d2lnet.fusion); elsewhere the copy would only run the plain modules.
        if compile:
            self.net: D2LNet | Compiled = Compiled(self.model)
        else:
            self.net = fuse_activations(self.model) if self.device.type == "cpu" else self.model
        self.precision = precision
        self.tile, self.overlap, self.tile_batch, self.tta = tile, overlap, tile_batch, tta
        self.on_tiles: Callable[[int], None] | None = None

    @property
    def channels(self) -> int:
        return self.model.config.in_channels

    def tile_for(self, height: int, width: int) -> int | None:
        """The tile side used for an image of this size, or None for the whole image at once."""
        tile = auto_tile(self.model, height, width, self.device, self.precision) if self.tile == "auto" else self.tile
        return None if tile is None or max(height, width) <= tile else tile

    def _fallback_tile(self, height: int, width: int) -> int | None:
        """The tile for a retry after a whole image ran out of memory: the largest of
        FALLBACK_TILE, FALLBACK_TILE / 2, ... that is smaller than the image and fits the overlap."""
        tile = FALLBACK_TILE
        while tile >= max(height, width):
            tile //= 2
        fits = tile >= 2 * self.overlap and tile % JPEG_BLOCK == 0 and tile % self.model.config.stride == 0
        return tile if fits and tile > 0 else None

    def _forward(self, x: torch.Tensor, quality: int | None) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=self.memory_format)
        # A tensor, not a number: a compiled model would otherwise be specialised (and
        # recompiled) for every quality factor.
        qf = None if quality is None else torch.tensor([float(quality)], device=self.device)
        with autocast(self.device, self.precision):
            return self.net(x, qf).out2.float()

    def batch_for(self, tile_h: int, tile_w: int) -> int:
        """How many tiles of this size go through the network together."""
        return self.tile_batch or max(1, TILE_BATCH_PIXELS // (tile_h * tile_w))

    def _tiling(self, height: int, width: int) -> tuple[int, int, int]:
        """(tiles in one pass, tile height, tile width) for an image of this size: one tile of its
        size if it is restored whole."""
        tile = self.tile_for(height, width)
        if tile is None:
            return 1, height, width
        (rows, tile_h, _), (cols, tile_w, _) = self._layout(height, tile), self._layout(width, tile)
        return len(rows) * len(cols), tile_h, tile_w

    def tiles_per_batch(self, height: int, width: int) -> int:
        """How many tiles of an image of this size go through the network together (1: whole)."""
        count, tile_h, tile_w = self._tiling(height, width)
        return 1 if count == 1 else self.batch_for(tile_h, tile_w)

    def tiles_for(self, height: int, width: int) -> int:
        """How many tiles an image of this size is restored in (1: whole), over all TTA passes."""
        return self._tiling(height, width)[0] * (len(DIHEDRAL) if self.tta else 1)

    @torch.inference_mode()
    def restore_tensor(self, x: torch.Tensor, quality: int | None = None, strength: float = 1.0) -> torch.Tensor:
        """Restore a float (1, C, H, W) image in [0, 1]; returns it on the CPU, unclamped.
        ``strength`` < 1 applies the restoration in part (:func:`blend`)."""
        check_strength(strength)
        if self.tta:
            restored = self_ensemble(x, lambda y: self._restore_once(y, quality))
        else:
            restored = self._restore_once(x, quality)
        return blend(x.to(restored.device), restored, strength)

    def _restore_once(self, x: torch.Tensor, quality: int | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tile = self.tile_for(h, w)
        if tile is not None:
            return self._restore_tiled(x, quality, tile)
        try:
            return self._forward(x, quality).cpu()
        except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
            tile = self._fallback_tile(h, w)
            if not is_out_of_memory(error) or tile is None:
                raise
        # Retried outside the except block, so that the failed attempt's tensors (which its
        # traceback keeps alive) are freed before the tiles need the memory.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return self._restore_tiled(x, quality, tile)

    def _layout(self, size: int, tile: int) -> tuple[list[int], int, int]:
        return tile_layout(size, tile, self.overlap, math.lcm(JPEG_BLOCK, self.model.config.stride))

    def _restore_tiled(self, x: torch.Tensor, quality: int | None, tile: int) -> torch.Tensor:
        _, c, h, w = x.shape
        overlap = self.overlap
        rows, tile_h, padded_h = self._layout(h, tile)
        cols, tile_w, padded_w = self._layout(w, tile)
        x = torch.nn.functional.pad(x, (0, padded_w - w, 0, padded_h - h), mode="replicate")
        out = torch.zeros(1, c, padded_h, padded_w)
        weight = torch.zeros(1, 1, padded_h, padded_w)
        boxes = [(top, left) for top in rows for left in cols]
        # Blend weights ramp only at inner edges: one ramp per row and per column of tiles.
        row_ramps = {top: blend_ramp(tile_h, overlap, top > 0, top + tile_h < padded_h) for top in rows}
        col_ramps = {left: blend_ramp(tile_w, overlap, left > 0, left + tile_w < padded_w) for left in cols}
        per_batch = self.batch_for(tile_h, tile_w)
        for i in range(0, len(boxes), per_batch):
            batch = boxes[i : i + per_batch]
            tiles = torch.cat([x[..., top : top + tile_h, left : left + tile_w] for top, left in batch])
            restored = self._forward(tiles, quality).cpu()
            if self.on_tiles is not None:
                self.on_tiles(len(batch))
            for (top, left), y in zip(batch, restored):
                wt = row_ramps[top][:, None] * col_ramps[left][None, :]
                out[0, :, top : top + tile_h, left : left + tile_w] += y * wt
                weight[0, 0, top : top + tile_h, left : left + tile_w] += wt
        return (out / weight)[..., :h, :w]

    def restore(self, image: np.ndarray, quality: int | None = None, strength: float = 1.0) -> np.ndarray:
        """Restore a uint8 (H, W) or (H, W, C) array whose channels match the model's; returns uint8.
        ``strength`` < 1 applies the restoration in part (:func:`blend`), before rounding."""
        image = np.asarray(image)
        channels = 1 if image.ndim == 2 else image.shape[2]
        if channels != self.channels:
            kind = "grey" if self.channels == 1 else "RGB"
            raise ValueError(f"this model restores {kind} images ({self.channels} channel(s)); got {channels} channel(s)")
        return to_image(self.restore_tensor(to_tensor(image)[None], quality, strength)[0]).reshape(image.shape)


def check_strength(strength: float) -> None:
    """Raise ValueError unless ``strength`` is a number from 0 to 1."""
    if not 0 <= strength <= 1:  # also refuses nan
        raise ValueError(f"strength must be a number from 0 to 1, got {strength}")


def blend(x: torch.Tensor, restored: torch.Tensor, strength: float) -> torch.Tensor:
    """``x + strength * (restored - x)``: the restoration applied in part, for a lighter touch
    (``--strength``). 0 gives the input back, 1 the restoration; in between, every pixel moves
    that fraction of the way from the input to the restoration as it is output (clamped to
    [0, 1]), in float, before rounding."""
    return restored if strength == 1 else x + strength * (restored.clamp(0, 1) - x)


# --------------------------------------------------------------------------- self-ensemble

# The 8 flips and rotations of the square: (quarter turns, then a left-right flip).
DIHEDRAL = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """``x`` (..., H, W) turned ``turns`` quarter turns counter-clockwise, then flipped left-right."""
    x = torch.rot90(x, turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


def undo_dihedral(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of :func:`dihedral`."""
    return torch.rot90(x.flip(-1) if flip else x, -turns, dims=(-2, -1))


def self_ensemble(x: torch.Tensor, restore: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The mean of ``restore`` over the 8 flips and rotations of ``x`` (1, C, H, W), each undone.

    The JPEG grid stays aligned: the image is first padded (replicating its last row and column,
    as JPEG encoders pad partial blocks) to a multiple of 8 on each side, so that every flip and
    rotation maps 8x8 blocks onto 8x8 blocks, each starting at a multiple of 8.
    """
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (0, -w % JPEG_BLOCK, 0, -h % JPEG_BLOCK), mode="replicate")
    total = sum(undo_dihedral(restore(dihedral(padded, turns, flip)), turns, flip) for turns, flip in DIHEDRAL)
    return (total / len(DIHEDRAL))[..., :h, :w]


def parse_tile(text: str) -> TileSpec:
    """A tile given as text (``--tile``): ``"auto"``, ``"0"`` (None: whole images) or a side in pixels."""
    if text == "auto":
        return "auto"
    try:
        tile = int(text)
    except ValueError:
        tile = -1
    if tile < 0 or tile % JPEG_BLOCK:
        raise ValueError(f"--tile must be 'auto', 0 (whole images) or a positive multiple of 8, got {text!r}")
    return tile or None
