"""ONNX export: ``d2lnet export MODEL -o model.onnx``, for ONNX Runtime and other hosts.

The exported graph (opset 20, float32, NCHW) restores images of any size:

* input ``image``: float32 (B, C, H, W) with values in [0, 1]; C = 3 (RGB) or 1 (grey, BT.601 Y);
  H and W anything from ``stride + 1`` up (9 for the bundled models). Sides that are not multiples
  of the stride are padded inside the graph by edge replication and cropped back, exactly as
  :meth:`D2LNet.forward` does, so hosts need no padding of their own.
* input ``quality``: float32 (B,) or (1,), the JPEG quality factor (1-100) of each image, as a
  blind model takes it (:meth:`D2LNet.quality_condition`). **0 means unknown** (so does any value
  <= 0, or NaN; the graph turns them into the model's NaN): the model then uses the embedding it learned for images of unknown quality.
  Models without quality conditioning ignore this input.
* output ``restored``: float32 (B, C, H, W), clamped to [0, 1].

The file's metadata (``metadata_props``) records all of this, plus the model's name, its
configuration and model card, and the tile size and overlap its card recommends (hosts that
tile should use them).

Three things stood between the network and a graph that runs at any size; none is in its
arithmetic, so the export changes nothing of what it computes (tested equal in PyTorch, in float64):

1. :meth:`D2LNet.forward` pads only when a side is not a multiple of the stride: a branch on the
   input's shape that ``torch.export`` must resolve once and for all. :class:`ExportGraph` pads
   unconditionally instead (replicating zero pixels is the identity), by an amount written so
   that the padded side is visibly a multiple of the stride, and crops with ``index_select``
   rather than a slice (a symbolic slice makes ``torch.export`` specialise on whether the image
   needed padding).
2. ONNX's shape inference for a one-sided ``DFT`` (the exporter's translation of ``rfft2`` and
   ``irfft2``) gives the output the input's length along the transformed axis, where a real FFT
   has W // 2 + 1 columns and its inverse W. ONNX Runtime plans memory with those shapes and,
   once H and W are dynamic, reuses a buffer of the wrong size and fails at run time ("Shape
   mismatch attempting to re-use buffer"): the failure that looked like an ``irfft2`` bug. Under
   export, :class:`ComplexFFTs` therefore computes both real FFTs through full complex FFTs
   (two-sided DFTs, whose shapes are inferred right): :func:`rfft2_via_fft2` keeps the first
   W // 2 + 1 columns of ``fft2``, :func:`irfft2_via_ifft` rebuilds the Hermitian half that the
   one-sided spectrum leaves out and takes the real part of ``ifft``. It also keeps two things
   that the phase of eq. (5) depends on: the coefficients a real input makes real get an
   imaginary part of exactly +0 (a complex FFT leaves rounding noise of either sign there), and
   ``atan2(+0, x < 0)`` is pi, as in PyTorch (the exporter's ``atan2`` gives -pi). Phases at pi
   and -pi are the same angle, but the phase correction's 1x1 convolutions mix phases across
   channels as numbers, so a flip between them changes the output (before these two were kept:
   by up to 0.015 on [0, 1] for the bundled colour model, 0.06 for a random-weight test model).
3. The exporter labels intermediate values with symbolic shapes in which ``quality`` has the
   batch's length; the file keeps the shapes of its inputs and outputs only, so that one quality
   for the whole batch, shape (1,), is as valid as one per image.

Measured with ONNX Runtime 1.32 on the CPU (d2lnet-s-color, a JPEG crop of a LIVE1 image): the
output is within 4e-6 of PyTorch's (max abs on [0, 1]) when the padded sides are powers of two
(128, 256), and within 5e-4 otherwise, where ONNX Runtime's DFT is less accurate (1e-4 absolute
on the 96x96 spectrum of a uniform random image, against PyTorch's 1e-6); one 8-bit level is 3.9e-3.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from d2lnet import __version__
from d2lnet.atomic import atomic_write
from d2lnet.cards import overlap_for
from d2lnet.errors import CommandError, UsageError
from d2lnet.fourier import real_coefficient_mask
from d2lnet.model import D2LNet

OPSET = 20  # the first opset whose DFT takes the axis as an input, as the exporter emits it
UNKNOWN_QUALITY = 0.0  # the ``quality`` value that means "unknown": any value <= 0 (or NaN) does
NEEDS_ONNX = 'needs onnx and onnxscript (and onnxruntime to check the file): pip install "d2lnet[onnx]"'


def rfft2_via_fft2(x: torch.Tensor, s: None = None, dim: tuple[int, int] = (-2, -1), norm: str | None = None) -> torch.Tensor:
    """:func:`torch.fft.rfft2` over the last two dimensions, as the first W // 2 + 1 columns of a
    full complex ``fft2``.

    The coefficients that a real input makes real (rows 0 and H / 2 of columns 0 and W / 2) get
    an imaginary part of exactly +0, as :func:`d2lnet.fourier.spectrum` gives them, rather than
    the rounding noise of a complex transform: their phase is 0 or pi, and noise of either sign
    would put it at pi or -pi by chance (see :func:`atan2_ieee`).
    """
    _check_last_two(s is None, dim, "rfft2")
    height, width = x.shape[-2:]
    spectrum = torch.fft.fft2(torch.complex(x, torch.zeros_like(x)), norm=norm)
    half = _columns(spectrum, torch.arange(width // 2 + 1, device=x.device))
    return torch.complex(half.real, torch.where(real_coefficient_mask(height, width, x.device), 0.0, half.imag))


def atan2_ieee(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`torch.atan2` with IEEE 754's value pi at y = +0, x < 0, which the exporter's ONNX
    translation of ``atan2`` turns into -pi. (At y = -0 it gives pi where torch gives -pi: the
    real FFTs here give +0, never -0, on the negative real axis.)"""
    return torch.where((y == 0) & (x < 0), torch.full_like(y, math.pi), torch.atan2(y, x))


def irfft2_via_ifft(
    x: torch.Tensor, s: tuple[int, int] | None = None, dim: tuple[int, int] = (-2, -1), norm: str | None = None
) -> torch.Tensor:
    """:func:`torch.fft.irfft2` over the last two dimensions, with output size ``s`` (H, W), as the
    real part of full complex inverse FFTs: the inverse over the rows, whose half-spectrum rows
    are then complete, and :func:`irfft_via_ifft` over each of them."""
    _check_last_two(s is None or len(s) == 2, dim, "irfft2")
    if s is not None and s[0] != x.shape[-2]:
        raise NotImplementedError("irfft2 with a new height has no export formulation here")
    return irfft_via_ifft(torch.fft.ifft(x, dim=-2, norm=norm), s[-1] if s is not None else None, norm=norm)


def irfft_via_ifft(x: torch.Tensor, n: int | None = None, dim: int = -1, norm: str | None = None) -> torch.Tensor:
    """:func:`torch.fft.irfft` over the last dimension, with output length ``n``, as the real part
    of a full complex inverse FFT: column k > n // 2 of the full spectrum is the conjugate of
    column n - k. Any imaginary part left at column 0 (and n / 2) contributes only to the
    imaginary part of the result, which is dropped, as ``irfft`` ignores it.
    """
    if dim not in (-1, x.dim() - 1):
        raise NotImplementedError(f"irfft over dim {dim} has no export formulation here")
    width = n if n is not None else 2 * (x.shape[-1] - 1)
    k = torch.arange(width, device=x.device)
    mirrored = _columns(x, torch.minimum(k, width - k))  # column k from column min(k, W - k)
    conjugate = torch.where(k <= width // 2, 1.0, -1.0).to(mirrored.real.dtype)
    full = torch.complex(mirrored.real, mirrored.imag * conjugate)
    return torch.fft.ifft(full, dim=-1, norm=norm).real


def _columns(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Columns ``index`` of a complex tensor: a gather, which ``torch.export`` keeps symbolic
    where slicing, flipping and concatenating pieces of symbolic length would specialise."""
    return torch.complex(z.real.index_select(-1, index), z.imag.index_select(-1, index))


def _check_last_two(supported: bool, dim: tuple[int, ...], name: str) -> None:
    if not supported or tuple(dim) not in ((-2, -1),):
        raise NotImplementedError(f"{name} over dims {tuple(dim)} has no export formulation here")


class ComplexFFTs(TorchFunctionMode):
    """While active, ``torch.fft.rfft2``, ``irfft2``, ``irfft`` and ``torch.atan2`` run as
    :func:`rfft2_via_fft2`, :func:`irfft2_via_ifft`, :func:`irfft_via_ifft` and :func:`atan2_ieee`
    (see the module's docstring, 2.). Other real FFTs are refused, so that a change in
    :mod:`d2lnet.fourier` cannot slip a one-sided DFT into an exported file."""

    _REFUSED = (torch.fft.rfft, torch.fft.rfftn, torch.fft.irfftn, torch.fft.hfft, torch.fft.ihfft)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.fft.rfft2:
            return rfft2_via_fft2(*args, **kwargs)
        if func is torch.fft.irfft2:
            return irfft2_via_ifft(*args, **kwargs)
        if func is torch.fft.irfft:
            return irfft_via_ifft(*args, **kwargs)
        if func is torch.atan2:
            return atan2_ieee(*args, **kwargs)
        if func in self._REFUSED:
            raise NotImplementedError(f"torch.fft.{func.__name__} has no export formulation in d2lnet.export")
        return func(*args, **kwargs)


def model_quality(quality: torch.Tensor) -> torch.Tensor:
    """The model's quality input for the file's ``quality``: the file's unknown (any value <= 0, as
    hosts without NaN can send, or NaN) becomes the model's NaN; known qualities pass unchanged."""
    return torch.where(quality > 0, quality, torch.full_like(quality, float("nan")))


class ExportGraph(nn.Module):
    """What the ONNX graph computes: ``D2LNet.forward(image, quality).out2``, clamped to [0, 1],
    with the stride padding written so that ``torch.export`` keeps H and W symbolic and the real
    FFTs computed through complex ones (see the module's docstring)."""

    def __init__(self, model: D2LNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        s = self.model.config.stride
        # s * ceil(n / s) - n pixels: the padded side is a multiple of s by construction.
        padded = F.pad(image, (0, s * ((w + s - 1) // s) - w, 0, s * ((h + s - 1) // s) - h), mode="replicate")
        with ComplexFFTs():
            restored = self.model(padded, model_quality(quality)).out2
        rows = torch.arange(h, device=image.device)
        cols = torch.arange(w, device=image.device)
        return restored.index_select(2, rows).index_select(3, cols).clamp(0, 1)


def onnx_metadata(model: D2LNet, name: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: everything a host needs to call it."""
    config, s = model.config, model.config.stride
    card = getattr(model, "card", None)
    tile = card.tile if card is not None else None
    return {
        "name": name,
        "producer": f"d2lnet {__version__}",
        "task": "JPEG artifact removal (scale 1)",
        "channels": str(config.in_channels),
        "color": "RGB" if config.in_channels == 3 else "grey (BT.601 Y)",
        "layout": "NCHW",
        "range": "inputs and output float32 in [0, 1]; the output is clamped",
        "stride": str(s),
        "sizes": f"any height and width >= {s + 1}; sides that are not multiples of {s} are padded inside "
        "(edge replication) and cropped back",
        "quality_input": "float32 of shape (B,) or (1,): the JPEG quality factor 1-100 of each image"
        + ("" if config.quality_conditioning else " (ignored: this model is not quality-conditioned)"),
        "quality_unknown": f"{UNKNOWN_QUALITY:g} (any value <= 0, or NaN, means unknown quality)",
        "tile": "" if tile is None else str(tile),
        "overlap": str(overlap_for(model)),
        "tile_note": "the tile size and overlap that d2lnet's engine uses for this model; empty tile: whole images",
        "config": json.dumps(config.to_dict()),
        "card": json.dumps(card.to_dict()) if card is not None else "{}",
    }


def _example_inputs(model: D2LNet) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs to trace with: a batch of 2 and sides that are not multiples of the stride, so that
    the traced graph has no reason to specialise on any of them (1s would be)."""
    s = model.config.stride
    image = torch.rand(2, model.config.in_channels, 4 * s + 3, 5 * s + 1)
    return image, torch.tensor([50.0, UNKNOWN_QUALITY])


def export_onnx(model: D2LNet, path: str | Path, name: str | None = None) -> Path:
    """Export ``model`` to an ONNX file at ``path`` with dynamic batch, height and width; written to
    a temporary file, then renamed. Returns the path. ``model`` is moved to the CPU in float32 (in
    place, as ``nn.Module.to`` does) and put in eval mode; ``name`` defaults to its card's.

    Raises ModuleNotFoundError without onnx and onnxscript.
    """
    import onnx  # noqa: F401  (fail here, clearly, rather than deep inside torch.onnx)
    import onnxscript  # noqa: F401

    path = Path(path)
    model = model.float().cpu().eval()
    graph = ExportGraph(model).eval()
    s = model.config.stride
    batch = torch.export.Dim("batch", min=1)
    height, width = torch.export.Dim("height", min=s + 1), torch.export.Dim("width", min=s + 1)
    dynamic = {"image": {0: batch, 2: height, 3: width}, "quality": {0: batch}}
    inputs = _example_inputs(model)
    with _quiet(), torch.no_grad():
        program = torch.export.export(graph, inputs, dynamic_shapes=dynamic)
        onnx_program = torch.onnx.export(
            program,
            inputs,
            input_names=["image", "quality"],
            output_names=["restored"],
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            dynamo=True,
        )
    proto = onnx_program.model_proto
    del proto.graph.value_info[:]  # the exporter's intermediate shape labels (see the module's docstring, 3.)
    # ``quality`` may have one value for the whole batch: its length is its own symbol, not ``batch``.
    proto.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "quality_batch"
    proto.doc_string = (
        "D2LNet JPEG artifact removal. image: float32 (B, C, H, W) in [0, 1]; quality: float32 (B,) or (1,), "
        f"JPEG quality 1-100, {UNKNOWN_QUALITY:g} = unknown; restored: float32 (B, C, H, W) in [0, 1]."
    )
    del proto.metadata_props[:]
    for key, value in onnx_metadata(model, name or getattr(getattr(model, "card", None), "name", "d2lnet")).items():
        proto.metadata_props.add(key=key, value=value)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return path


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, warnings and log messages (about packages the graph
    does not use, such as torchvision), which say nothing about this export's result."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def onnxruntime_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session for an exported file, with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(path: str | Path, model: D2LNet, size: tuple[int, int] | None = None) -> float:
    """The largest absolute difference between ONNX Runtime's output for ``path`` and PyTorch's
    (``forward``, clamped) on one smooth test image, at a known and at the unknown quality (the
    file's 0, the model's NaN)."""
    s = model.config.stride
    height, width = size or (6 * s + 5, 9 * s + 3)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    channels = [0.5 + 0.4 * torch.sin(2 * math.pi * (k + 1) * x + 3 * y) for k in range(model.config.in_channels)]
    image = torch.stack(channels)[None]
    session = onnxruntime_session(path)
    worst = 0.0
    for quality in (50.0, UNKNOWN_QUALITY):
        q = torch.tensor([quality])
        with torch.no_grad():
            expected = model(image, model_quality(q)).out2.clamp(0, 1)
        (got,) = session.run(None, {"image": image.numpy(), "quality": q.numpy()})
        worst = max(worst, float((torch.from_numpy(got) - expected).abs().max()))
    return worst


def run_cli(args: argparse.Namespace) -> int:
    """``d2lnet export``: write the ONNX file, then check it with ONNX Runtime when installed."""
    from importlib.util import find_spec

    from d2lnet.pretrained import PRETRAINED, load_model

    if find_spec("onnx") is None or find_spec("onnxscript") is None:
        raise CommandError(NEEDS_ONNX)
    output = Path(args.output or f"{Path(args.model).stem if args.model not in PRETRAINED else args.model}.onnx")
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} exists (add --overwrite to replace it)")
    try:
        model = load_model(args.model)
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from None
    export_onnx(model, output)
    megabytes = output.stat().st_size / 1e6
    print(f"wrote {output} ({megabytes:.1f} MB): image (B, {model.config.in_channels}, H, W) in [0, 1], "
          f"quality (B,) or (1,) with {UNKNOWN_QUALITY:g} = unknown -> restored (B, {model.config.in_channels}, H, W)")  # fmt: skip
    if args.check and find_spec("onnxruntime") is not None:
        print(f"onnxruntime matches PyTorch within {max_difference(output, model):.1e} (max abs difference on [0, 1])")
    return 0
