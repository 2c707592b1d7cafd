"""Shared fixtures: tiny models, small images, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from d2lnet import winograd

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("D2LNET_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $D2LNET_DATA); tests that need it are skipped without it."""
    if not (SHARED_DATA / "test").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Test models and images are tiny: one thread is fastest, and on a shared CPU (a training
    run beside the tests) OpenMP threads waiting on each other slow PyTorch down many times.
    Each test starts on one, whatever the command an earlier test ran chose."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release files of untrained d2lnet-xs models, colour and grey."""
    from d2lnet.model import build
    from d2lnet.pretrained import ModelCard, save_release

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for kind, channels in (("color", 3), ("gray", 1)):
        torch.manual_seed(1)
        model = build("d2lnet-xs", in_channels=channels)
        paths[kind] = save_release(model, folder / f"tiny-{kind}.safetensors", ModelCard(f"tiny-{kind}", "untrained, for tests"))
    return paths


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A 45x61 RGB uint8 image with edges and texture (odd sizes on purpose)."""
    y, x = np.mgrid[0:45, 0:61]
    r = 128 + 100 * np.sin(x / 5.0)
    g = np.where((x // 8 + y // 8) % 2 == 0, 200, 50)
    b = 255 * (y / 44.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@pytest.fixture
def winograd_everywhere(monkeypatch) -> None:
    """NNPACK's Winograd convolutions taken wherever they may run (``d2lnet.winograd.winograd_pays``:
    one thread, as every test starts, and float32), whatever this CPU's kernels are, if this
    PyTorch has NNPACK (asking also initialises it)."""
    monkeypatch.setattr(winograd, "_nnpack_on_avx2", torch._nnpack_available)
