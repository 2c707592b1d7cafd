"""``d2lnet eval``: models (or the JPEG baseline) on test sets, the paper suite, or a QF sweep.

Three ways in, all through :func:`d2lnet.evaluation.protocol.evaluate_set`:

* ``d2lnet eval --model M [M ...] --data DIR [DIR ...]``: the given models (or ``jpeg``, the
  baseline without restoration) on the given folders;
* ``d2lnet eval --suite paper``: Tables 1 and 2 on the test sets that are available, beside the
  numbers the paper reports (:data:`d2lnet.evaluation.paper.PAPER`);
* ``d2lnet eval --plot-qf FILE``: mean scores against the quality factor, 5 to 95.

Every output path is checked before the work starts, so that a bad one fails at once.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from d2lnet.atomic import check_writable
from d2lnet.device import resolve_device, set_threads
from d2lnet.engine import parse_tile
from d2lnet.evaluation import EvalError
from d2lnet.evaluation.methods import JPEG_METHOD, Method, load_methods
from d2lnet.evaluation.paper import annotate_with_paper, paper_rows, run_paper_suite, suite_tables
from d2lnet.evaluation.protocol import evaluate_set, mean_scores
from d2lnet.evaluation.reports import (
    NEEDS_MATPLOTLIB,
    OutputWriter,
    environment,
    means_tables,
    plot_quality_curves,
    quality_curves,
    quality_tables,
    report_json,
    report_markdown,
    write_json,
    write_text,
)
from d2lnet.evaluation.testsets import find_data_root, image_set
from d2lnet.pretrained import DEFAULT_COLOR, DEFAULT_GRAY

PLOT_QUALITIES = tuple(range(5, 100, 5))


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet eval`` (arguments declared in :mod:`d2lnet.cli`). Problems with the request or the
    data raise :class:`~d2lnet.evaluation.EvalError`, reported in one line with exit status 2."""
    try:
        set_threads(args.threads, since=args.cpu_clock)
        device = resolve_device(args.device)
        tile = parse_tile(args.tile)
    except ValueError as error:
        raise EvalError(str(error)) from None
    plot = Path(args.plot_qf) if args.plot_qf else None
    if plot and importlib.util.find_spec("matplotlib") is None:  # say so before the sweep, not after
        raise EvalError(NEEDS_MATPLOTLIB)
    _check_outputs(args, plot)
    writer = OutputWriter(Path(args.save_images) if args.save_images else None, Path(args.crops) if args.crops else None)
    qualities = list(PLOT_QUALITIES if plot else args.quality)
    if bad := [q for q in qualities if not 1 <= q <= 100]:
        raise EvalError(f"JPEG quality factors are 1 to 100, got {bad}")
    config = {
        "suite": args.suite,
        "models": args.model,
        "quality": qualities,
        "gray": args.gray,
        "device": str(device),
        "tile": args.tile,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "environment": environment(),
    }

    if args.suite == "paper":
        if args.data or plot:
            raise EvalError("--suite paper evaluates its own sets: use --data-root instead of --data, and no --plot-qf")
        data_root = find_data_root(args.data_root)
        writer = OutputWriter(writer.images, writer.crops, per_model=True)
        suite = run_paper_suite(data_root, args.model, device, tile, args.precision, qualities, writer)
        config |= {
            "data_root": str(data_root),
            "sets": {s.name: {"mode": s.mode, "images": len(s.paths), "paper_set": s.paper_set} for s in suite.sets},
            "methods": [m.describe() for m in suite.methods],
        }
        notes = [
            *suite.notes,
            "'(paper)' columns are the paper's reported numbers, typed in. Δ JPEG is measured minus the paper's "
            "JPEG row; Δ of a model is the model minus the paper's D2LNet (both at the printed decimals).",
        ]
        means = mean_scores(suite.rows)
        markdown = report_markdown("D2LNet: the paper's Tables 1 and 2", suite_tables(means, suite.paper_sets), notes)
        document = report_json(config, suite.rows, notes, means=annotate_with_paper(means, suite.paper_sets), paper=paper_rows())
    else:
        if not args.data:
            raise EvalError("give test sets with --data DIR [DIR ...], or --suite paper")
        methods = load_methods(args.model or [DEFAULT_GRAY if args.gray else DEFAULT_COLOR], device, tile, args.precision)
        if plot and not any(m.is_baseline for m in methods):
            methods.insert(0, Method(JPEG_METHOD))  # the curves are read against the baseline
        for method in methods:  # fail before any work, not after the first set
            method.check_mode(args.gray)
        sets = [image_set(folder, args.gray) for folder in args.data]
        config |= {"data": [str(Path(d).resolve()) for d in args.data], "methods": [m.describe() for m in methods]}
        writer = OutputWriter(writer.images, writer.crops, per_model=sum(not m.is_baseline for m in methods) > 1)
        rows = [r for s in sets for r in evaluate_set(s, methods, qualities, writer)]
        means = mean_scores(rows)
        if plot:
            plot_quality_curves(means, plot)
            markdown = report_markdown("D2LNet: scores against the JPEG quality factor", quality_tables(means))
            document = report_json(config, rows, curves=quality_curves(means))
            write_text(plot.with_suffix(".md"), markdown)
            write_json(plot.with_suffix(".json"), document)
        else:
            markdown = report_markdown("D2LNet evaluation", means_tables(means))
            document = report_json(config, rows)

    print("\n" + markdown)
    if args.json:
        write_json(args.json, document)
    if args.markdown:
        write_text(args.markdown, markdown)
    if plot:
        print(f"wrote {plot} and its numbers to {plot.with_suffix('.json')}, {plot.with_suffix('.md')}")
    return 0


def _check_outputs(args: argparse.Namespace, plot: Path | None) -> None:
    """Fail before any work if an output cannot be written."""
    files = [args.json, args.markdown, *((plot, plot.with_suffix(".json"), plot.with_suffix(".md")) if plot else ())]
    folders = [args.save_images, args.crops]
    try:
        for path in filter(None, files):
            check_writable(path)
        for path in filter(None, folders):
            check_writable(path, folder=True)
    except ValueError as error:
        raise EvalError(str(error)) from None
