"""The ``d2lnet`` command: ``restore``, ``eval``, ``train`` and ``models``.

All arguments are declared here, so ``d2lnet --help`` and this file are the whole
interface; each subcommand's work lives in its module and is imported only when run.
"""

from __future__ import annotations

import argparse
import sys

from d2lnet import __version__


def _add_restore(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "restore",
        help="remove JPEG artifacts from images",
        description="Restore JPEG-compressed images. The quality factor is read from each JPEG file; "
        "colour images go to the colour model and grey ones to the grey model.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or globs")
    p.add_argument("-o", "--output", required=True, help="output file (for one input) or folder")
    p.add_argument("--model", default=None, help="bundled model name or weights file (default: by image type)")
    p.add_argument("--quality", default="auto", help="JPEG quality factor 1-100, or 'auto' to read it from the file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="bf16/fp16 need CUDA")
    p.add_argument("--tile", default="auto", help="tile size in pixels (multiple of 8), 0 for whole images, or auto")
    p.add_argument("--overlap", type=int, default=32, help="overlap between tiles in pixels (multiple of 8)")
    p.add_argument("--ext", default="png", choices=["png", "webp", "jpg"], help="output format")
    p.add_argument("--suffix", default="", help="appended to each output file name before the extension")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.set_defaults(func=_run_restore)


def _run_restore(args: argparse.Namespace) -> int:
    from d2lnet.restore import run_cli

    return run_cli(args)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure PSNR, SSIM and PSNR-B on test sets",
        description="Evaluate a model (or the JPEG baseline) with the paper's protocol.",
    )
    p.add_argument("--model", nargs="+", default=None, help="bundled model names, weights files, or 'jpeg' (no restoration)")
    p.add_argument("--data", nargs="+", default=None, metavar="DIR", help="folders of ground-truth images")
    p.add_argument("--quality", nargs="+", type=int, default=[10, 20, 30], help="JPEG quality factors")
    p.add_argument("--gray", action="store_true", help="evaluate the grey (BT.601 Y) versions")
    p.add_argument("--suite", choices=["paper"], default=None, help="run the paper's Tables 1 and 2")
    p.add_argument("--data-root", default=None, help="folder holding the test sets (for --suite)")
    p.add_argument("--json", default=None, help="write per-image and mean results as JSON")
    p.add_argument("--markdown", default=None, help="write the tables as Markdown")
    p.add_argument("--save-images", default=None, metavar="DIR", help="save restored images here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tile", default="auto", help="tile size in pixels, 0 for whole images, or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from d2lnet.evaluate import run_cli

    return run_cli(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe", description="Train D2LNet from a TOML recipe.")
    p.add_argument("config", help="recipe file, e.g. configs/smoke.toml")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from this checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value (repeatable)")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default: runs/<recipe name>)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from d2lnet.train import run_cli

    return run_cli(args)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the bundled models and their cards")
    p.add_argument("--json", action="store_true", help="print the full cards as JSON")
    p.set_defaults(func=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    import json

    from d2lnet.pretrained import list_models

    cards = list_models()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print("no bundled models are installed")
        return 1
    for card in cards:
        print(f"{card['name']}: {card.get('summary', '')}")
        for key in ("channels", "quality_range", "training_data", "training", "scores"):
            if key in card:
                print(f"  {key}: {card[key]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2lnet", description="JPEG artifact removal with D2LNet.")
    parser.add_argument("--version", action="version", version=f"d2lnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_restore, _add_eval, _add_train, _add_models):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
