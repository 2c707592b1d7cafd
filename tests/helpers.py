"""Small models for tests (imported by the test files: pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch

from d2lnet.model import D2LNet, build


def tiny_model(kind: Literal["identity", "busy"] = "busy", channels: int = 3, seed: int = 3, **overrides) -> D2LNet:
    """A d2lnet-xs in eval mode. ``identity``: as initialised, its three image-producing convs are
    zero and X_out1 = X_out2 = X_in exactly. ``busy``: those convs get random weights, so the
    network changes its input like a (badly) trained one would."""
    torch.manual_seed(seed)
    model = build("d2lnet-xs", in_channels=channels, **overrides)
    if kind == "busy":
        with torch.no_grad():
            for conv in (model.sam.to_image, model.refine[-1], model.refine_out[-1]):
                conv.weight.normal_(0, 0.05)
                conv.bias.normal_(0, 0.05)
    return model.eval()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch on ``threads`` threads meanwhile (the tests' own count afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
