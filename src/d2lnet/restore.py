"""Restoring images: the inference engine, the Python API and ``d2lnet restore``.

The engine (:class:`Restorer`) runs a D2LNet on images of any size, whole or in
tiles. Tiles are aligned to the 8x8 JPEG grid (every tile starts at a multiple of
8), so that each tile sees its blocking artifacts at the same phase as the
training crops, which are compressed after cropping. Overlapping tiles are blended
with weights that ramp linearly across the overlap, which hides tile seams. If a
whole image runs out of memory, it is restored again in tiles. Results are
deterministic: the same image, model, device, tile and precision give the same
pixels on every run.

Quality factor. The blind models take the JPEG quality factor (QF) as an input.
For a JPEG file it is read from the file's quantization tables
(:func:`d2lnet.jpeg.estimate_quality`); ``--quality N`` (or ``quality=N``)
overrides it. For anything else (a PNG, say, even one decoded from a JPEG) the
quality is *unknown*: the model is given ``qf=None`` and uses the embedding it
learned for images of unknown quality (training drops the QF now and then for
this). Models without quality conditioning ignore the QF.

Channels. Grey images (L, LA) go to the grey model and colour images (RGB,
RGBA) to the colour model unless a model is named. A grey image given to a
colour model is replicated to three channels, restored, and converted back to
grey (Pillow's ITU-R 601-2 luma); a colour image given to a grey model has only
its luma restored (Pillow's JPEG YCbCr: restore Y, keep Cb and Cr). Grey stays
grey and colour stays colour; an alpha channel is carried through unchanged (it
is not restored).

``d2lnet restore`` (:func:`run_cli`) restores files, folders and globs in a batch:
one line on stderr per file that fails (the rest go on), exit status 1 if any did.
Under ``torchrun --nproc-per-node N -m d2lnet restore ...`` each process takes
every N-th file and its own GPU; no process group is needed.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import torch
from PIL import Image

from d2lnet.images import IMAGE_EXTENSIONS, OUTPUT_FORMATS, check_mode, output_format, read_image, write_image
from d2lnet.jpeg import estimate_quality
from d2lnet.model import D2LNet
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY, load_model

Precision = Literal["auto", "fp32", "bf16", "fp16"]
TileSpec = int | None | Literal["auto"]  # pixels, whole images, or chosen per image by auto_tile
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
JPEG_BLOCK = 8
T = TypeVar("T")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16): then bf16 autocast runs
    convolutions about twice as fast as fp32 (measured: 2.3x for d2lnet-s on a Xeon with AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """``"auto"``: bf16 on CUDA devices that support it and on CPUs with native bf16, else fp32.
    (bf16 changes restored images by at most a few thousandths of a dB in PSNR.)"""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


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
    # Contiguous and writable (np.asarray of a PIL image is read-only, which torch warns about).
    chw = np.require(image.transpose(2, 0, 1), requirements=["C", "W"])
    return torch.from_numpy(chw).float().div_(255).unsqueeze(0)


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


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's, or the CPU allocator's RuntimeError."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "memory" in str(error).lower()


class Restorer:
    """Runs a model on whole images or on tiles.

    Args:
        model: a D2LNet (its weights are moved to ``device``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        precision: ``"auto"`` (see :func:`resolve_precision`), ``"fp32"``, ``"bf16"`` autocast
            (CUDA or CPU), or ``"fp16"`` autocast (CUDA only). FFTs always run in fp32.
        tile: tile side in pixels (a multiple of 8), None for the whole image at once, or
            ``"auto"`` to choose per image with :func:`auto_tile`. A whole image that runs out
            of memory is restored again in tiles.
        overlap: overlap between neighbouring tiles (a multiple of 8).
        tile_batch: how many tiles go through the network together.
    """

    def __init__(
        self,
        model: D2LNet,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        tile: TileSpec = None,
        overlap: int = 32,
        tile_batch: int = 4,
    ) -> None:
        self.device = resolve_device(device)
        if precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"fp16 inference needs a CUDA device; use fp32 or bf16 on {self.device}")
        precision = resolve_precision(precision, self.device)
        if isinstance(tile, int):
            if tile % JPEG_BLOCK or tile % model.config.stride or tile <= 0:
                raise ValueError(f"tile must be a positive multiple of {max(JPEG_BLOCK, model.config.stride)}, got {tile}")
            if overlap % JPEG_BLOCK or not 0 <= overlap < tile // 2 + 1:
                raise ValueError(f"overlap must be a multiple of 8 and at most half the tile, got {overlap}")
        elif tile not in (None, "auto"):
            raise ValueError(f"tile must be a number of pixels, None or 'auto', got {tile!r}")
        elif overlap % JPEG_BLOCK or overlap < 0:
            raise ValueError(f"overlap must be a non-negative multiple of 8, got {overlap}")
        # Channels-last: oneDNN's fast layout on CPUs (12% faster in fp32, 1.6x in bf16), cuDNN's for bf16.
        self.memory_format = torch.channels_last if self.device.type == "cpu" or precision != "fp32" else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format).eval()
        self.precision = precision
        self.tile, self.overlap, self.tile_batch = tile, overlap, tile_batch

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
        with torch.autocast(self.device.type, dtype=_AUTOCAST_DTYPES.get(self.precision), enabled=self.precision != "fp32"):
            return self.model(x, quality).out2.float()

    @torch.inference_mode()
    def restore_tensor(self, x: torch.Tensor, quality: int | None = None) -> torch.Tensor:
        """Restore a float (1, C, H, W) image in [0, 1]; returns it on the CPU, unclamped."""
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

    def _restore_tiled(self, x: torch.Tensor, quality: int | None, tile: int) -> torch.Tensor:
        _, c, h, w = x.shape
        overlap = self.overlap
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


# --------------------------------------------------------------------------- the Python API


def default_model(grey: bool) -> str:
    """The bundled model for grey or colour images."""
    return DEFAULT_GRAY if grey else DEFAULT_COLOR


def restore_pil(image: Image.Image, restorer: Restorer, quality: int | None = None) -> Image.Image:
    """Restore a PIL image of mode L, LA, RGB or RGBA; the same mode comes back, alpha untouched.

    A grey image and a colour model: replicated to RGB, restored, and back to grey (ITU-R 601-2
    luma). A colour image and a grey model: only the luma (Pillow's JPEG YCbCr) is restored.
    """
    check_mode(image.mode)
    grey = image.mode in ("L", "LA")
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    base = image.convert("L" if grey else "RGB")  # without the alpha
    if restorer.channels == 1 and not grey:
        y, cb, cr = base.convert("YCbCr").split()
        y = Image.fromarray(restorer.restore(np.asarray(y), quality))
        restored = Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
    elif restorer.channels == 3 and grey:
        rgb = np.repeat(np.asarray(base)[..., None], 3, axis=2)
        restored = Image.fromarray(restorer.restore(rgb, quality)).convert("L")
    else:
        restored = Image.fromarray(restorer.restore(np.asarray(base), quality))
    if alpha is not None:
        restored.putalpha(alpha)
    return restored


def _as_restorer(model: str | Path | D2LNet | Restorer | None, grey: bool, device: str | None) -> Restorer:
    if isinstance(model, Restorer):
        return model
    if model is None:
        model = default_model(grey)
    if isinstance(model, (str, Path)):
        return Restorer(load_model(model), device or "auto", tile="auto")
    if isinstance(model, D2LNet):
        # A model that is passed in stays where it is, unless told otherwise.
        return Restorer(model, device or next(model.parameters()).device, tile="auto")
    raise TypeError(f"model must be None, a name or path, a D2LNet or a Restorer, got {type(model).__name__}")


def restore_image(
    image: Image.Image | np.ndarray,
    model: str | Path | D2LNet | Restorer | None = None,
    quality: int | None = None,
    *,
    device: str | None = None,
) -> Image.Image | np.ndarray:
    """Remove JPEG artifacts from one image.

    Args:
        image: a PIL image (mode L, LA, RGB or RGBA) or a uint8 array (H, W), (H, W, 1),
            (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA. The result has the same
            type, mode or shape; alpha is carried through unchanged. The pixels are taken as
            they are: no EXIF rotation (``PIL.ImageOps.exif_transpose`` does that).
        model: None for the bundled model matching the image (grey or colour), a bundled name
            or weights file (loaded on every call: for many images pass a model or a Restorer),
            a :class:`D2LNet`, or a :class:`Restorer` (its device, tiling and precision apply).
        quality: the JPEG quality factor the image was compressed with (1 to 100). None: read
            from the file for a PIL image opened from a JPEG file (``Image.open("photo.jpg")``),
            else unknown (an array no longer knows it: :func:`d2lnet.jpeg.estimate_quality`
            reads it from the file's bytes).
        device: where a model given by name runs (default: CUDA if available, else the CPU) or
            a D2LNet runs (default: where it is). Whole images, or tiles where memory is short.
    """
    if quality is not None and not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be a JPEG quality factor from 1 to 100 (or None if unknown), got {quality}")
    if isinstance(image, Image.Image):
        if quality is None and image.format in ("JPEG", "MPO") and getattr(image, "filename", ""):
            quality = estimate_quality(image.filename)
        restorer = _as_restorer(model, image.mode in ("L", "LA"), device)
        return restore_pil(image, restorer, quality)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {image.dtype}: scale to 0-255 and convert first")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2, 3, 4))):
        raise ValueError(f"expected an array of shape (H, W) or (H, W, C) with C in 1..4, got {image.shape}")
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    restorer = _as_restorer(model, pil.mode in ("L", "LA"), device)
    return np.array(restore_pil(pil, restorer, quality)).reshape(image.shape)


# --------------------------------------------------------------------------- d2lnet restore


class UsageError(ValueError):
    """A bad command line: reported in one line, exit status 2."""


class ModelError(RuntimeError):
    """A model that cannot be loaded: reported in one line, exit status 1, nothing more is tried."""


def parse_quality(text: str) -> int | None:
    """``--quality``: ``"auto"`` (None: read from each JPEG file) or a quality factor 1 to 100."""
    if text == "auto":
        return None
    try:
        quality = int(text)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be 'auto' or a whole number from 1 to 100, got {text!r}")
    return quality


def parse_tile(text: str) -> TileSpec:
    """``--tile``: ``"auto"``, ``0`` (None: whole images) or a tile side in pixels."""
    if text == "auto":
        return "auto"
    try:
        tile = int(text)
    except ValueError:
        tile = -1
    if tile < 0 or tile % JPEG_BLOCK:
        raise UsageError(f"--tile must be 'auto', 0 (whole images) or a positive multiple of 8, got {text!r}")
    return tile or None


def launch_env() -> tuple[int, int, int | None]:
    """``(rank, world_size, local_rank)`` as set by torchrun; ``(0, 1, None)`` when not launched by it."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None
    except ValueError as error:
        raise UsageError(f"bad WORLD_SIZE, RANK or LOCAL_RANK in the environment: {error}") from None
    if not 0 <= rank < world_size:
        raise UsageError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    return rank, world_size, local_rank


def shard(items: list[T], rank: int, world_size: int) -> list[T]:
    """This process's share of ``items``: every ``world_size``-th one, starting at ``rank``."""
    return items[rank::world_size]


def rank_device(device: str, local_rank: int | None) -> str:
    """``cuda:LOCAL_RANK`` for ``auto`` or ``cuda`` when launched by torchrun with CUDA available;
    otherwise ``device`` unchanged (an explicit ``cuda:N`` is obeyed)."""
    if local_rank is not None and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}"
    return device


@dataclass(frozen=True)
class Job:
    """One input file and where its restoration goes; ``error`` says why it cannot be done."""

    source: Path
    dest: Path | None = None
    error: str | None = None


def _find_images(folder: Path, exclude: Path | None) -> list[Path]:
    """Image files under ``folder``, sorted, without hidden files and folders, and without what is
    under ``exclude`` (the output folder, when it is inside ``folder``: earlier outputs are not inputs)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if exclude is not None and exclude in path.resolve().parents:  # outputs inside an input folder
            continue
        found.append(path)
    return found


def _expand(arg: str, exclude: Path | None) -> list[tuple[Path, Path]]:
    """The files an INPUT argument names, each with the sub-folder its output goes to.

    A file is taken whatever its name; folders (recursively) and globs give image files only.
    """
    path = Path(arg).expanduser()
    if path.is_dir():
        files = _find_images(path, exclude if exclude != path.resolve() else None)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return [(f, f.parent.relative_to(path)) for f in files]
    if path.is_file():
        return [(path, Path())]
    if any(c in arg for c in "*?["):
        matches = (Path(m) for m in sorted(glob.glob(os.path.expanduser(arg), recursive=True)))
        files = [(m, Path()) for m in matches if m.suffix.lower() in IMAGE_EXTENSIONS and m.is_file()]
        if not files:
            raise ValueError("no image files match this pattern")
        return files
    raise ValueError("no such file or folder")


def plan_jobs(inputs: list[str], output: str, ext: str = "png", suffix: str = "") -> list[Job]:
    """The jobs of a run, in command-line order (each folder's and glob's files sorted).

    ``output`` is the output file when it has an image suffix (.png, .webp, .jpg) and there is
    one input file; otherwise a folder, under which each folder input's sub-folders are
    mirrored. A file given twice is done once. Found here, before anything runs: an input
    that names nothing, an output that would overwrite an input, and two inputs with the same
    output (the later one fails).
    """
    out = Path(output).expanduser()
    to_file = out.suffix.lower() in OUTPUT_FORMATS and not out.is_dir()
    if to_file and (len(inputs) != 1 or not Path(inputs[0]).expanduser().is_file()):
        raise UsageError(f"-o {output} names an image file, which takes exactly one input file; give a folder instead")
    jobs: list[Job] = []
    sources: set[Path] = set()
    for arg in inputs:
        try:
            found = _expand(arg, exclude=None if to_file else out.resolve())
        except ValueError as error:
            jobs.append(Job(Path(arg), error=str(error)))
            continue
        for source, sub_folder in found:
            if source.resolve() in sources:
                continue
            sources.add(source.resolve())
            dest = out if to_file else out / sub_folder / f"{source.stem}{suffix}.{ext}"
            jobs.append(Job(source, dest))

    claimed: dict[Path, Path] = {}  # resolved output -> the input that writes it
    for i, job in enumerate(jobs):
        if job.error is not None:
            continue
        key = job.dest.resolve()
        if key in sources:
            error = f"its output {job.dest} is an input file, which is never overwritten: change -o or --suffix"
            jobs[i] = replace(job, error=error)
        elif key in claimed:
            jobs[i] = replace(job, error=f"its output {job.dest} is also the output of {claimed[key]}: restore them separately")
        else:
            claimed[key] = job.source
    return jobs


class _Restorers:
    """The run's engines by model, each model loaded once, on first use."""

    def __init__(self, model: str | None, device: str, precision: Precision, tile: TileSpec, overlap: int) -> None:
        self.model, self.device, self.precision, self.tile, self.overlap = model, device, precision, tile, overlap
        self._by_name: dict[str, Restorer] = {}

    def get(self, grey: bool) -> Restorer:
        """The engine for a grey or colour image: ``--model``'s, or the bundled default for the mode."""
        name = self.model or default_model(grey)
        if name not in self._by_name:
            try:
                model = load_model(name)
            except Exception as error:  # missing, not a d2lnet file, corrupt, ...
                hint = "" if self.model else "; pass --model NAME_OR_FILE"
                raise ModelError(f"cannot load model {name!r}: {_one_line(error)}{hint}") from None
            try:
                self._by_name[name] = Restorer(model, self.device, self.precision, self.tile, self.overlap)
            except (ValueError, RuntimeError) as error:  # a tile, precision or device that does not fit
                raise UsageError(str(error)) from None
        return self._by_name[name]


def _one_line(error: BaseException) -> str:
    """An exception as one line: its message's first line (CUDA's run to several), or its type."""
    if is_out_of_memory(error):
        return "out of memory: try a smaller --tile (e.g. 256)"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _restore_file(job: Job, restorers: _Restorers, quality: int | None, overwrite: bool) -> tuple[int, str | None]:
    """Restore one file; returns its pixel count and a warning (or None). Raises on failure."""
    loaded = read_image(job.source)
    image = loaded.image
    restorer = restorers.get(grey=image.mode in ("L", "LA"))
    restored = restore_pil(image, restorer, quality if quality is not None else loaded.quality)
    warning = None
    if output_format(job.dest) == "JPEG" and restored.mode in ("LA", "RGBA"):
        restored = restored.convert(restored.mode[:-1])
        warning = "JPEG has no alpha channel: the alpha channel was dropped"
    write_image(restored, job.dest, loaded.icc_profile, loaded.exif, overwrite)
    return image.width * image.height, warning


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet restore``: see :mod:`d2lnet.cli` for the arguments and this module's docstring.

    Returns the exit status: 0, 1 if any file failed or the model cannot be loaded, 2 for a
    bad command line.
    """
    try:
        return _run(args)
    except UsageError as error:
        print(f"d2lnet restore: error: {error}", file=sys.stderr)
        return 2
    except ModelError as error:
        print(f"d2lnet restore: error: {error}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    quality = parse_quality(args.quality)
    tile = parse_tile(args.tile)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not args.max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    rank, world_size, local_rank = launch_env()
    jobs = shard(plan_jobs(args.inputs, args.output, args.ext, args.suffix), rank, world_size)
    restorers = _Restorers(args.model, rank_device(args.device, local_rank), args.precision, tile, args.overlap)
    if args.model is not None:
        restorers.get(grey=False)  # load it now: a bad --model fails before any file
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Pillow's decompression-bomb limit is the process's; this command owns the process.
    Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1_000_000)

    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""

    def report(kind: str, job: Job, message: str) -> None:
        tqdm.write(f"{prefix}{kind}: {job.source}: {message}", file=sys.stderr)

    restored = failed = skipped = pixels = 0
    start = time.perf_counter()
    for job in tqdm(jobs, unit="image", file=sys.stderr, disable=None, dynamic_ncols=True):
        if job.error is not None:
            report("error", job, job.error)
            failed += 1
            continue
        if job.dest.exists() and not args.overwrite:
            report("skipped", job, f"{job.dest} exists (pass --overwrite to replace it)")
            skipped += 1
            continue
        try:
            count, warning = _restore_file(job, restorers, quality, args.overwrite)
        except (ModelError, UsageError):
            raise  # the same for every image: stop
        except Exception as error:  # one image's failure must not stop the batch
            report("error", job, _one_line(error))
            failed += 1
            continue
        if warning:
            report("warning", job, warning)
        restored += 1
        pixels += count
    seconds = time.perf_counter() - start
    summary = f"{prefix}restored {restored} image{'s' * (restored != 1)} ({pixels / 1e6:.2f} megapixels) in {seconds:.1f} s"
    summary += f", {skipped} skipped (output exists)" if skipped else ""
    print(f"{summary}, {failed} failed")
    return 1 if failed else 0
