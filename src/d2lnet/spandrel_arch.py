"""D2LNet for spandrel, the model loader of chaiNNer and ComfyUI.

spandrel recognises a model by the keys of its state dict, infers its hyper-parameters from
tensor shapes, and wraps it in an ``ImageModelDescriptor`` that hosts call with pixels only.
This module gives it D2LNet; spandrel itself is imported only by :func:`register` and
:func:`arch_support`, so ``import d2lnet.spandrel_arch`` works without it::

    import spandrel
    from d2lnet.spandrel_arch import register

    register()  # adds D2LNet to spandrel.MAIN_REGISTRY
    model = spandrel.ModelLoader().load_from_file("d2lnet-s-color.safetensors")
    restored = model(image)  # (1, 3, H, W) in [0, 1]

What shapes tell (:func:`infer_config`): ``in_channels`` and ``width`` (the first convolution),
``depth`` (the number of correction blocks per module), ``quality_conditioning`` (the quality
embedding's weights) and ``quality_dim`` (its size). What they cannot tell, since the layers
and their shapes are the same either way: ``domain_order``, ``fft_norm``, ``block_identity``
and ``relu_slope``. A release file's header records them, but spandrel passes on the tensors
only; without the header they take D2LNetConfig's defaults, which every model this package
ships and trains by default uses. A model trained otherwise (``d2lnet-released``, say) loads
through :func:`d2lnet.load_model` correctly, and through spandrel wrongly.

Hosts give no quality factor, only pixels, so the call passes the quality each image's pixels
show (:func:`d2lnet.jpeg.estimate_quality_from_pixels`: a JPEG's pixels, uncropped and
unscaled, keep its quantization), else an unknown one: the blind models then use the
embedding they learned for images of unknown quality (``benchmarks/unknown_quality.py``
measures both against the quality read from the file).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from d2lnet.images import to_image
from d2lnet.jpeg import estimate_quality_from_pixels
from d2lnet.model import D2LNet, D2LNetConfig

ARCH_ID = "D2LNet"

# Keys that every D2LNet state dict has and no other architecture's is likely to: the two
# feature projections, a correction block's spectral convolution in each stage, SAM's image
# head, the stage merge and the final refinement head.
DETECTION_KEYS = (
    "project1.0.weight",
    "project2.0.weight",
    "stage1.encoder.0.spectral.0.weight",
    "stage2.encoder.0.spectral.0.weight",
    "sam.to_image.weight",
    "merge.weight",
    "refine_out.2.weight",
)
# Settings that tensor shapes cannot reveal (see the module's docstring).
SHAPELESS_FIELDS = ("domain_order", "fft_norm", "block_identity", "relu_slope")


def detect(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` looks like a D2LNet's (spandrel's ``detect``)."""
    return all(key in state_dict for key in DETECTION_KEYS)


def infer_config(state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> D2LNetConfig:
    """The :class:`D2LNetConfig` of a D2LNet state dict, from its tensor shapes.

    ``metadata``, a release file's safetensors header, supplies what shapes cannot tell
    (:data:`SHAPELESS_FIELDS`); without it those take D2LNetConfig's defaults. Raises
    ValueError if the state dict is not a D2LNet's or contradicts the metadata.
    """
    if not detect(state_dict):
        missing = [key for key in DETECTION_KEYS if key not in state_dict]
        raise ValueError(f"not a D2LNet state dict (no {', '.join(missing)})")
    width, in_channels = state_dict["project1.0.weight"].shape[:2]
    depth = len({key.split(".")[2] for key in state_dict if key.startswith("stage1.encoder.")})
    quality = "quality.unknown" in state_dict
    config = D2LNetConfig(in_channels=int(in_channels), width=int(width), depth=depth, quality_conditioning=quality)
    if quality:
        config = replace(config, quality_dim=int(state_dict["quality.unknown"].shape[0]))
    if metadata and "d2lnet.config" in metadata:
        declared = D2LNetConfig.from_dict(json.loads(metadata["d2lnet.config"]))
        inferred = {k: v for k, v in config.to_dict().items() if k not in SHAPELESS_FIELDS}
        if not quality:  # quality_dim is unused, and unseen, without quality conditioning
            inferred.pop("quality_dim")
        conflicts = {k: (v, getattr(declared, k)) for k, v in inferred.items() if getattr(declared, k) != v}
        if conflicts:
            raise ValueError(f"the weights contradict the header's configuration: {conflicts} (weights, header)")
        config = declared
    return config


def pixel_qualities(image: torch.Tensor) -> torch.Tensor:
    """The JPEG quality each image of ``image`` (B, C, H, W) in [0, 1] shows in its 8-bit pixels,
    NaN where it shows none (:func:`d2lnet.jpeg.estimate_quality_from_pixels`): (B,) float32."""
    found = [estimate_quality_from_pixels(to_image(one)) for one in image]
    return torch.tensor([float("nan") if q is None else float(q) for q in found])


def restore_pixels_only(model: D2LNet, image: torch.Tensor) -> torch.Tensor:
    """spandrel's call function: X_out2 for ``image`` (B, C, H, W) in [0, 1], told the quality its
    pixels show (:func:`pixel_qualities`), in the image's dtype (the network runs in fp16 and bf16
    as it is; its FFTs in fp32)."""
    quality = pixel_qualities(image) if model.config.quality_conditioning else None
    return model(image, quality).out2.to(image.dtype)


def _tags(config: D2LNetConfig) -> list[str]:
    tags = [f"{config.width}nf", f"{config.depth} levels"]
    if config.quality_conditioning:
        tags.append("blind (any JPEG quality)")
    return tags


def arch_support() -> Any:
    """A ``spandrel.ArchSupport`` for D2LNet. Needs spandrel."""
    import spandrel

    class D2LNetArch(spandrel.Architecture[D2LNet]):
        def __init__(self) -> None:
            super().__init__(id=ARCH_ID, name="D2LNet", detect=detect)

        def load(self, state_dict: spandrel.StateDict) -> spandrel.ImageModelDescriptor[D2LNet]:
            config = infer_config(state_dict)
            return spandrel.ImageModelDescriptor(
                D2LNet(config),
                state_dict,
                architecture=self,
                purpose="Restoration",
                tags=_tags(config),
                supports_half=True,
                supports_bfloat16=True,
                scale=1,
                input_channels=config.in_channels,
                output_channels=config.in_channels,
                # The U-Net halves the image depth - 1 times; spandrel pads other sizes (by reflection).
                size_requirements=spandrel.SizeRequirements(minimum=config.stride, multiple_of=config.stride),
                tiling=spandrel.ModelTiling.SUPPORTED,
                call_fn=restore_pixels_only,
            )

    return spandrel.ArchSupport.from_architecture(D2LNetArch())


def register(registry: Any = None) -> None:
    """Add D2LNet to ``registry`` (default: ``spandrel.MAIN_REGISTRY``, which every
    ``spandrel.ModelLoader()`` uses); registering twice is harmless. Needs spandrel."""
    import spandrel

    (registry if registry is not None else spandrel.MAIN_REGISTRY).add(arch_support(), ignore_duplicates=True)
