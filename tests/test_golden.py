"""Golden outputs of the bundled models: X_out1 and X_out2 on a fixed JPEG crop.

Every part of the network and every trained weight shapes these numbers, so any change to
the forward pass of a released model (an equation, the wiring, an FFT's normalisation, the
loading of its weights) shows here, while precision does not: fp32 and bf16 autocast must
both stay within the tolerance below, about four times bf16's own deviation from fp32
(mean absolute difference 5e-4, largest 3e-3, measured on this input when it was made).

The inputs are stored with the outputs (``data/golden_bundled.npz``): a 32x32 crop of
scikit-image's astronaut (public domain) at JPEG quality 20, colour and grey (BT.601 Y),
restored at QF 20. When the bundled weights change, regenerate the file from the new ones
and commit it with them::

    python tests/test_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from d2lnet.pretrained import PRETRAINED, load_model

GOLDEN = Path(__file__).parent / "data" / "golden_bundled.npz"
QUALITY = 20
MEAN_TOLERANCE = 2e-3  # on [0, 1] images
MAX_TOLERANCE = 1.5e-2


def _as_batch(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image.astype(np.float32) / 255)
    return x.permute(2, 0, 1)[None] if x.ndim == 3 else x[None, None]


def _outputs(name: str, image: np.ndarray, bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    model = load_model(name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(_as_batch(image), QUALITY)
    return out.out1.float().numpy(), out.out2.float().numpy()


def _kind(name: str) -> str:
    return "gray" if name.endswith("gray") else "color"


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_bundled_model_reproduces_its_golden_outputs(name, bf16):
    golden = np.load(GOLDEN)
    kind = _kind(name)
    for label, got in zip(("out1", "out2"), _outputs(name, golden[f"input_{kind}"], bf16)):
        expected = golden[f"{kind}_{label}"]
        difference = np.abs(got - expected)
        assert difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE, (
            f"{name} {label}: mean |diff| {difference.mean():.2e}, max {difference.max():.2e} "
            "(new weights? regenerate with `python tests/test_golden.py`)"
        )


def test_golden_outputs_are_not_the_input():
    """The golden file pins a restoration, not an identity map."""
    golden = np.load(GOLDEN)
    for kind in ("color", "gray"):
        x = _as_batch(golden[f"input_{kind}"]).numpy()
        for label in ("out1", "out2"):
            assert np.abs(golden[f"{kind}_{label}"] - x).mean() > 2 * MEAN_TOLERANCE


def regenerate() -> None:
    """Write ``GOLDEN`` from the bundled weights in fp32."""
    from skimage.data import astronaut

    from d2lnet.jpeg import roundtrip
    from d2lnet.metrics import rgb_to_y

    clean = astronaut()[120:152, 200:232]  # hair, helmet edge and background: texture and edges
    arrays = {"input_color": roundtrip(clean, QUALITY), "input_gray": roundtrip(rgb_to_y(clean), QUALITY)}
    for name in sorted(PRETRAINED):
        kind = _kind(name)
        arrays[f"{kind}_out1"], arrays[f"{kind}_out2"] = _outputs(name, arrays[f"input_{kind}"])
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, **arrays)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    regenerate()
