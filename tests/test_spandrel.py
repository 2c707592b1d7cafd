"""spandrel support (d2lnet.spandrel_arch): detection and hyper-parameters from state dicts, checked
against the configurations the state dicts were built from; then, where spandrel can be imported,
a release file loaded through ``spandrel.ModelLoader`` against the model's own forward.

spandrel needs torchvision, which PyPI's wheels do not provide beside torch 2.13.0 (CPU); the
README's "chaiNNer / ComfyUI (spandrel)" section gives the separate environment that runs the
spandrel tests (torch 2.14.1, torchvision 0.29.1).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_model

from d2lnet.jpeg import roundtrip
from d2lnet.model import D2LNet, D2LNetConfig, build
from d2lnet.pretrained import ModelCard, load_model, save_release
from d2lnet.spandrel_arch import detect, infer_config, restore_pixels_only


def _spandrel_reason() -> str | None:
    """Why spandrel cannot be used here, or None."""
    if importlib.util.find_spec("spandrel") is None:
        return "spandrel is not installed (pip install spandrel; it needs torchvision)"
    try:
        import spandrel  # noqa: F401
    except Exception as error:  # torchvision built for another torch fails here, in many ways
        return f"spandrel does not import beside this torch ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    return None


SPANDREL_UNUSABLE = _spandrel_reason()
needs_spandrel = pytest.mark.skipif(SPANDREL_UNUSABLE is not None, reason=SPANDREL_UNUSABLE or "")

CONFIGS = [
    D2LNetConfig(in_channels=3, width=8, depth=3, quality_conditioning=True, quality_dim=16),
    D2LNetConfig(in_channels=1, width=12, depth=2, quality_conditioning=True, quality_dim=24),
    D2LNetConfig(in_channels=3, width=8, depth=1),
    D2LNetConfig(in_channels=1, width=4, depth=4, quality_conditioning=False),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"c{c.in_channels}-w{c.width}-d{c.depth}-q{int(c.quality_conditioning)}"
)
def test_infer_config_from_shapes(config: D2LNetConfig) -> None:
    state = D2LNet(config).state_dict()
    assert detect(state)
    assert infer_config(state) == config


def test_bundled_configuration_is_inferred() -> None:
    config = build("d2lnet-s").config
    assert infer_config(D2LNet(config).state_dict()) == config


def test_shapeless_settings_come_from_the_header() -> None:
    """The released layout has the paper's shapes: only a release file's header tells them apart."""
    config = replace(build("d2lnet-xs").config, domain_order="released", fft_norm="backward", block_identity=True, relu_slope=0.1)
    state = D2LNet(config).state_dict()
    assert infer_config(state, {"d2lnet.config": json.dumps(config.to_dict())}) == config
    defaults = D2LNetConfig()
    assert infer_config(state) == replace(
        config,
        domain_order=defaults.domain_order,
        fft_norm=defaults.fft_norm,
        block_identity=False,
        relu_slope=defaults.relu_slope,
    )


def test_header_that_contradicts_the_weights_is_refused() -> None:
    state = D2LNet(CONFIGS[0]).state_dict()
    header = {"d2lnet.config": json.dumps(replace(CONFIGS[0], width=16).to_dict())}
    with pytest.raises(ValueError, match="width"):
        infer_config(state, header)


def test_other_state_dicts_are_not_detected() -> None:
    unet = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3)).state_dict()
    assert not detect(unet)
    assert not detect({k: v for k, v in D2LNet(CONFIGS[0]).state_dict().items() if not k.startswith("merge.")})
    with pytest.raises(ValueError, match="not a D2LNet"):
        infer_config(unet)


def test_legacy_keys_are_detected_and_load() -> None:
    """Weights saved when the quality FiLM was named ``modulation`` (the bundled files' era)."""
    model = tiny_model("busy")
    legacy = {k.replace(".film.", ".modulation."): v for k, v in model.state_dict().items()}
    assert legacy.keys() != model.state_dict().keys()
    config = infer_config(legacy)
    assert config == model.config
    rebuilt = D2LNet(config)
    rebuilt.load_state_dict(legacy)
    image = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(image).out2, model(image).out2)


def test_call_passes_the_quality_the_pixels_show_else_an_unknown_one() -> None:
    """Noise shows no JPEG quantization: the call is forward with an unknown quality (None), not
    a known one. A batch of a decoded JPEG (Pillow, quality 30) and noise: 30 and unknown."""
    model = tiny_model("busy")
    noise = torch.rand(1, 3, 64, 64)
    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([120 + 60 * np.sin(x / 7 + y / 9)] * 3, axis=-1) + rng.normal(0, 12, (64, 64, 3))
    decoded = torch.from_numpy(np.array(roundtrip(np.clip(smooth, 8, 247).astype(np.uint8), 30))).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        got = restore_pixels_only(model, noise)
        assert torch.equal(got, model(noise, None).out2)
        assert not torch.allclose(got, model(noise, torch.tensor([10.0])).out2)
        batch = torch.cat([decoded, noise])
        expected = model(batch, torch.tensor([30.0, float("nan")])).out2
        assert torch.equal(restore_pixels_only(model, batch), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_call_in_half_precision(dtype: torch.dtype) -> None:
    """supports_half and supports_bfloat16 are declared: the network runs in them as it is."""
    model = tiny_model("busy")
    image = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        expected = restore_pixels_only(model, image)
        got = restore_pixels_only(tiny_model("busy").to(dtype), image.to(dtype))
    assert got.dtype == dtype
    assert (got.float() - expected).abs().max().item() < 0.05


# --------------------------------------------------------------------------- through spandrel


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return save_release(tiny_model("busy"), tmp_path / "tiny-busy.safetensors", ModelCard("tiny-busy"))


@needs_spandrel
def test_spandrel_loads_a_release_file(release: Path) -> None:
    import spandrel

    from d2lnet.spandrel_arch import register

    register()
    register()  # twice is harmless
    descriptor = spandrel.ModelLoader().load_from_file(release)
    assert descriptor.architecture.id == "D2LNet"
    assert descriptor.purpose == "Restoration" and descriptor.scale == 1
    assert descriptor.input_channels == descriptor.output_channels == 3
    assert descriptor.size_requirements.multiple_of == 4  # d2lnet-xs: depth 3
    assert descriptor.supports_half and descriptor.supports_bfloat16

    reference = load_model(release)
    image = torch.rand(1, 3, 24, 36)
    with torch.no_grad():
        expected = reference(image, None).out2.clamp(0, 1)
    got = descriptor(image)
    assert (got - expected).abs().max().item() < 1e-6


@needs_spandrel
def test_spandrel_detects_d2lnet_before_other_architectures() -> None:
    """Loaded through the whole registry: no architecture that spandrel ships claims D2LNet's keys."""
    import spandrel

    from d2lnet.spandrel_arch import register

    register()
    for arch in spandrel.MAIN_REGISTRY.architectures("detection"):
        if arch.architecture.id != "D2LNet":
            assert not arch.detect(D2LNet(CONFIGS[0]).state_dict()), arch.architecture.id
