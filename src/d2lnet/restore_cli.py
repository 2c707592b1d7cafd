"""``d2lnet restore``: files, folders and globs restored in a batch.

Every output path is planned before any work (:func:`plan_jobs`), so that an input that
names nothing, an output that would overwrite an input, or two inputs with one output are
reported at once. Then one line on stderr per file that fails (the rest go on), and exit
status 1 if any did. Under ``torchrun --nproc-per-node N -m d2lnet restore ...`` each
process takes every N-th file and its own GPU; no process group is needed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from d2lnet.device import Precision, launch
from d2lnet.engine import Restorer, TileSpec, is_out_of_memory, parse_tile
from d2lnet.errors import CommandError, UsageError
from d2lnet.images import IMAGE_EXTENSIONS, OUTPUT_FORMATS, find_images, output_format, read_image, write_image
from d2lnet.pretrained import load_model
from d2lnet.restore import default_model, restore_pil

T = TypeVar("T")


class ModelError(CommandError):
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


def shard(items: list[T], rank: int, world_size: int) -> list[T]:
    """This process's share of ``items``: every ``world_size``-th one, starting at ``rank``."""
    return items[rank::world_size]


@dataclass(frozen=True)
class Job:
    """One input file and where its restoration goes; ``error`` says why it cannot be done."""

    source: Path
    dest: Path | None = None
    error: str | None = None


def _expand(arg: str, exclude: Path | None) -> list[tuple[Path, Path]]:
    """The files an INPUT argument names, each with the sub-folder its output goes to.

    A file is taken whatever its name; folders (recursively) and globs give image files only.
    """
    path = Path(arg).expanduser()
    if path.is_dir():
        files = find_images(path, exclude=exclude if exclude != path.resolve() else None)
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

    def get(self, gray: bool) -> Restorer:
        """The engine for a grey or colour image: ``--model``'s, or the bundled default for the mode."""
        name = self.model or default_model(gray)
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
    restorer = restorers.get(gray=image.mode in ("L", "LA"))
    restored = restore_pil(image, restorer, quality if quality is not None else loaded.quality)
    warning = None
    if output_format(job.dest) == "JPEG" and restored.mode in ("LA", "RGBA"):
        restored = restored.convert(restored.mode[:-1])
        warning = "JPEG has no alpha channel: the alpha channel was dropped"
    write_image(restored, job.dest, loaded.icc_profile, loaded.exif, overwrite)
    return image.width * image.height, warning


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet restore`` (arguments in :mod:`d2lnet.cli`): 0, or 1 if any file failed. A bad
    command line raises :class:`UsageError` and a model that cannot be loaded :class:`ModelError`."""
    from tqdm import tqdm

    quality = parse_quality(args.quality)
    try:
        tile = parse_tile(args.tile)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not args.max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    try:
        process = launch()
    except ValueError as error:
        raise UsageError(str(error)) from None
    jobs = shard(plan_jobs(args.inputs, args.output, args.ext, args.suffix), process.rank, process.world_size)
    restorers = _Restorers(args.model, process.device(args.device), args.precision, tile, args.overlap)
    if args.model is not None:
        restorers.get(gray=False)  # load it now: a bad --model fails before any file
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Pillow's decompression-bomb limit is the process's; this command owns the process.
    Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1_000_000)

    prefix = f"[rank {process.rank}/{process.world_size}] " if process.world_size > 1 else ""

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
