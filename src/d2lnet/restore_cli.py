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
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image

from d2lnet.atomic import check_writable
from d2lnet.device import Compiled, Precision, available_memory, launch, set_threads
from d2lnet.engine import Restorer, TileSpec, host_bytes, is_out_of_memory, parse_tile
from d2lnet.errors import CommandError, UsageError
from d2lnet.images import IMAGE_EXTENSIONS, OUTPUT_FORMATS, ImageError, find_images, output_format, read_image, write_image
from d2lnet.pretrained import load_model
from d2lnet.progress import Progress
from d2lnet.restore import UNKNOWN_QUALITY, default_model, restore_loaded

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


def _output(output: str, inputs: list[str], ext: str | None) -> tuple[Path, bool]:
    """``-o``: (the path, whether it names one output file rather than a folder). Raises
    :class:`UsageError` for a path that cannot be what was asked for."""
    out = Path(output).expanduser()
    suffix = out.suffix.lower()
    if out.is_dir():
        return out, False
    if suffix in OUTPUT_FORMATS:
        if ext not in (None, "auto") and OUTPUT_FORMATS[f".{ext}"] != OUTPUT_FORMATS[suffix]:
            raise UsageError(f"-o {output} names a {OUTPUT_FORMATS[suffix]} file but --ext is {ext}: give one or the other")
        if len(inputs) != 1 or Path(inputs[0]).expanduser().is_dir() or any(c in inputs[0] for c in "*?["):
            raise UsageError(f"-o {output} names an image file, which takes exactly one input file; give a folder instead")
        return out, True
    if suffix in IMAGE_EXTENSIONS:
        raise UsageError(f"-o {output}: cannot write {suffix} files; name a .png, .webp or .jpg file, or a folder")
    if out.exists():
        raise UsageError(f"-o {output} exists and is not a folder")
    return out, False


def _extension(source: Path, ext: str) -> str:
    """The output extension for ``source`` in an output folder: ``.EXT``, or for ``auto`` the
    input's own (as spelled) where it is an output format, else ``.png``."""
    if ext == "auto":
        return source.suffix if source.suffix.lower() in OUTPUT_FORMATS else ".png"
    return f".{ext}"


def plan_jobs(inputs: list[str], output: str, ext: str | None = None, suffix: str = "") -> list[Job]:
    """The jobs of a run, in command-line order (each folder's and glob's files sorted).

    ``output`` is the output file when it has an image suffix (.png, .webp, .jpg) and there is
    one input file; otherwise a folder, under which each folder input's sub-folders are
    mirrored, and ``ext`` (default png) is the outputs' format (``auto``: each input's own format and
    extension where it can be written, else png). A file given twice is done once.
    A file found in a folder or glob that is another input's output (``--suffix``: an earlier
    run's output) is not an input. Found here, before anything runs: an input that names
    nothing, an output that would overwrite an input or cannot be written, and two inputs with
    the same output (the later one fails).
    """
    out, to_file = _output(output, inputs, ext)
    if not to_file:
        try:
            check_writable(out, folder=True)
        except ValueError as error:
            raise UsageError(f"-o {output}: {error}") from None
    ext = ext or "png"
    planned: list[tuple[Job, bool]] = []  # (job, found in a folder or glob rather than named)
    sources: set[Path] = set()
    for arg in inputs:
        try:
            found = _expand(arg, exclude=None if to_file else out.resolve())
        except ValueError as error:
            planned.append((Job(Path(arg), error=str(error)), False))
            continue
        for source, sub_folder in found:
            if source.resolve() in sources:
                continue
            sources.add(source.resolve())
            dest = out if to_file else out / sub_folder / f"{source.stem}{suffix}{_extension(source, ext)}"
            planned.append((Job(source, dest), source != Path(arg).expanduser()))
    if suffix:  # one_r.png found beside one.jpg is one.jpg's output (from an earlier run), not an input
        writer = {job.dest.resolve(): job.source for job, _ in planned if job.dest is not None}

        def earlier_output(job: Job, found: bool) -> bool:
            return found and writer.get(job.source.resolve(), job.source) != job.source

        planned = [(job, found) for job, found in planned if not earlier_output(job, found)]
        sources = {job.source.resolve() for job, _ in planned if job.error is None}
    jobs = [job for job, _ in planned]

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
            try:
                check_writable(job.dest)
            except ValueError as error:
                jobs[i] = replace(job, error=str(error))
                continue
            claimed[key] = job.source
    return jobs


class _Restorers:
    """The run's engines by model, each model loaded once, on first use."""

    def __init__(
        self,
        model: str | None,
        device: str,
        precision: Precision,
        tile: TileSpec,
        overlap: int | None,
        tta: bool,
        compile: bool = False,
    ) -> None:
        self.model, self.device, self.precision, self.tile, self.overlap, self.tta = model, device, precision, tile, overlap, tta
        self.compile = compile
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
                self._by_name[name] = Restorer(
                    model, self.device, self.precision, self.tile, self.overlap, tta=self.tta, compile=self.compile
                )
            except (ValueError, RuntimeError) as error:  # a tile, precision or device that does not fit
                raise UsageError(str(error)) from None
        return self._by_name[name]

    def loaded(self) -> list[Restorer]:
        """The restorers made so far."""
        return list(self._by_name.values())


def _one_line(error: BaseException) -> str:
    """An exception as one line: its message's first line (CUDA's run to several), or its type."""
    if is_out_of_memory(error):
        return "out of memory: try a smaller --tile (e.g. 256)"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _restore_file(
    job: Job, restorers: _Restorers, args: argparse.Namespace, quality: int | None, prefix: str
) -> tuple[int, list[str]]:
    """Restore one file; returns its pixel count and warnings. Raises on failure."""

    def check_memory(width: int, height: int) -> None:
        need, free = host_bytes(height, width, channels=4), available_memory(torch.device("cpu"))
        if need > free:
            raise ImageError(
                f"{width}x{height} needs about {need / 1e9:.1f} GB of memory to restore, and {free / 1e9:.1f} GB are available"
            )

    loaded = read_image(job.source, check_size=check_memory)
    image = loaded.image
    restorer = restorers.get(gray=image.mode in ("L", "LA"))
    tiles, per_batch = restorer.tiles_for(image.height, image.width), restorer.tiles_per_batch(image.height, image.width)
    with Progress(tiles, f"{prefix}{job.source.name}", "tile", enabled=tiles > per_batch, transient=True) as bar:
        restorer.on_tiles = bar.update
        try:
            restored, notes = restore_loaded(loaded, restorer, quality, args.project, args.strength)
        finally:
            restorer.on_tiles = None
    warnings = [*loaded.notes, *notes]
    if output_format(job.dest) == "JPEG" and restored.mode in ("LA", "RGBA"):
        restored = restored.convert(restored.mode[:-1])
        warnings.append("JPEG has no alpha channel: the alpha channel was dropped")
    write_image(restored, job.dest, loaded.icc_profile, loaded.exif, args.overwrite)
    return image.width * image.height, warnings


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet restore`` (arguments in :mod:`d2lnet.cli`): 0, or 1 if any file failed. A bad
    command line raises :class:`UsageError` and a model that cannot be loaded :class:`ModelError`."""
    quality = parse_quality(args.quality)
    try:
        tile = parse_tile(args.tile)
        process = launch()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    if not (math.isfinite(args.max_megapixels) and args.max_megapixels > 0):
        raise UsageError(f"--max-megapixels must be a positive number, got {args.max_megapixels}")
    jobs = shard(plan_jobs(args.inputs, args.output, args.ext, args.suffix), process.rank, process.world_size)
    restorers = _Restorers(args.model, process.device(args.device), args.precision, tile, args.overlap, args.tta, args.compile)
    if args.model is not None:
        restorers.get(gray=False)  # load it now: a bad --model fails before any file
    set_threads(args.threads, since=args.cpu_clock)
    # Pillow's decompression-bomb limit is the process's; this command owns the process.
    Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1_000_000)

    prefix = f"[rank {process.rank}/{process.world_size}] " if process.world_size > 1 else ""
    progress = Progress(len(jobs), f"{prefix}restore", "image")

    def report(kind: str, job: Job, message: str) -> None:
        progress.write(f"{prefix}{kind}: {job.source}: {message}")

    restored = failed = skipped = pixels = 0
    said_unknown_quality = False
    start = time.perf_counter()
    with progress:
        for job in jobs:
            if job.error is not None:
                report("error", job, job.error)
                failed += 1
            elif job.dest.exists() and not args.overwrite:
                report("skipped", job, f"{job.dest} exists (pass --overwrite to replace it)")
                skipped += 1
            else:
                try:
                    count, warnings = _restore_file(job, restorers, args, quality, prefix)
                except (ModelError, UsageError):
                    raise  # the same for every image: stop
                except Exception as error:  # one image's failure must not stop the batch
                    report("error", job, _one_line(error))
                    failed += 1
                else:
                    for warning in warnings:
                        if warning.startswith(UNKNOWN_QUALITY):  # the same for every PNG of a folder: said once
                            if said_unknown_quality:
                                continue
                            said_unknown_quality = True
                        report("warning", job, warning)
                    restored += 1
                    pixels += count
            progress.update()
    seconds = time.perf_counter() - start
    summary = f"{prefix}restored {restored} image{'s' * (restored != 1)} ({pixels / 1e6:.2f} megapixels) in {seconds:.1f} s"
    summary += f", {skipped} skipped (output exists)" if skipped else ""
    compiled = [r.net.compile_seconds for r in restorers.loaded() if isinstance(r.net, Compiled) and r.net.compile_seconds]
    summary += f" (of which {sum(compiled):.1f} s compiling)" if compiled else ""
    print(f"{summary}, {failed} failed")
    return 1 if failed else 0
