"""The ``d2lnet`` command: ``restore``, ``eval``, ``train`` and ``models``.

All arguments are declared here, so ``d2lnet --help`` and this file are the whole
interface; each subcommand's work lives in its module and is imported only when run.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from d2lnet import __version__


@contextmanager
def _importing() -> Iterator[None]:
    """Import a command's modules with the cyclic garbage collector off, then freeze what they made.

    Importing PyTorch creates some 170,000 objects that the collector tracks, and each full
    collection walks all of them, during the import and again while the model is built and run:
    0.5 s of a 3.2 s restore of a 768x512 photo (``benchmarks/restore_speed.py``). The imported
    objects live as long as the process, so they are frozen out of later collections
    (``gc.freeze``) instead of being walked again and again. Only a first import freezes (a
    process that calls :func:`main` again, such as a test run, keeps its later garbage
    collectable), and a collector the caller turned off stays off.
    """
    modules, enabled = len(sys.modules), gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if enabled:
            gc.enable()


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="remove JPEG artifacts from images",
        description="Restore JPEG-compressed images. The quality factor is read from each JPEG file; "
        "colour images go to the colour model and grey ones to the grey model. Grey stays grey, alpha is "
        "kept as is, EXIF orientation is applied, and the ICC profile and EXIF are kept. CMYK, palette and "
        "16-bit images are converted (with a note). A JPEG's restoration is projected onto the file's "
        "quantization intervals. Inputs and existing "
        "outputs are never overwritten (unless --overwrite, for outputs). A file that fails is reported in "
        "one line and the others go on; the exit status is 1 if any failed. Under torchrun each process "
        "restores every N-th file on its own GPU.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files, folders (searched recursively for jpg, jpeg, png, webp, bmp, tif, tiff) or globs")  # fmt: skip
    p.add_argument("-i", "--input", dest="more_inputs", action="extend", nargs="+", default=[], metavar="INPUT",
                   help="more inputs, as INPUT (repeatable; default: none)")  # fmt: skip
    p.add_argument("-o", "--output", default="results",
                   help="output file (for one input file, e.g. out.png) or folder (created; mirrors the sub-folders of folder inputs)")  # fmt: skip
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled model name or weights file, for every image (default: the bundled colour "
                   "model for colour images, the grey one for grey images; a colour model restores grey images "
                   "as RGB and converts back, a grey model restores the luma of colour images)")  # fmt: skip
    p.add_argument("--quality", default="auto", metavar="auto|N",
                   help="JPEG quality factor 1-100 for every image, or 'auto' (default): read from each JPEG file's "
                   "quantization tables; for other formats, the quality whose quantization the pixels show (a PNG saved "
                   "from a JPEG), else unknown: the blind model then uses its learned unknown-quality embedding")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32; fp16 needs CUDA",
    )  # fmt: skip
    _add_fp32(p)
    p.add_argument("-t", "--tile", default="auto", metavar="auto|0|N",
                   help="tile size in pixels (multiple of 8), 0 for whole images, or auto (whole images while "
                   "memory allows); a whole image that runs out of memory is retried in tiles")  # fmt: skip
    p.add_argument("--overlap", type=_overlap, default="auto", metavar="auto|N",
                   help="overlap between tiles in pixels (multiple of 8), or auto: the one the model card records")  # fmt: skip
    p.add_argument("--ext", default=None, choices=["png", "webp", "jpg", "auto"],
                   help="output format for an output folder (default: png): png and webp are lossless (webp stores "
                   "grey as RGB), jpg is quality 95 with 4:4:4 chroma and drops alpha; auto keeps each input's "
                   "format and extension where it is one of these, else png")  # fmt: skip
    p.add_argument("--strength", type=_fraction, default=1.0, metavar="S",
                   help="how much of the restoration to apply, from 0 (the input) to 1 (the full restoration): "
                   "input + S * (restored - input), per pixel, before rounding and the projection")  # fmt: skip
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile: compiling takes a minute on a small CPU (seconds "
                   "from its on-disk cache later); on CPUs it is barely faster than the default, which fuses "
                   "convolutions itself; try it on GPUs or for many large images")  # fmt: skip
    p.add_argument("--tta", action="store_true",
                   help="self-ensemble: average the restorations of the 8 flips and rotations (on the JPEG grid); "
                   "7 times slower, +0.05 dB (QF 10, Classic5 and LIVE1: benchmarks/results/restore_tta_*.md)")  # fmt: skip
    p.add_argument("--project", action=argparse.BooleanOptionalAction, default=True,
                   help="project each JPEG's restoration onto the file's quantization intervals (DCT coefficients "
                   "read from the file, luma and chroma); it never lowered PSNR in our tests (default: on)")  # fmt: skip
    p.add_argument("--suffix", default="", help="appended to each output file name before the extension (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (inputs are never replaced)")
    p.add_argument("--max-megapixels", type=float, default=200.0, metavar="MP",
                   help="refuse larger images before decoding them (default: 200); images that would not fit "
                   "in memory are refused too")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: one per idle CPU)")
    p.set_defaults(func=_run_restore)


def _run_restore(args: argparse.Namespace) -> int:
    from d2lnet.errors import UsageError

    with _importing():
        from d2lnet.restore_cli import run_cli

    args.inputs = [*args.inputs, *args.more_inputs]
    if not args.inputs:
        raise UsageError("no input: give image files, folders or globs (as INPUT or with -i)")
    return run_cli(args)


def _add_fp32(p: argparse.ArgumentParser) -> None:
    """``--fp32``: Real-ESRGAN's spelling of ``--precision fp32``."""
    p.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="the same as --precision fp32")


def _overlap(text: str) -> int | None:
    """``--overlap``: a non-negative multiple of 8, or ``auto`` (None: the model card's)."""
    if text == "auto":
        return None
    if not (text.isdigit() and int(text) % 8 == 0):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a non-negative multiple of 8, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    """A number from 0 to 1 (``--strength``)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure PSNR, SSIM and PSNR-B on test sets",
        description="Evaluate models (or the JPEG baseline) with the paper's protocol: each ground truth is "
        "JPEG-compressed at each --quality and every method restores that same JPEG. --suite paper runs the "
        "paper's Tables 1 and 2 beside its reported numbers.",
    )
    p.add_argument("--model", nargs="+", default=None, help="bundled model names, weights files, or 'jpeg' (no restoration); "
                   "default: the bundled model for the mode (for --suite: both)")  # fmt: skip
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="DIR",
        help="folders of ground-truth images (default: none; needed unless --suite)",
    )
    p.add_argument("--quality", nargs="+", type=int, default=[10, 20, 30], help="JPEG quality factors")
    p.add_argument("--gray", action="store_true", help="evaluate the grey (BT.601 Y) versions")
    p.add_argument(
        "--suite",
        choices=["paper"],
        default=None,
        help="run the paper's Tables 1 and 2 (default: none, the sets given with --data)",
    )
    p.add_argument("--data-root", default=None, help="folder holding the test sets (for --suite; "
                   "default: $D2LNET_DATA/test)")  # fmt: skip
    p.add_argument(
        "--json", default=None, metavar="FILE", help="write the config, per-image and mean results as JSON (default: not written)"
    )
    p.add_argument("--markdown", default=None, metavar="FILE", help="write the tables as Markdown (default: not written)")
    p.add_argument(
        "--save-images",
        default=None,
        metavar="DIR",
        help="save restored images as DIR/<set>/<qf>/<name>.png (default: not saved)",
    )
    p.add_argument(
        "--crops",
        default=None,
        metavar="DIR",
        help="save JPEG | restored | ground-truth centre crops (2x) of a few images (default: not saved)",
    )
    p.add_argument("--plot-qf", default=None, metavar="FILE", help="sweep QF 5 to 95 (instead of --quality) and plot "
                   "mean PSNR to FILE (PNG, needs matplotlib), with the numbers beside it (.json, .md) (default: no sweep)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("-t", "--tile", default="auto", metavar="auto|0|N", help="tile size in pixels, 0 for whole images, or auto")
    p.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="as for restore: auto is bf16 on GPUs and on CPUs with native bf16, else fp32",
    )  # fmt: skip
    _add_fp32(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: one per idle CPU)")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    with _importing():
        from d2lnet.evaluation.command import run_cli

    return run_cli(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe", description="Train D2LNet from a TOML recipe.")
    p.add_argument("config", help="recipe file, e.g. configs/smoke.toml")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT|auto",
                   help="continue from this checkpoint; auto: continue the run in --out if there is one, else start "
                   "it (one command for the first start and every requeue). Without it, an --out that holds a run "
                   "is refused (default: start a new run)")  # fmt: skip
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value (repeatable; default: none)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<recipe name>)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    with _importing():
        from d2lnet.train import run_cli

    return run_cli(args)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models and their cards")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from d2lnet.cards import run_cli

    return run_cli(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="restore images in a local web page (needs the [serve] extra)",
        description="Serve a web page (Gradio) to upload an image, see its detected JPEG quality, restore it with "
        "the bundled model (colour or grey by the image, as restore does), compare before and after, and "
        "download the PNG. Each upload is deleted when its request ends and results are not stored. "
        'Needs Gradio: pip install "d2lnet[serve]".',
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 opens the page to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB", help="refuse larger uploads (MB, 10^6 bytes)")
    p.add_argument("--max-megapixels", type=float, default=16.0, metavar="MP",
                   help="refuse larger images (checked from the header, before decoding)")  # fmt: skip
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled model name or weights file for every image (default: the bundled colour or grey model by image)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="as for restore")
    _add_fp32(p)
    p.add_argument("-t", "--tile", default="auto", metavar="auto|0|N", help="as for restore")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    with _importing():
        from d2lnet.serve import run_cli

    return run_cli(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (needs the [onnx] extra)",
        description="Export a model to an ONNX file (opset 20, float32) that restores images of any size: inputs "
        "image (B, C, H, W) in [0, 1] and quality (B,) or (1,), the JPEG quality factor, 0 meaning unknown; output "
        "restored (B, C, H, W) in [0, 1]. The file's metadata records this. Then, with onnxruntime installed, "
        'checks the file against PyTorch. Needs onnx and onnxscript: pip install "d2lnet[onnx]".',
    )
    p.add_argument("model", metavar="MODEL", help="bundled model name (e.g. d2lnet-s-color) or weights file")
    p.add_argument("-o", "--output", default=None, help="ONNX file to write (default: MODEL.onnx in the current folder)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (default: refuse)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the comparison with PyTorch (default: compare, when onnxruntime is installed)")  # fmt: skip
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    with _importing():
        from d2lnet.export import run_cli

    return run_cli(args)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, as with argparse.ArgumentDefaultsHelpFormatter,
    unless the help already says it in words (for None, an empty string, or a richer statement)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default in (None, False, "", argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="d2lnet", description="JPEG artifact removal with D2LNet.", formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"d2lnet {__version__}")
    parser.set_defaults(cpu_clock=None)  # main() sets it: the CPU load reading taken at start-up
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_restore, _add_eval, _add_train, _add_models, _add_serve, _add_export):
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``d2lnet ARGV``; returns the exit status. Errors that the commands expect
    (:class:`d2lnet.errors.CommandError`) are printed in one line, without a traceback."""
    from d2lnet.allocator import keep_freed_memory
    from d2lnet.cpuload import read_clock
    from d2lnet.errors import CommandError

    keep_freed_memory()  # every command runs networks: reuse freed tensors' pages (d2lnet.allocator)
    # Before PyTorch is imported: restore and eval measure the other processes' CPU load over
    # their start-up to choose their threads (d2lnet.cpuload), instead of waiting to measure it.
    started = read_clock()
    args = build_parser().parse_args(argv)
    args.cpu_clock = started
    try:
        return args.func(args)
    except CommandError as error:
        print(f"d2lnet {args.command}: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        print(f"d2lnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`d2lnet models --json | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush does not fail
        return 128 + signal.SIGPIPE
