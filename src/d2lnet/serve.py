"""``d2lnet serve``: a local web page that restores one image at a time (Gradio).

The page takes an image file, shows the JPEG quality factor read from the file's
quantization tables (:func:`d2lnet.jpeg.estimate_quality`; for a PNG and other formats, the
one its pixels show, else "unknown": :func:`d2lnet.restore.resolve_quality`), restores it
exactly as ``d2lnet restore`` does (the bundled colour or grey model by the image's mode, then
the projection onto the JPEG's coefficients: :func:`d2lnet.restore.restore_loaded`), shows
before and after in a slider, and offers the restored PNG for download.

Users' images are not kept. Gradio writes each upload to its temporary folder
(``GRADIO_TEMP_DIR``): here that is a private folder made for this server, an upload is
deleted when its request ends (the restore reads it twice: the pixels, then the JPEG's
coefficients for the projection), and the before/after images and the PNG go back to the
browser inside the response (``data:`` URLs), so Gradio writes nothing to its cache for
them. The folder is removed when the server stops. Gradio's run history, which would keep
results in the browser, is off; so are its telemetry and version check, and the page uses
the system's fonts: nothing is fetched from other hosts, by the server or the browser.

Limits: uploads larger than ``--max-upload-mb`` are refused by Gradio before they are
stored whole, and images of more than ``--max-megapixels`` are refused from their header,
before any pixel is decoded; both with a message in the page.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from d2lnet.device import Precision
from d2lnet.engine import Restorer, TileSpec, parse_tile
from d2lnet.errors import CommandError, UsageError
from d2lnet.images import ImageError, LoadedImage, read_image
from d2lnet.pretrained import load_model
from d2lnet.restore import default_model, resolve_quality, restore_at

INSTALL_HINT = 'pip install "d2lnet[serve]"'
DOWNLOAD_SUFFIX = "_restored.png"


class RequestError(ValueError):
    """An upload the page refuses; the message is shown in the page."""


@dataclass(frozen=True)
class Limits:
    """What one request may bring: the file's size in bytes and the image's size in pixels."""

    max_upload_bytes: int
    max_pixels: int

    def describe(self) -> str:
        return f"files up to {self.max_upload_bytes / 1e6:g} MB, images up to {self.max_pixels / 1e6:g} megapixels"


@dataclass(frozen=True)
class Restored:
    """One request's result: what the page shows and the PNG it offers."""

    quality: int | None
    quality_note: str | None  # where the quality came from, when not from a JPEG file
    model: str
    width: int
    height: int
    seconds: float
    notes: list[str]
    before_png: bytes
    restored_png: bytes


def describe_quality(quality: int | None, from_file: bool = True) -> str:
    """The detected quality as the page shows it: read from a JPEG file, or estimated from the pixels."""
    if quality is None:
        return "unknown (not a JPEG file, and its pixels show no JPEG quantization)"
    return str(quality) if from_file else f"{quality} (estimated from its pixels: not a JPEG file)"


class PageWorker:
    """The page's work, without the web page: read an upload within the limits, restore it.

    Models are loaded on first use and kept (one per name); the colour or grey model is
    chosen per image as ``d2lnet restore`` chooses it, unless ``model`` names one.
    """

    def __init__(self, limits: Limits, model: str | None = None, device: str = "auto",
                 precision: Precision = "auto", tile: TileSpec = "auto") -> None:  # fmt: skip
        self.limits, self.model, self.device, self.precision, self.tile = limits, model, device, precision, tile
        self._restorers: dict[str, Restorer] = {}

    def restorer(self, gray: bool) -> Restorer:
        """The engine for a grey or colour image."""
        name = self.model or default_model(gray)
        if name not in self._restorers:
            try:
                model = load_model(name)
            except Exception as error:  # missing, not a d2lnet file, corrupt, ...
                raise CommandError(f"cannot load model {name!r}: {error}") from None
            try:
                self._restorers[name] = Restorer(model, self.device, self.precision, self.tile)
            except ValueError as error:  # a device, precision or tile that does not fit
                raise UsageError(str(error)) from None
        return self._restorers[name]

    def model_name(self, gray: bool) -> str:
        """The model's name as the page shows it (a weights file's name, not its folder)."""
        return Path(self.model).name if self.model else default_model(gray)

    def read(self, path: str | Path) -> LoadedImage:
        """Read an uploaded file, or raise RequestError with the reason.

        The pixel count is checked from the header first, so that an image over the limit is
        refused before it is decoded (and with a clearer message than Pillow's).
        """
        path = Path(path)
        size = path.stat().st_size
        if size > self.limits.max_upload_bytes:  # Gradio refuses these already; the API may not
            raise RequestError(f"The file is {size / 1e6:.3g} MB; this page takes {self.limits.describe()}.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    width, height = im.size
        except Image.DecompressionBombError:
            too_many = 2 * self.limits.max_pixels / 1e6  # Pillow refuses to open these at all
            raise RequestError(
                f"The image has more than {too_many:g} megapixels; this page takes {self.limits.describe()}."
            ) from None
        except (UnidentifiedImageError, OSError):
            raise RequestError("Not an image file that this page can read (JPEG, PNG, WebP, BMP, TIFF).") from None
        if width * height > self.limits.max_pixels:
            raise RequestError(f"The image is {width}x{height} ({width * height / 1e6:.3g} megapixels); "
                               f"this page takes {self.limits.describe()}.")  # fmt: skip
        try:
            return read_image(path)
        except ImageError as error:
            raise RequestError(f"Cannot read this image: {error}.") from None

    def restore(self, loaded: LoadedImage) -> Restored:
        """Restore an image as ``d2lnet restore`` does (:func:`d2lnet.restore.restore_loaded`'s two
        steps, :func:`~d2lnet.restore.resolve_quality` and :func:`~d2lnet.restore.restore_at`: the
        file's quality or its pixels', the model for its mode, projected onto the JPEG file's coefficients, which
        must still be there); the PNGs keep the file's ICC profile and EXIF, as the command's do."""
        image = loaded.image
        gray = image.mode in ("L", "LA")
        start = time.perf_counter()
        restorer = self.restorer(gray)
        quality, quality_note = resolve_quality(loaded, None, restorer)
        restored, notes = restore_at(loaded, restorer, quality)  # the page shows where the quality came from
        seconds = time.perf_counter() - start
        metadata = {k: v for k, v in (("icc_profile", loaded.icc_profile), ("exif", loaded.exif)) if v}
        return Restored(
            quality=quality,
            quality_note=quality_note,
            model=self.model_name(gray),
            width=image.width,
            height=image.height,
            seconds=seconds,
            notes=[*loaded.notes, *notes],
            before_png=_png(image, metadata, compress_level=1),  # shown only: fast beats small
            restored_png=_png(restored, metadata),
        )


def _png(image: Image.Image, metadata: dict, compress_level: int = 6) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level, **metadata)
    return buffer.getvalue()


def discard_upload(path: str | Path, upload_root: str | Path) -> None:
    """Delete an uploaded file, and the folders Gradio made for it under ``upload_root``
    (nothing outside ``upload_root`` is touched)."""
    path, root = Path(path).resolve(), Path(upload_root).resolve()
    if root not in path.parents:
        return
    path.unlink(missing_ok=True)
    folder = path.parent
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only if empty: another upload may share it
        except OSError:
            break
        folder = folder.parent


def _image_value(png: bytes, name: str) -> dict:
    """A Gradio image value that carries its pixels (a data: URL) instead of a cached file."""
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return {"path": None, "url": url, "orig_name": name, "mime_type": "image/png", "size": len(png),
            "is_stream": False, "meta": {"_type": "gradio.FileData"}}  # fmt: skip


# --------------------------------------------------------------------------- the page

# Gradio deletes uploads older than this many seconds, checking every SWEEP_EVERY seconds. The
# page deletes each upload as soon as it has read it; this catches the ones it never reads
# (a client that uploads without asking for a restore, a tab closed while its request waited).
ORPHAN_UPLOAD_AGE = 300
SWEEP_EVERY = 30
# Gradio keeps each session's last output values in memory (here: the last result's images);
# only this many recent sessions are kept.
SESSIONS_KEPT = 8


def build_page(worker: PageWorker, upload_root: str | Path):
    """The Gradio page (a ``gr.Blocks``); Gradio must have been imported by :func:`_import_gradio`."""
    import gradio as gr

    def on_upload(upload: dict | None) -> Iterator[tuple]:
        # The upload's file data as sent (preprocess=False): gr.File's preprocessing would
        # leave an empty temporary file in the upload folder on every request.
        if upload is None:
            return
        path = Path(upload["path"])  # Gradio has checked that it is in its upload folder
        try:  # the upload is deleted when this request ends, however it ends
            yield from respond(path)
        finally:
            discard_upload(path, upload_root)

    def respond(path: Path) -> Iterator[tuple]:
        no_result = None, {"__type__": "update", "value": None, "interactive": False}
        try:
            loaded = worker.read(path)
        except RequestError as error:
            yield "", f"**Refused.** {error}", *no_result  # stays in the page; the toast fades
            raise gr.Error(str(error), print_exception=False) from None
        gray = loaded.image.mode in ("L", "LA")
        kind = f"{loaded.image.width}x{loaded.image.height}, {'grey' if gray else 'colour'}"
        quality = describe_quality(loaded.quality) if loaded.quality is not None else "(not a JPEG file: reading its pixels)"
        yield quality, f"{kind}: restoring with {worker.model_name(gray)} ...", *no_result
        try:
            result = worker.restore(loaded)  # reads the upload again: the JPEG's coefficients
        except Exception as error:  # a model that does not load, out of memory, ...: one line in the page
            lines = str(error).strip().splitlines()
            message = f"Restoring failed: {lines[0] if lines else type(error).__name__}"
            yield quality, f"**{message}**", *no_result
            raise gr.Error(message) from error  # the traceback goes to the server's console
        del loaded
        restored = _image_value(result.restored_png, path.stem + DOWNLOAD_SUFFIX)  # one copy for both outputs
        slider = [_image_value(result.before_png, path.stem + ".png"), restored]
        download = {"__type__": "update", "value": restored, "interactive": True}
        details = "; ".join([f"{kind}: restored with {result.model} in {result.seconds:.1f} s", *result.notes])
        yield describe_quality(result.quality, from_file=result.quality_note is None), details, slider, download

    blocks = gr.Blocks(title="d2lnet: remove JPEG artifacts", analytics_enabled=False,
                       delete_cache=(SWEEP_EVERY, ORPHAN_UPLOAD_AGE))  # fmt: skip
    with blocks:
        gr.Markdown(
            "## d2lnet: remove JPEG artifacts\n"
            "Upload a JPEG: its quality is read from the file, D2LNet restores it (the colour or grey "
            "model by the image), and you can compare before and after and download the PNG. "
            f"This page takes {worker.limits.describe()}. Images are not kept: each upload is deleted "
            "when its request ends, and the results are sent to this page only."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(label="Image (JPEG; also PNG, WebP, BMP, TIFF)", file_count="single",
                                 file_types=["image"], elem_id="upload")  # fmt: skip
                quality = gr.Textbox(label="Detected JPEG quality", interactive=False, elem_id="quality")
                details = gr.Markdown(elem_id="details")
                download = gr.DownloadButton("Download restored PNG", interactive=False, variant="primary",
                                             elem_id="download")  # fmt: skip
            with gr.Column(scale=2):
                slider = gr.ImageSlider(label="Before | after: drag the handle, scroll to zoom, drag to pan",
                                        interactive=False, buttons=["download", "fullscreen"], max_height=720,
                                        elem_id="compare")  # fmt: skip
        # postprocess=False: the values are already what the browser takes (data: URLs), which
        # keeps Gradio from writing the images to its cache folder. One restore at a time.
        upload.upload(on_upload, upload, [quality, details, slider, download], api_name="restore",
                      preprocess=False, postprocess=False, concurrency_limit=1, show_progress="minimal")  # fmt: skip
    return blocks


# --------------------------------------------------------------------------- d2lnet serve


def _import_gradio(temp_dir: str):
    """Import Gradio with its temporary folder set to ``temp_dir`` and its telemetry off:
    Gradio reads both from the environment, some of it when imported."""
    os.environ["GRADIO_TEMP_DIR"] = temp_dir
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet serve`` (arguments in :mod:`d2lnet.cli`): serve the page until Ctrl-C or SIGTERM."""
    if importlib.util.find_spec("gradio") is None:
        raise CommandError(f"the web page needs Gradio, which is not installed: {INSTALL_HINT}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not args.max_megapixels > 0:
        raise UsageError(f"--max-megapixels must be positive, got {args.max_megapixels}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1 to 65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")
    try:
        tile = parse_tile(args.tile)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    limits = Limits(int(args.max_upload_mb * 1e6), int(args.max_megapixels * 1e6))
    # Pillow's decompression-bomb limit is the process's; this command owns the process.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    worker = PageWorker(limits, args.model, args.device, args.precision, tile)
    worker.restorer(gray=False)  # load a model now: a bad --model, device or tile fails here, not in the page

    base = os.environ.get("GRADIO_TEMP_DIR")  # where the user wants Gradio's files, if anywhere
    temp_dir = tempfile.mkdtemp(prefix="d2lnet-serve-", dir=base if base and os.path.isdir(base) else None)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop cleans up as Ctrl-C does
    page = None
    try:
        gr = _import_gradio(temp_dir)
        page = build_page(worker, temp_dir)
        theme = gr.themes.Default(  # the system's fonts: the default theme's come from Google Fonts
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        )
        try:
            _, url, _ = page.launch(
                server_name=args.host, server_port=args.port, max_file_size=limits.max_upload_bytes,
                state_session_capacity=SESSIONS_KEPT, prevent_thread_lock=True, inbrowser=args.open, quiet=True,
                share=False, show_error=False, footer_links=["settings"], run_history=False,
                enable_monitoring=False, mcp_server=False, ssr_mode=False, pwa=False, theme=theme,
            )  # fmt: skip
        except OSError as error:
            raise CommandError(f"cannot listen on {args.host}:{args.port}: {error}") from None
        print(f"d2lnet serve: {url} (Ctrl-C stops; {limits.describe()})", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if page is not None:
            page.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
