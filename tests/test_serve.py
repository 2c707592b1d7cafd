"""``d2lnet serve``: the page driven in headless Chromium, its limits and temporary folder over
HTTP, and the parts that need neither Gradio nor a browser.

The server runs as a user starts it (``python -m d2lnet serve``, in a subprocess) with a tiny
model, on a free port of 127.0.0.1, with TMPDIR pointing into the test's folder so that every
file it writes can be listed. Results are checked against ``d2lnet restore`` on the same file
(scored with scikit-image's PSNR) and the quality against the one the test compressed with.
"""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_model
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from d2lnet.cli import main
from d2lnet.pretrained import ModelCard, save_release
from d2lnet.serve import INSTALL_HINT, Limits, PageWorker, RequestError, discard_upload

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and without the background connections a closed network refuses (updates, field trials).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
QUALITY = 35
MAX_UPLOAD_MB = 0.05  # 50 kB
MAX_MEGAPIXELS = 0.05  # 50,000 pixels
HAVE_GRADIO = importlib.util.find_spec("gradio") is not None
needs_gradio = pytest.mark.skipif(not HAVE_GRADIO, reason=f"gradio is not installed ({INSTALL_HINT})")


def photo(height: int = 120, width: int = 160) -> np.ndarray:
    """A smooth RGB image with edges, so that JPEG leaves artifacts for the model to change."""
    y, x = np.mgrid[0:height, 0:width]
    r = 128 + 90 * np.sin(x / 7.0 + y / 11.0)
    g = np.where((x // 20 + y // 20) % 2 == 0, 190, 60)
    b = 255 * x / (width - 1)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny non-identity colour model and the test's uploads."""
    folder = tmp_path_factory.mktemp("serve")
    paths = {"model": save_release(tiny_model("busy"), folder / "busy.safetensors", ModelCard("busy", "for tests"))}
    paths["jpeg"] = folder / "photo.jpg"
    Image.fromarray(photo()).save(paths["jpeg"], quality=QUALITY)
    paths["png"] = folder / "photo.png"  # the JPEG's pixels, saved losslessly: no tables, the quantization stays
    with Image.open(paths["jpeg"]) as decoded:
        decoded.save(paths["png"])
    paths["noise_png"] = folder / "noise_small.png"  # never compressed
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths["noise_png"])
    paths["too_many_pixels"] = folder / "wide.jpg"  # 65,536 pixels in a small file
    Image.fromarray(photo(256, 256)).save(paths["too_many_pixels"], quality=QUALITY)
    paths["too_large"] = folder / "noise.png"  # 19,200 pixels in about 58 kB
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(paths["too_large"])
    assert paths["jpeg"].stat().st_size < MAX_UPLOAD_MB * 1e6 < paths["too_large"].stat().st_size
    assert paths["too_many_pixels"].stat().st_size < MAX_UPLOAD_MB * 1e6
    return paths


def cli_restore(source: Path, model: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """``d2lnet restore SOURCE -o OUT --model MODEL``: the reference the page must match."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restore sets the process's
    assert main(["restore", str(source), "-o", str(out), "--model", str(model), "--threads", "1"]) == 0
    return np.asarray(Image.open(out))


def assert_same_pixels(restored: np.ndarray, reference: np.ndarray) -> None:
    """Identical, or within what a different thread split of the same bf16/fp32 work can change."""
    assert restored.shape == reference.shape
    if not np.array_equal(restored, reference):
        assert peak_signal_noise_ratio(reference, restored, data_range=255) > 50


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


# --------------------------------------------------------------------------- without Gradio


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_does_not_import_gradio(argv):
    code = f"import sys\nfrom d2lnet.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
    code += "print('gradio imported:', 'gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "serve" in out and out.strip().endswith("gradio imported: False")


def test_missing_gradio_is_one_line_with_the_install_command():
    code = "import sys\nsys.modules['gradio'] = None\nfrom d2lnet.cli import main\nsys.exit(main(['serve']))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("d2lnet serve: error:")
    assert 'pip install "d2lnet[serve]"' in run.stderr


def test_too_many_megapixels_are_refused_from_the_header(tmp_path):
    # Only the first 2 kB of a 4000x3000 JPEG: a header without pixel data. Refused for its
    # size, not for being truncated, so the check came before any decoding.
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 3000), (90, 120, 150)).save(buffer, format="JPEG", quality=50)
    (tmp_path / "big.jpg").write_bytes(buffer.getvalue()[:2048])
    worker = PageWorker(Limits(max_upload_bytes=10**6, max_pixels=10**6))
    with pytest.raises(RequestError, match=r"4000x3000 \(12 megapixels\).*images up to 1 megapixels"):
        worker.read(tmp_path / "big.jpg")


def test_uploads_over_the_byte_limit_are_refused(files):
    worker = PageWorker(Limits(max_upload_bytes=int(MAX_UPLOAD_MB * 1e6), max_pixels=10**6))
    with pytest.raises(RequestError, match=r"The file is 0\.0\d+ MB; this page takes files up to 0\.05 MB"):
        worker.read(files["too_large"])


def test_page_worker_restores_as_the_cli_does(files, tmp_path, monkeypatch):
    worker = PageWorker(Limits(10**6, 10**6), model=str(files["model"]))
    loaded = worker.read(files["jpeg"])
    assert loaded.quality == QUALITY
    result = worker.restore(loaded)
    restored = np.asarray(Image.open(io.BytesIO(result.restored_png)))
    assert_same_pixels(restored, cli_restore(files["jpeg"], files["model"], tmp_path / "cli.png", monkeypatch))
    assert not np.array_equal(restored, np.asarray(Image.open(files["jpeg"])))  # the model did change it
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.before_png))), np.asarray(Image.open(files["jpeg"])))
    assert worker.read(files["png"]).quality is None


def test_discard_upload_removes_the_file_and_its_empty_folders_only(tmp_path):
    root = tmp_path / "gradio"
    upload = root / "0123abcd" / "photo.jpg"
    upload.parent.mkdir(parents=True)
    upload.write_bytes(b"x")
    outside = tmp_path / "mine.jpg"
    outside.write_bytes(b"x")
    discard_upload(outside, root)  # not an upload: left alone
    discard_upload(upload, root)
    assert outside.exists() and not upload.parent.exists() and root.is_dir()


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    url: str
    temp_root: Path  # the server's TMPDIR
    process: subprocess.Popen
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: what a service manager sends
        return self.process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(files, tmp_path) -> Iterator[Server]:
    """``d2lnet serve`` with the tiny model and small limits, until the test ends."""
    import httpx

    temp_root, log = tmp_path / "server-tmp", tmp_path / "server.log"
    temp_root.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp_root)}
    env.pop("GRADIO_TEMP_DIR", None)
    argv = [sys.executable, "-m", "d2lnet", "serve", "--port", str(port), "--model", str(files["model"]), "--threads", "1",
            "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-megapixels", str(MAX_MEGAPIXELS)]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    server = Server(f"http://127.0.0.1:{port}/", temp_root, process, log)
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, f"d2lnet serve exited: {log.read_text()}"
        assert time.monotonic() < deadline, f"d2lnet serve did not answer: {log.read_text()}"
        try:
            if httpx.get(server.url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield server
    server.stop()


@needs_gradio
def test_server_refuses_over_limit_uploads_and_keeps_no_image(server, files):
    import httpx
    from gradio_client import Client, handle_file

    assert server.url.startswith("http://127.0.0.1:")
    # Over the byte limit: Gradio's upload route refuses it while it streams in.
    with open(files["too_large"], "rb") as f:
        response = httpx.post(server.url + "gradio_api/upload", files={"files": ("noise.png", f, "image/png")})
    assert response.status_code == 413 and "maximum allowed size" in response.text
    client = Client(server.url, verbose=False)
    with pytest.raises(Exception, match=r"256x256 \(0\.0655 megapixels\); this page takes .* up to 0\.05 megapixels"):
        client.predict(handle_file(str(files["too_many_pixels"])), api_name="/restore")
    quality, details, slider, download = client.predict(handle_file(str(files["jpeg"])), api_name="/restore")
    assert quality == str(QUALITY) and "160x120, colour: restored with" in details
    quality, *_ = client.predict(handle_file(str(files["png"])), api_name="/restore")
    assert quality == f"{QUALITY} (estimated from its pixels: not a JPEG file)"
    quality, *_ = client.predict(handle_file(str(files["noise_png"])), api_name="/restore")
    assert quality.startswith("unknown")
    # Every upload went through Gradio's upload folder; none is left, nor any result.
    assert files_under(server.temp_root) == []
    assert server.stop() == 0
    assert list(server.temp_root.iterdir()) == []  # the server's private folder is gone too


def browser_skip_reason() -> str | None:
    if not HAVE_GRADIO:
        return f"gradio is not installed ({INSTALL_HINT})"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return f"no browser at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.mark.skipif(browser_skip_reason() is not None, reason=str(browser_skip_reason()))
def test_page_in_headless_chromium(server, files, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    foreign: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(accept_downloads=True)
            page.on("request", lambda r: None if r.url.startswith((server.url, "data:", "blob:")) else foreign.append(r.url))
            page.goto(server.url)
            # Upload -> the detected quality and the restore -> the PNG.
            page.locator("#upload input[type=file]").set_input_files(str(files["jpeg"]))
            page.wait_for_selector("#download:not([disabled])", timeout=120_000)
            shown_quality = page.locator("#quality textarea, #quality input").first.input_value()
            assert page.locator("#compare img").count() == 2  # before and after, in the slider
            with page.expect_download() as download:
                page.locator("#download").click()
            assert download.value.suggested_filename == "photo_restored.png"
            download.value.save_as(tmp_path / "page.png")
            # An image over the megapixel limit: refused, with the reason in the page.
            page.locator("#upload button[aria-label='Clear']").click()
            page.locator("#upload input[type=file]").set_input_files(str(files["too_many_pixels"]))
            page.locator("#details").get_by_text("Refused").wait_for(timeout=60_000)
            refusal = page.locator("#details").inner_text()
        finally:
            browser.close()
    assert shown_quality == str(QUALITY)
    restored = np.asarray(Image.open(tmp_path / "page.png"))
    assert_same_pixels(restored, cli_restore(files["jpeg"], files["model"], tmp_path / "cli.png", monkeypatch))
    assert "Refused" in refusal and "0.0655 megapixels" in refusal
    assert foreign == []  # nothing fetched from other hosts: no fonts, no telemetry
    assert files_under(server.temp_root) == []
