"""The evaluation protocol of the paper's Tables 1 and 2, and ``d2lnet eval``.

Protocol (it reproduces the JPEG rows the paper prints, and our test sets' documented ones,
to the printed decimals):

* the ground truth is the test image as stored; its grey version (Table 1) is the rounded
  BT.601 Y channel (:func:`d2lnet.metrics.rgb_to_y`), except for sets stored grey already;
* it is compressed once per quality factor with :func:`d2lnet.jpeg.roundtrip` (Pillow, 4:2:0),
  and that same decoded JPEG goes to every method, so methods see identical inputs;
* models are told the quality factor the image was compressed at, which is exactly what a
  blind model reads from the file with :func:`d2lnet.jpeg.estimate_quality`;
* PSNR, SSIM and PSNR-B (:mod:`d2lnet.metrics`) are computed per image on uint8 outputs (RGB for
  colour) and averaged over the images of a set.

Modules: :mod:`~d2lnet.evaluation.testsets` (ground truths), :mod:`~d2lnet.evaluation.methods`
(the JPEG baseline and models), :mod:`~d2lnet.evaluation.protocol` (scoring, also used by
training's validation), :mod:`~d2lnet.evaluation.paper` (the paper's numbers and suite),
:mod:`~d2lnet.evaluation.reports` (tables, JSON, plots, crops) and
:mod:`~d2lnet.evaluation.command` (``d2lnet eval``).
"""

from __future__ import annotations

from d2lnet.errors import UsageError


class EvalError(UsageError):
    """A problem with what ``d2lnet eval`` was asked to do, or with its data (reported in one line)."""
