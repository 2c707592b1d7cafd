"""What the benchmark scripts share: naming the machine they ran on, the held-out images."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

from d2lnet import jpeg
from d2lnet.data import split_holdout
from d2lnet.images import find_images_in, read_array, to_mode


def cpu_name() -> str:
    """The processor's model name (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector extensions that decide PyTorch's CPU speed: AMX, AVX-512 (with BF16), AVX2."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return "unknown"
    named = [("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
    isa = ", ".join(label for flag, label in named if flag in flags) or "no AVX2"
    # PyTorch's own kernels and oneDNN's can be held to a lower ISA, e.g. to measure an AVX2-only CPU here.
    caps = [f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(name)]
    return f"{isa}; held to {', '.join(caps)}" if caps else isa


def named(specs: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` command-line items (code trees, run folders) as a dict, in their order."""
    pairs = [spec.partition("=") for spec in specs]
    if bad := [spec for spec, (name, sep, value) in zip(specs, pairs) if not (name and sep and value)]:
        raise SystemExit(f"expected NAME=VALUE, got {bad[0]!r}")
    return {name: value for name, _, value in pairs}


def write_results(out: str | Path | None, document: dict, markdown: str) -> None:
    """``OUT.json`` (the full document) and ``OUT.md`` (its tables), when ``out`` is given (its folder
    made if need be); the tables to stdout."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{out}.json").write_text(json.dumps(document, indent=2) + "\n")
        Path(f"{out}.md").write_text(markdown.rstrip("\n") + "\n")
    print(markdown)


def held_out_images(
    data: Path, fraction: float, limit: int, gray: bool, never_jpeg: bool = False, match: str = ""
) -> list[tuple[str, np.ndarray]]:
    """The first ``limit`` held-out training images (the split the recipes validate on), cut to the 8x8 grid.

    ``never_jpeg``: only those whose pixels show no JPEG quality. Most held-out images are decoded
    JPEGs, which favours models trained to reproduce JPEG targets over ones trained without them.
    ``match``: only those whose file name contains it (e.g. ``urban100``, the largest).
    """
    _, held = split_holdout(find_images_in([data]), fraction)
    images = []
    for path in held:
        if len(images) == limit:
            break
        if match not in path.name:
            continue
        image = read_array(path)
        if never_jpeg and jpeg.estimate_quality_from_pixels(image) is not None:
            continue
        image = to_mode(image, gray)
        h, w = image.shape[:2]
        images.append((path.name, np.ascontiguousarray(image[: h // 8 * 8, : w // 8 * 8])))
    return images
