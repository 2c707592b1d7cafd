"""The inference engine: tiling, blending, memory fallback, precision, determinism.

References are independent of the code under test: hand-computed tile layouts and
weights, a point-wise stand-in model whose exact output is known, and a D2LNet whose
output convolutions are zeroed, which makes it the exact identity map.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from helpers import tiny_model

import d2lnet.device
import d2lnet.engine
from d2lnet.cards import DEFAULT_OVERLAP, ModelCard
from d2lnet.engine import FALLBACK_TILE, Restorer, blend_ramp, is_out_of_memory, tile_layout
from d2lnet.model import D2LNetConfig


class _Output(NamedTuple):
    out1: torch.Tensor
    out2: torch.Tensor


class PointwiseModel(torch.nn.Module):
    """Stands in for a D2LNet: out2 = sigmoid(3x - 1), pixel by pixel, so any tiling gives the same pixels.

    ``max_side`` makes inputs larger than that raise the CPU allocator's out-of-memory error.
    """

    def __init__(self, channels: int = 3, max_side: int | None = None) -> None:
        super().__init__()
        self.config = D2LNetConfig(in_channels=channels, width=8, depth=3)
        self.max_side = max_side
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor, qf=None) -> _Output:
        self.calls.append(tuple(x.shape))
        if self.max_side is not None and max(x.shape[-2:]) > self.max_side:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")
        y = torch.sigmoid(3 * x - 1)
        return _Output(y, y)


def pointwise_reference(image: np.ndarray) -> np.ndarray:
    """What PointwiseModel restores ``image`` to, computed in numpy."""
    y = 1 / (1 + np.exp(-(3 * image.astype(np.float64) / 255 - 1)))
    return np.round(y * 255).astype(np.uint8)


# --------------------------------------------------------------------------- tiles and blending


def test_tile_layout_hand_computed() -> None:
    # Tiles of 8 overlapping by 4 step by 4; enough of them to cover the side, padded to fit.
    assert tile_layout(20, 8, 4, align=4) == ([0, 4, 8, 12], 8, 20)
    assert tile_layout(21, 8, 4, align=4) == ([0, 4, 8, 12, 16], 8, 24)
    assert tile_layout(5, 8, 4) == ([0], 8, 8)
    assert tile_layout(256, 256, 32) == ([0], 256, 256)
    # Five tiles of at most 256 cover 1000 pixels; each needs (1000 + 4 * 32) / 5 = 225.6, so 232.
    assert tile_layout(1000, 256, 32) == ([0, 200, 400, 600, 800], 232, 1032)
    # Two tiles of at most 96 cover 100 pixels: (100 + 32) / 2 = 66, so 72 each, not 96.
    assert tile_layout(100, 96, 32) == ([0, 40], 72, 112)
    # A side shorter than the tile is one tile, rounded up to the grid.
    assert tile_layout(90, 96, 32) == ([0], 96, 96)
    assert tile_layout(50, 96, 32) == ([0], 56, 56)


def test_blend_ramp_hand_computed() -> None:
    ramp = [0.125, 0.375, 0.625, 0.875]  # (i + 0.5) / 4
    assert blend_ramp(8, 4, True, True).tolist() == ramp + ramp[::-1]
    assert blend_ramp(8, 4, False, True).tolist() == [1.0] * 4 + ramp[::-1]
    assert blend_ramp(8, 4, True, False).tolist() == ramp + [1.0] * 4
    assert blend_ramp(8, 0, True, True).tolist() == [1.0] * 8


@pytest.mark.parametrize("size, tile, overlap", [(45, 16, 8), (61, 16, 8), (100, 32, 16), (300, 64, 32)])
def test_blend_weights_sum_to_one(size: int, tile: int, overlap: int) -> None:
    starts, side, padded = tile_layout(size, tile, overlap)
    assert side <= tile and padded >= size and padded - size < 8 * len(starts)
    total = np.zeros(padded)
    for s in starts:
        total[s : s + side] += blend_ramp(side, overlap, s > 0, s + side < padded).numpy()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert all(s % 8 == 0 for s in starts)  # on the JPEG grid


@pytest.mark.parametrize("tile, shape", [(16, (16, 16)), (40, (32, 40))])  # 45x61: 2 rows of 32, 2 columns of 40
def test_tiled_matches_pointwise_reference(rgb_image: np.ndarray, tile: int, shape: tuple[int, int]) -> None:
    model = PointwiseModel()
    restored = Restorer(model, "cpu", tile=tile, overlap=8, tile_batch=3).restore(rgb_image)
    assert len(model.calls) > 1 and all(s[-2:] == shape for s in model.calls)
    np.testing.assert_array_equal(restored, pointwise_reference(rgb_image))


def test_tile_larger_than_image_equals_whole(rgb_image: np.ndarray) -> None:
    model = tiny_model("busy")
    whole = Restorer(model, "cpu", tile=None).restore(rgb_image, 30)
    tiled = Restorer(model, "cpu", tile=64, overlap=16).restore(rgb_image, 30)
    np.testing.assert_array_equal(tiled, whole)
    assert np.abs(whole.astype(int) - rgb_image).max() > 0  # the model does something


def test_whole_image_out_of_memory_falls_back_to_tiles() -> None:
    image = np.random.default_rng(0).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    model = PointwiseModel(max_side=64)
    restored = Restorer(model, "cpu", tile=None, overlap=8).restore(image)
    assert model.calls[0][-2:] == (100, 90)  # tried whole first
    # then FALLBACK_TILE halved to fit: tiles of at most 64, two per side, (100 + 8) / 2 -> 56
    assert all(shape[-2:] == (56, 56) for shape in model.calls[1:])
    np.testing.assert_array_equal(restored, pointwise_reference(image))


def test_other_errors_are_not_taken_for_out_of_memory() -> None:
    class Broken(PointwiseModel):
        def forward(self, x, qf=None):
            raise RuntimeError("expected input of shape (B, 3, H, W)")

    with pytest.raises(RuntimeError, match="expected input"):
        Restorer(Broken(), "cpu").restore(np.zeros((100, 90, 3), np.uint8))


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("memory"))


def test_auto_tile_follows_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    restorer = Restorer(tiny_model("identity"), "cpu", tile="auto")
    monkeypatch.setattr(d2lnet.engine, "available_memory", lambda device: 10**15)
    assert restorer.tile_for(1000, 1000) is None
    monkeypatch.setattr(d2lnet.engine, "available_memory", lambda device: 0)
    assert restorer.tile_for(1000, 1000) == FALLBACK_TILE
    assert restorer.tile_for(100, 100) is None  # smaller than one tile: whole anyway


def test_overlap_defaults_to_the_model_cards() -> None:
    model = PointwiseModel()
    assert Restorer(model, "cpu", tile=64).overlap == DEFAULT_OVERLAP == 32  # no card
    model.card = ModelCard(name="m", inference={"tile": 64, "overlap": 16})
    assert Restorer(model, "cpu", tile="auto").overlap == 16
    assert Restorer(model, "cpu", tile="auto", overlap=8).overlap == 8  # asked for: kept
    model.card = ModelCard(name="m", inference={"tile": 64})
    assert Restorer(model, "cpu", tile="auto").overlap == 32


def test_restorer_validates_arguments() -> None:
    model = tiny_model("identity")
    for kwargs in ({"tile": 20}, {"tile": 64, "overlap": 40}, {"tile": "big"}, {"precision": "fp16"}, {"precision": "half"}):
        with pytest.raises(ValueError):
            Restorer(model, "cpu", **kwargs)


def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, rgb_image) -> None:
    monkeypatch.setattr(d2lnet.device, "cpu_has_native_bf16", lambda: False)
    assert Restorer(tiny_model(), "cpu").precision == "fp32"
    monkeypatch.setattr(d2lnet.device, "cpu_has_native_bf16", lambda: True)
    assert Restorer(tiny_model(), "cpu").precision == "bf16"
    assert Restorer(tiny_model(), "cpu", precision="fp32").precision == "fp32"
    # bf16 autocast moves the output by a few percent of what the (random, busy) model changes
    full = Restorer(tiny_model("busy"), "cpu", precision="fp32").restore(rgb_image, 20).astype(int)
    low = Restorer(tiny_model("busy"), "cpu", precision="bf16").restore(rgb_image, 20).astype(int)
    assert np.abs(full - low).mean() < 0.05 * np.abs(full - rgb_image).mean()


def test_deterministic(rgb_image: np.ndarray) -> None:
    first = Restorer(tiny_model("busy"), "cpu", tile=None).restore(rgb_image, 20)
    second = Restorer(tiny_model("busy"), "cpu", tile=None).restore(rgb_image, 20)
    tiled = [Restorer(tiny_model("busy"), "cpu", tile=16, overlap=8).restore(rgb_image, 20) for _ in range(2)]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(tiled[0], tiled[1])


# --------------------------------------------------------------------------- self-ensemble


def test_tta_is_the_mean_over_the_8_flips_and_rotations_on_the_jpeg_grid(rgb_image: np.ndarray) -> None:
    """Reference in numpy: pad the 45x61 image to 48x64 by replicating its last row and column,
    restore each of the 8 transforms with the plain engine, undo the transform, average, crop."""
    model = tiny_model("busy")
    plain = Restorer(model, "cpu", tile=None, precision="fp32")
    padded = np.pad(rgb_image.astype(np.float32) / 255, ((0, 3), (0, 3), (0, 0)), mode="edge")
    outputs = []
    for flip in (False, True):
        for turns in range(4):
            x = np.rot90(padded, turns)
            x = x[:, ::-1] if flip else x
            y = plain.restore_tensor(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None], 20)[0]
            y = y.numpy().transpose(1, 2, 0)
            y = y[:, ::-1] if flip else y
            outputs.append(np.rot90(y, -turns))
    expected = np.clip(np.round(np.mean(outputs, axis=0)[:45, :61] * 255), 0, 255).astype(np.uint8)
    restored = Restorer(model, "cpu", tile=None, precision="fp32", tta=True).restore(rgb_image, 20)
    assert np.abs(restored.astype(int) - expected).max() <= 1  # float sums in another order
    assert np.mean(restored != plain.restore(rgb_image, 20)) > 0.1  # and it is not the plain restoration


def test_tta_of_a_pointwise_model_is_the_model(rgb_image: np.ndarray) -> None:
    model = PointwiseModel()
    restored = Restorer(model, "cpu", tile=16, overlap=8, tile_batch=4, tta=True).restore(rgb_image)
    np.testing.assert_array_equal(restored, pointwise_reference(rgb_image))
    assert {shape[-2:] for shape in model.calls} == {(16, 16)} and len(model.calls) > 8


def test_tiles_go_in_batches_of_a_pixel_budget(rgb_image: np.ndarray) -> None:
    """By default a batch holds as many tiles as 4 tiles of 256 px hold pixels (28 of 96, 4 of 256,
    1024 of 16); a given tile_batch is kept. Every tile is restored once either way."""
    model = PointwiseModel()
    restorer = Restorer(model, "cpu", tile=16, overlap=8)
    assert (restorer.batch_for(96, 96), restorer.batch_for(256, 256), restorer.batch_for(184, 208)) == (28, 4, 6)
    assert Restorer(model, "cpu", tile=16, overlap=8, tile_batch=3).batch_for(96, 96) == 3
    h, w = rgb_image.shape[:2]
    tiles = restorer.tiles_for(h, w)
    assert restorer.tiles_per_batch(h, w) == 1024 and 1 < tiles <= 1024
    np.testing.assert_array_equal(restorer.restore(rgb_image), pointwise_reference(rgb_image))
    assert [shape[0] for shape in model.calls] == [tiles]
    model.calls.clear()
    Restorer(model, "cpu", tile=16, overlap=8, tile_batch=3).restore(rgb_image)
    assert [shape[0] for shape in model.calls] == [3] * (tiles // 3) + ([tiles % 3] if tiles % 3 else [])
    with pytest.raises(ValueError, match="tile_batch"):
        Restorer(model, "cpu", tile=16, overlap=8, tile_batch=0)
