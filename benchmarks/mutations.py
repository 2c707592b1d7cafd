"""Mutation check: does the test suite fail for plausible wrong implementations of the paper?

Each mutation below is a small textual patch of one module of ``src/d2lnet`` (a swapped term,
a wrong argument, a dropped residual...). It is applied to a temporary copy of the source
tree, never to the checkout; then the test files that pin that module run against the copy
(``PYTHONPATH`` first on the path, ``pytest -x -q``, one thread). A mutation is

* **killed** when a test fails,
* **survived** when every test passes: a hole in the tests,
* **not applicable** when none of its snippets occurs exactly once in the current source
  (the code was rewritten: give the mutation a snippet of the new code),
* **broken** when the mutated package cannot even be imported or the tests not collected.

A mutation may list several (old, new) snippets: the first whose ``old`` occurs exactly once is
applied, so one mutation can follow the code across a rewrite. List the snippet of the code the
model runs first: a snippet that also matches a reference copy kept for tests (such as
``fourier_literal``) mutates code nothing runs, and the mutation then survives.

    python benchmarks/mutations.py                     # all; writes benchmarks/results/mutations.md
    python benchmarks/mutations.py --only eq10-swap    # some of them; no report written
    python benchmarks/mutations.py --list
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "results" / "mutations.md"

MODEL_TESTS = (
    "tests/test_equations.py", "tests/test_model.py", "tests/test_fourier.py", "tests/test_fourier_fast.py", "tests/test_golden.py",
)  # fmt: skip
FOURIER_TESTS = (
    "tests/test_fourier.py", "tests/test_fourier_fast.py", "tests/test_losses.py", "tests/test_equations.py", "tests/test_golden.py",
)  # fmt: skip
OPS_TESTS = ("tests/test_ops.py", "tests/test_model.py", "tests/test_equations.py", "tests/test_golden.py")
WINOGRAD_TESTS = ("tests/test_winograd.py", "tests/test_fusion.py")
FUSION_TESTS = ("tests/test_fusion.py",)
LOSS_TESTS = ("tests/test_losses.py",)
METRIC_TESTS = ("tests/test_metrics.py",)
TESTS = {
    "model.py": MODEL_TESTS, "ops.py": OPS_TESTS, "fourier.py": FOURIER_TESTS, "winograd.py": WINOGRAD_TESTS, "fusion.py": FUSION_TESTS,
    "losses.py": LOSS_TESTS, "metrics.py": METRIC_TESTS,
}  # fmt: skip


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # a file of src/d2lnet
    description: str  # the wrong implementation, in words
    patches: tuple[tuple[str, str], ...]  # alternatives: (old, new)


def _m(name: str, module: str, description: str, *patches: tuple[str, str]) -> Mutation:
    return Mutation(name, module, description, patches)


MUTATIONS: list[Mutation] = [
    # ---- a correction block, eqs. (6) to (10)
    _m("eq10-swap", "model.py", "eq. (10) with F_spa and F_fre swapped: SA(F_dif) F_fre + F_spa",
       ("torch.addcmul(f_fre, self.attention(f_dif), f_spa)", "torch.addcmul(f_spa, self.attention(f_dif), f_fre)"),
       ("self.attention(f_dif) * f_spa + f_fre", "self.attention(f_dif) * f_fre + f_spa")),
    _m("eq9-sign", "model.py", "eq. (9) with the sign flipped: F_dif = F_fre - F_spa",
       ("f_dif = f_spa - f_fre", "f_dif = f_fre - f_spa")),
    _m("eq10-attention-on-fspa", "model.py", "eq. (10)'s spatial attention computed on F_spa instead of F_dif",
       ("self.attention(f_dif)", "self.attention(f_spa)")),
    _m("eq10-attention-no-sigmoid", "model.py", "SA(.) without its sigmoid",
       ("return torch.sigmoid(self.conv(torch.cat([channel_mean(x), channel_max(x)], dim=1)))",
        "return self.conv(torch.cat([channel_mean(x), channel_max(x)], dim=1))"),
       ("return torch.sigmoid(self.conv(torch.cat([channel_mean(x), peak], dim=1)))",
        "return self.conv(torch.cat([channel_mean(x), peak], dim=1))"),
       ("return torch.sigmoid(self.conv(pooled))", "return self.conv(pooled)")),
    _m("sa-pooling-order", "model.py", "SA(.) convolves [max, mean] where the weights expect [mean, max]",
       ("torch.cat([channel_mean(x), channel_max(x)], dim=1)", "torch.cat([channel_max(x), channel_mean(x)], dim=1)"),
       ("torch.cat([channel_mean(x), peak], dim=1)", "torch.cat([peak, channel_mean(x)], dim=1)"),
       ("torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)",
        "torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)")),
    _m("acb-corrects-phase", "model.py", "the ACB refines the phase (and keeps the amplitude)",
       ('corrects = "amplitude"', 'corrects = "phase"')),
    _m("pcb-corrects-amplitude", "model.py", "the PCB refines the amplitude (and keeps the phase)",
       ('corrects = "phase"', 'corrects = "amplitude"')),
    _m("eq8-conv-on-the-other-spectrum", "model.py", "eq. (8): the ACB's new amplitude is Conv(phase)",
       ("with_amplitude(s, amplitude, self.spectral_fp32(amplitude)", "with_amplitude(s, amplitude, self.spectral_fp32(phase_of(s))"),
       ("with_amplitude(s, amplitude, self.spectral(amplitude", "with_amplitude(s, amplitude, self.spectral(phase_of(s)"),
       ("amplitude = self.spectral(amplitude)", "amplitude = self.spectral(phase)")),
    _m("eq8-pcb-swaps-amplitude-and-phase", "model.py", "the PCB rebuilds F^-1(Conv(A), P) in the phase branch",
       ("s = polar(amplitude, self.spectral_fp32(phase_of(s)))", "s = polar(self.spectral_fp32(phase_of(s)), amplitude)"),
       ("from_amplitude_phase(amplitude, self.spectral_fp32(phase_of(s)), size",
        "from_amplitude_phase(self.spectral_fp32(phase_of(s)), amplitude, size"),
       ("from_amplitude_phase(amplitude, self.spectral(phase_of(s).to(dtype)), size",
        "from_amplitude_phase(self.spectral(phase_of(s).to(dtype)), amplitude, size"),
       ("from_amplitude_phase(amplitude, self.spectral(phase_of(s))", "from_amplitude_phase(self.spectral(phase_of(s)), amplitude"),
       ("phase = self.spectral(phase)", "phase, amplitude = amplitude, self.spectral(phase)")),
    _m("spectral-conv-without-activation", "model.py", "Conv(.) of eq. (8) without the LeakyReLU between its 1x1 convolutions",
       ("pointwise_conv(second, act(pointwise_conv(first, z)))", "pointwise_conv(second, pointwise_conv(first, z))"),
       ("_pointwise(second, act(_pointwise(first, z)))", "_pointwise(second, _pointwise(first, z))")),
    _m("hin-normalises-the-other-half", "ops.py", "the half-instance norm takes its statistics from the second half",
       ("centred = y[:, :half].to(stats_dtype, copy=True)", "centred = y[:, half:].to(stats_dtype, copy=True)"),
       ("normalised = y[:, :half]", "normalised = y[:, half:]")),
    _m("hin-variance-without-the-mean", "ops.py", "the half-instance norm's variance as the mean square, E[x^2]",
       ("spatial_mean(centred.sub_(mean).square_())", "spatial_mean(centred.square_())"),
       ("var = (normalised - mean).square()", "var = normalised.square()")),
    _m("block-identity-dropped", "model.py", "the released layout's identity term F_Xi missing from eq. (10)",
       ("f_out = f_out + f_x", "f_out = f_out")),
    _m("quality-modulation-dropped", "model.py", "the quality never modulates F_spa",
       ("            f_spa = self.film(f_spa, cond)\n", "            pass\n"),
       ("            f_spa = self.modulation(f_spa, cond)\n", "            pass\n")),
    # ---- SAM and the stage boundary, eqs. (13) and (14)
    _m("sam-gate-on-input", "model.py", "SAM gates on X_in instead of X_out1",
       ("gate = torch.sigmoid(self.from_image(x_out1))", "gate = torch.sigmoid(self.from_image(x_in))")),
    _m("sam-image-residual-missing", "model.py", "SAM's X_out1 without the residual X_in",
       ("x_out1 = self.to_image(features) + x_in", "x_out1 = self.to_image(features)")),
    _m("sam-feature-residual-missing", "model.py", "SAM's X_amp without the residual features",
       ("x_amp = torch.addcmul(features, self.conv1(features), gate)", "x_amp = self.conv1(features) * gate"),
       ("x_amp = self.conv1(features) * gate + features", "x_amp = self.conv1(features) * gate")),
    _m("eq13-phase-of-xout1", "model.py", "eq. (13) takes the phase of X_out1 (X_inv = X_out1)",
       ("swap_amplitude(amplitude_from=x_out1, phase_from=x_in", "swap_amplitude(amplitude_from=x_out1, phase_from=x_out1")),
    _m("eq13-roles-swapped", "model.py", "eq. (13) with A(X_in) and P(X_out1) in the paper's layout",
       ("swap_amplitude(amplitude_from=x_out1, phase_from=x_in", "swap_amplitude(amplitude_from=x_in, phase_from=x_out1")),
    _m("released-stage2-input-as-paper", "model.py", "the released layout builds its stage-2 input as eq. (13)",
       ("swap_amplitude(amplitude_from=x_in, phase_from=x_out1", "swap_amplitude(amplitude_from=x_out1, phase_from=x_in")),
    _m("eq14-concat-order", "model.py", "eq. (14)'s concat(X_inv, X_amp) in the other order",
       ("torch.cat([self.project2(x_inv), x_amp], dim=1)", "torch.cat([x_amp, self.project2(x_inv)], dim=1)")),
    _m("domain-order-ignored", "model.py", "the released layout still corrects amplitude first",
       ("if paper else (PhaseCorrectionModule, AmplitudeCorrectionModule)", "if paper else (AmplitudeCorrectionModule, PhaseCorrectionModule)")),
    # ---- the cross-stage fusion and the output head
    _m("cross-stage-swap-in-module", "model.py", "the stage-2 U-Net fuses the encoder features with the decoder's conv and vice versa",
       ("self.fuse_encoder[level](stage1_encoder[level]) + self.fuse_decoder[level](stage1_decoder[level])",
        "self.fuse_encoder[level](stage1_decoder[level]) + self.fuse_decoder[level](stage1_encoder[level])")),
    _m("cross-stage-swap-in-network", "model.py", "stage 1's encoder and decoder features handed to stage 2 swapped",
       ("self.stage2(features, cond, encoder, decoder)", "self.stage2(features, cond, decoder, encoder)")),
    _m("cross-stage-missing", "model.py", "no cross-stage fusion",
       ("self.stage2 = second(config, cross_stage=True)", "self.stage2 = second(config, cross_stage=False)")),
    _m("global-residual-missing", "model.py", "the refine head without the global residual X_in",
       ("y = self.refine(features) + x_in", "y = self.refine(features)")),
    _m("out2-residual-from-input", "model.py", "the last residual adds X_in instead of the refined image",
       ("x_out2 = self.refine_out(self.project_out(y)) + y", "x_out2 = self.refine_out(self.project_out(y)) + x_in")),
    _m("fft-norm-default-backward", "model.py", "the default configuration uses the unnormalised FFT, not eq. (3)'s",
       ('fft_norm: FFTNorm = "ortho"', 'fft_norm: FFTNorm = "backward"')),
    # ---- the Fourier transform, eqs. (3) to (5)
    _m("fft-forward-unnormalised", "fourier.py", "the forward FFT ignores the norm (always unnormalised)",
       ("torch.fft.rfft2(x, norm=norm)", 'torch.fft.rfft2(x, norm="backward")'),
       ("torch.fft.rfft2(x.float(), norm=norm)", 'torch.fft.rfft2(x.float(), norm="backward")'),
       ("torch.fft.rfft2(_real(x), norm=norm)", 'torch.fft.rfft2(_real(x), norm="backward")')),
    _m("eq4-amplitude-squared", "fourier.py", "eq. (4) without the square root (the power spectrum)",
       ("torch.addcmul(s.real.square().add_(_EPS * _EPS), s.imag, s.imag).sqrt_()",
        "torch.addcmul(s.real.square().add_(_EPS * _EPS), s.imag, s.imag)"),
       ("torch.sqrt(re * re + im * im + _EPS * _EPS)", "(re * re + im * im + _EPS * _EPS)"),
       ("torch.sqrt(s.real.square() + s.imag.square() + _EPS * _EPS)", "(s.real.square() + s.imag.square() + _EPS * _EPS)")),
    _m("eq5-arctan-not-atan2", "fourier.py", "eq. (5) as a plain arctan(I/R), which loses the quadrant",
       ("        return torch.atan2(imag, real)\n", "        return torch.atan(imag / real)\n"),
       ("torch.atan2(imag, real + (real == 0) * _EPS)", "torch.atan(imag / (real + (real == 0) * _EPS))"),
       ("torch.atan2(im, re + (re == 0) * _EPS)", "torch.atan(im / (re + (re == 0) * _EPS))"),
       ("torch.atan2(s.imag, s.real + (s.real == 0) * _EPS)", "torch.atan(s.imag / (s.real + (s.real == 0) * _EPS))")),
    _m("eq7-amplitude-phase-swapped", "fourier.py", "the split of eq. (7) returns (phase, amplitude)",
       ("    return amplitude, phase\n", "    return phase, amplitude\n"),
       ("return amplitude, phase_of(s)", "return phase_of(s), amplitude")),
    _m("inverse-cos-sin-swapped", "fourier.py", "F^-1(A, P) built from A sin P + i A cos P",
       ("torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))",
        "torch.complex(amplitude * torch.sin(phase), amplitude * torch.cos(phase))")),
    _m("swap-amplitude-from-wrong-image", "fourier.py", "X_inv takes the amplitude of the phase donor",
       ("_, new_amplitude = spectrum(amplitude_from, norm)", "_, new_amplitude = spectrum(phase_from, norm)"),
       ("amplitude, _ = amplitude_phase(amplitude_from, norm)", "amplitude, _ = amplitude_phase(phase_from, norm)")),
    # ---- gradients written by hand, and the fast convolutions: the same functions as autograd's
    _m("spectrum-backward-not-adjoint", "fourier.py",
       "the spectrum's backward inverts with the forward's normalisation, not its adjoint's",
       ("return _irfft2(grad, ctx.size, _ADJOINT_NORM[ctx.norm]), None", "return _irfft2(grad, ctx.size, ctx.norm), None")),
    _m("spectrum-backward-inner-columns-twice", "fourier.py",
       "the spectrum's backward counts the columns that stand for two coefficients at full weight",
       ("grad[..., _inner_columns(ctx.size[-1])] *= 0.5", "grad[..., _inner_columns(ctx.size[-1])] *= 1.0")),
    _m("inverse-backward-not-adjoint", "fourier.py",
       "the inverse's backward transforms with the forward's normalisation, not its adjoint's",
       ("grad_s = torch.fft.rfft2(_real(grad), norm=_ADJOINT_NORM[ctx.norm])", "grad_s = torch.fft.rfft2(_real(grad), norm=ctx.norm)")),
    _m("phase-gradient-sign", "fourier.py", "dP/dS with the sign of its real part flipped",
       ("return torch.complex(-imag * grad, real * grad)", "return torch.complex(imag * grad, real * grad)")),
    _m("hin-backward-sign", "ops.py", "the half-instance norm's backward with the (y - mean) term's sign flipped",
       ("b = -a * rstd * sum_g_yhat / count", "b = a * rstd * sum_g_yhat / count")),
    _m("winograd-input-grad-kernel-not-flipped", "winograd.py",
       "the Winograd input gradient correlates with the kernel unflipped",
       ("conv3x3(grad, weight.transpose(0, 1).flip(2, 3), None, (1, 1))", "conv3x3(grad, weight.transpose(0, 1), None, (1, 1))")),
    _m("winograd-bias-grad-dropped", "winograd.py", "the Winograd convolution returns no bias gradient",
       ("mask = [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]",
        "mask = [False, ctx.needs_input_grad[1], False]")),
    _m("fusion-winograd-activation-dropped", "fusion.py", "the Winograd path of a fused convolution skips its LeakyReLU",
       ("            F.leaky_relu_(y, self.scalars[0])\n", "            pass\n")),
    # ---- the loss, eqs. (15) to (22)
    _m("loss-spatial-l2", "losses.py", "eq. (15) as a squared (L2) distance",
       ("(x_out2.float() - gt.float()).abs().mean()", "(x_out2.float() - gt.float()).pow(2).mean()")),
    _m("loss-spatial-on-out1", "losses.py", "L_spa on X_out1 instead of X_out2",
       ("spa = spatial_loss(x_out2, gt)", "spa = spatial_loss(x_out1, gt)")),
    _m("loss-amplitude-on-out2", "losses.py", "L_amp on X_out2 instead of X_out1",
       ("amp = amplitude_loss(x_out1, gt", "amp = amplitude_loss(x_out2, gt")),
    _m("loss-phase-on-out1", "losses.py", "L_pha on X_out1 instead of X_out2",
       ("pha = phase_loss(x_out2, gt", "pha = phase_loss(x_out1, gt")),
    _m("loss-amplitude-l2", "losses.py", "eq. (18) as a squared distance",
       ("amplitude_phase(gt, norm)[0]).abs().mean()", "amplitude_phase(gt, norm)[0]).pow(2).mean()")),
    _m("loss-alpha-on-spatial", "losses.py", "eq. (22) with alpha on L_spa: alpha L_spa + L_amp + L_pha",
       ("spa + self.alpha * (amp + pha)", "self.alpha * spa + amp + pha")),
    _m("loss-alpha-on-amplitude-only", "losses.py", "eq. (22) with alpha on L_amp only",
       ("spa + self.alpha * (amp + pha)", "spa + self.alpha * amp + pha")),
    _m("loss-alpha-default", "losses.py", "alpha = 0.5 instead of the paper's 0.05",
       ("alpha: float = 0.05", "alpha: float = 0.5")),
    _m("loss-phase-not-wrapped", "losses.py", "phase differences not wrapped onto the circle",
       ("wrap: bool = True", "wrap: bool = False")),
    _m("loss-phase-not-wrapped-in-total", "losses.py", "D2LLoss does not wrap phase differences",
       ("wrap_phase: bool = True", "wrap_phase: bool = False")),
    _m("loss-default-fft-norm", "losses.py", "D2LLoss defaults to the unnormalised FFT",
       ('fft_norm: FFTNorm = "ortho", wrap_phase', 'fft_norm: FFTNorm = "backward", wrap_phase')),
    # ---- the metrics
    _m("psnr-0-1-scale", "metrics.py", "PSNR of [0, 1] images against a peak of 255",
       ("return _psnr_from_mse(mse(a, b))", "return _psnr_from_mse(mse(a, b) / 255**2)")),
    _m("peak-1", "metrics.py", "peak 1 instead of 255 (PSNR and SSIM's constants)",
       ("_PEAK = 255.0", "_PEAK = 1.0")),
    _m("ssim-uniform-window", "metrics.py", "SSIM with a uniform 11x11 window",
       ("w = np.exp(-(x**2) / (2 * sigma**2))", "w = np.ones_like(x)")),
    _m("ssim-sigma-1", "metrics.py", "SSIM's Gaussian with sigma 1 instead of 1.5",
       ("sigma: float = 1.5", "sigma: float = 1.0")),
    _m("ssim-k2", "metrics.py", "SSIM with K2 = 0.02 instead of 0.03",
       ("(0.03 * _PEAK) ** 2", "(0.02 * _PEAK) ** 2")),
    _m("bef-block-4", "metrics.py", "BEF on 4x4 blocks instead of 8x8",
       ("block: int = 8", "block: int = 4")),
    _m("psnrb-mse-on-y", "metrics.py", "PSNR-B of a colour image with the MSE of its Y channel, not of RGB",
       ("err = mse(reference, test)",
        "err = mse(rgb_to_y(np.asarray(reference)), rgb_to_y(np.asarray(test))) if np.ndim(test) == 3 else mse(reference, test)")),
    _m("bef-on-reference", "metrics.py", "PSNR-B's BEF measured on the reference, not the restored image",
       ("test = np.asarray(test)", "test = np.asarray(reference)")),
    _m("bef-eta-longer-side", "metrics.py", "BEF scaled by log2(B) / log2(max(H, W))",
       ("math.log2(min(h, w))", "math.log2(max(h, w))")),
    _m("bef-integer-boundary-counts", "metrics.py", "N_HB = H (W // B - 1): boundary counts rounded down",
       ("n_hb, n_vb = h * (w / block - 1), w * (h / block - 1)", "n_hb, n_vb = h * (w // block - 1), w * (h // block - 1)")),
    _m("bef-vertical-only", "metrics.py", "BEF ignores the boundaries between block rows",
       ("d_b = (dh[:, on_h].sum() + dv[on_v, :].sum())", "d_b = (dh[:, on_h].sum() + 0 * dv[on_v, :].sum())")),
    _m("y-coefficient-off", "metrics.py", "BT.601 Y with the 256-scale red coefficient (65.738)",
       ("x[..., 0] * (65.481 / 255)", "x[..., 0] * (65.738 / 255)")),
    _m("y-full-range", "metrics.py", "Y without the studio-range offset 16 (0.299 R + 0.587 G + 0.114 B)",
       ("16.0 + x[..., 0] * (65.481 / 255) + x[..., 1] * (128.553 / 255) + x[..., 2] * (24.966 / 255)",
        "0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]")),
]  # fmt: skip


def _environment(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _pytest(tests: tuple[str, ...], src: Path) -> tuple[int, str, float]:
    """Runs ``tests`` against the package in ``src``: (return code, first failing test, seconds)."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    result = subprocess.run(command, cwd=REPO, env=_environment(src), capture_output=True, text=True, timeout=900)
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.MULTILINE)
    return result.returncode, failed.group(1) if failed else "", time.perf_counter() - start


def _apply(mutation: Mutation, text: str) -> str | None:
    """The mutated text, or None when no snippet of the mutation occurs exactly once."""
    for old, new in mutation.patches:
        if text.count(old) == 1:
            return text.replace(old, new)
    return None


def run(mutations: list[Mutation], src: Path) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="d2lnet-mutations-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        probe = subprocess.run([sys.executable, "-c", "import d2lnet; print(d2lnet.__file__)"],
                               env=_environment(copy), capture_output=True, text=True, check=True)  # fmt: skip
        if not probe.stdout.strip().startswith(str(copy)):
            sys.exit(f"mutations: the tests would import d2lnet from {probe.stdout.strip()}, not from the copy")
        groups = sorted({tests for tests in TESTS.values()})
        for tests in groups:
            code, failed, _ = _pytest(tests, copy)
            if code != 0:
                sys.exit(f"mutations: the tests fail without any mutation ({failed or code}); fix that first")
        results = []
        for mutation in mutations:
            path = copy / "d2lnet" / mutation.module
            original = path.read_text()
            mutated = _apply(mutation, original)
            if mutated is None:
                outcome, failed, seconds = "not applicable", "", 0.0
            else:
                path.write_text(mutated)
                try:
                    code, failed, seconds = _pytest(TESTS[mutation.module], copy)
                finally:
                    path.write_text(original)
                outcome = {0: "survived", 1: "killed"}.get(code, "broken")
            results.append({"mutation": mutation, "outcome": outcome, "failed": failed, "seconds": seconds})
            print(f"{outcome:>14}  {mutation.name:<36} {failed}", flush=True)
        return results


def _source_state() -> str:
    """The commit of the mutated modules, and which of them differ from it."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    modules = [f"src/d2lnet/{module}" for module in TESTS]
    dirty = subprocess.run([*git, "status", "--porcelain", "--", *modules], capture_output=True, text=True).stdout.split()
    changed = [Path(p).name for p in dirty if p.startswith("src/")]
    return f"{commit} (with uncommitted changes to {', '.join(changed)})" if changed else commit


def report(results: list[dict]) -> str:
    counts = {o: sum(r["outcome"] == o for r in results) for o in ("killed", "survived", "not applicable", "broken")}
    lines = [
        "# Mutation check",
        "",
        f"`python benchmarks/mutations.py` on {datetime.date.today()}, source {_source_state()}. Each mutation is",
        "a plausible wrong implementation of the paper, patched into a temporary copy of `src/d2lnet`;",
        "the test files that pin its module then run against the copy (`pytest -x -q`, one thread):",
        "",
        *(f"- {module}: {', '.join(f'`{t}`' for t in tests)}" for module, tests in TESTS.items()),
        "",
        f"**{counts['killed']} killed, {counts['survived']} survived**, {counts['not applicable']} not applicable,"
        f" {counts['broken']} broken, of {len(results)}.",
        "",
        "| mutation | module | the wrong implementation | result | first failing test | s |",
        "|---|---|---|---|---|---:|",
    ]
    for r in results:
        m = r["mutation"]
        failed = f"`{r['failed']}`" if r["failed"] else ""
        lines.append(f"| {m.name} | {m.module} | {m.description} | {r['outcome']} | {failed} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only (no report is written)")
    parser.add_argument("--src", type=Path, default=REPO / "src", help="the source tree to mutate a copy of")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name:<36} {m.module:<11} {m.description}")
        return
    chosen = MUTATIONS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTATIONS}
        if unknown:
            sys.exit(f"mutations: unknown mutation(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in MUTATIONS if m.name in args.only]
    results = run(chosen, args.src.resolve())
    if not args.only:
        REPORT.write_text(report(results))
        print(f"wrote {REPORT.relative_to(REPO)}")
    if any(r["outcome"] in ("survived", "broken") for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
