"""Fig. 3 and equations (6) to (14), each against an independent NumPy computation.

Correction blocks, SAM and the cross-stage fusion are hand-built: their convolutions get
random per-pixel channel mixes (centre taps only, see ``reference.set_pointwise``), so that
the expected output can be written down from the paper's equations with NumPy's FFT in
float64. The network's wiring is checked with forward hooks on the parts Fig. 3 names: what
each part receives is what the figure says it receives. The module names used here are the
keys of the released weights, so they are part of the model's contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from helpers import tiny_model
from reference import as_numpy, fft, ifft, leaky_relu, pointwise, set_pointwise, sigmoid

from d2lnet.model import (
    SAM,
    AmplitudeCorrectionBlock,
    AmplitudeCorrectionModule,
    D2LNetConfig,
    DualDomainBlock,
    PhaseCorrectionBlock,
    PhaseCorrectionModule,
)

SLOPE = 0.2  # the LeakyReLU slope of the default configuration (the released code's)

# --------------------------------------------------------------------------- eqs. (6) to (10): a correction block

# name: (configuration overrides, the FFT normalisation, F_Xi added to eq. (10), F_spa modulated)
LAYOUTS = {
    "paper": ({}, "ortho", False, False),  # the defaults: eq. (3)'s 1/sqrt(HW), eq. (10) as printed
    "released": ({"fft_norm": "backward", "block_identity": True}, "backward", True, False),
    "quality": ({"quality_conditioning": True, "quality_dim": 4}, "ortho", False, True),
}


def _random_mix(rng: np.random.Generator, c_out: int, c_in: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0, 0.7, (c_out, c_in)), rng.normal(0, 0.3, c_out)


def _hand_built_block(block_cls: type[DualDomainBlock], layout: str, c_in: int = 2, c_out: int = 3):
    """A block whose every convolution is a known per-pixel channel mix, and the NumPy function
    that eqs. (6) to (10) say it computes: ``(block, expected(x, conditioned) -> F_out)``."""
    overrides, norm, identity, _ = LAYOUTS[layout]
    corrects = {AmplitudeCorrectionBlock: "amplitude", PhaseCorrectionBlock: "phase"}[block_cls]
    config = D2LNetConfig(width=8, depth=2, **overrides)
    block = block_cls(c_in, c_out, config).double().eval()
    rng = np.random.default_rng(5)
    project = _random_mix(rng, c_out, c_in)
    project[1][:] += 2.0  # F_Xi's mean (its DC coefficient) positive: a phase of 0, not +-pi
    spatial1, spatial2 = _random_mix(rng, c_out, c_in), _random_mix(rng, c_out, c_out)
    spectral1, spectral2 = _random_mix(rng, c_out, c_out), _random_mix(rng, c_out, c_out)
    attention = np.array([[1.3, -0.8]])  # SA = sigmoid(1.3 mean_c + -0.8 max_c)
    for conv, (w, b) in [(block.project, project), (block.spatial[0], spatial1), (block.spatial[2], spatial2),
                         (block.spectral[0], spectral1), (block.spectral[2], spectral2)]:  # fmt: skip
        set_pointwise(conv, w, b)
    set_pointwise(block.attention.conv, attention)
    gamma, beta = rng.normal(0, 0.5, c_out), rng.normal(0, 0.5, c_out)
    if block.film is not None:  # the quality FiLM with a constant output: F_spa (1 + gamma) + beta
        with torch.no_grad():
            block.film.linear.weight.zero_()
            block.film.linear.bias.copy_(torch.from_numpy(np.concatenate([gamma, beta])))

    def conv(z: np.ndarray) -> np.ndarray:  # Conv(.) of eq. (8): 1x1 conv, LeakyReLU, 1x1 conv
        return pointwise(leaky_relu(pointwise(z, *spectral1), SLOPE), *spectral2)

    def expected(x: np.ndarray, conditioned: bool) -> np.ndarray:
        f_x = pointwise(x, *project)  # F_Xi, the block's input at its width
        f_spa = leaky_relu(pointwise(leaky_relu(pointwise(x, *spatial1), SLOPE), *spatial2), SLOPE)  # eq. (6)
        if conditioned:
            f_spa = f_spa * (1 + gamma[None, :, None, None]) + beta[None, :, None, None]
        spectrum = fft(f_x, norm)
        amplitude, phase = np.abs(spectrum), np.angle(spectrum)  # eq. (7)
        if corrects == "amplitude":  # eq. (8); the PCB's mirror image (Sec. 3.2)
            f_fre = ifft(conv(amplitude), phase, x.shape[-2:], norm)
        else:
            f_fre = ifft(amplitude, conv(phase), x.shape[-2:], norm)
        f_dif = f_spa - f_fre  # eq. (9)
        sa = sigmoid(attention[0, 0] * f_dif.mean(axis=1, keepdims=True) + attention[0, 1] * f_dif.max(axis=1, keepdims=True))
        f_out = sa * f_spa + f_fre  # eq. (10)
        return f_out + f_x if identity else f_out

    return block, expected


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(
    ("block_cls", "size"),
    [(AmplitudeCorrectionBlock, (7, 9)), (AmplitudeCorrectionBlock, (6, 10)), (PhaseCorrectionBlock, (7, 9))],
    ids=["ACB-odd", "ACB-even", "PCB-odd"],
)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_correction_block_is_eqs_6_to_10(block_cls, size, layout, grad):
    """F_out = SA(F_spa - F_fre) F_spa + F_fre with F_fre = F^-1(Conv(A), P) for an ACB and
    F^-1(A, Conv(P)) for a PCB. (A PCB's phase is taken on odd sizes only: there the DC is the
    one real coefficient, and its phase 0 is unambiguous; +-pi would be an arbitrary choice.)
    With and without autograd, which take different paths for speed."""
    block, expected = _hand_built_block(block_cls, layout)
    x = torch.rand(2, 2, *size, dtype=torch.float64)
    conditioned = LAYOUTS[layout][3]
    cond = torch.zeros(2, 4, dtype=torch.float64) if conditioned else None
    with torch.set_grad_enabled(grad):
        out = block(x, cond).detach()
    np.testing.assert_allclose(as_numpy(out), expected(as_numpy(x), conditioned), rtol=0, atol=1e-5)


def test_quality_modulation_is_skipped_without_a_quality():
    block, expected = _hand_built_block(AmplitudeCorrectionBlock, "quality")
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        out = block(x)
    np.testing.assert_allclose(as_numpy(out), expected(as_numpy(x), conditioned=False), rtol=0, atol=1e-5)


class _ConstantGate(torch.nn.Module):
    """Stands in for SA(.): the same weight everywhere."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, f_dif: torch.Tensor) -> torch.Tensor:
        return torch.full_like(f_dif[:, :1], self.value)


def test_spatial_attention_weighs_the_spatial_branch():
    """Eq. (10)'s roles, whatever SA computes: with SA = 1, F_out = F_spa + F_fre; with SA = 0,
    F_out = F_fre alone, whose spectrum keeps F_Xi's phase in an ACB (eq. 8)."""
    block, _ = _hand_built_block(AmplitudeCorrectionBlock, "paper")
    x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
    seen = {}
    block.spatial.register_forward_hook(lambda m, i, o: seen.__setitem__("spa", o))
    outputs = {}
    with torch.no_grad():
        for value in (1.0, 0.0):
            block.attention = _ConstantGate(value)
            outputs[value] = block(x)
        f_x = as_numpy(block.project(x))
    torch.testing.assert_close(outputs[1.0] - outputs[0.0], seen["spa"], rtol=0, atol=1e-9)
    cross = fft(as_numpy(outputs[0.0])) * np.conj(fft(f_x))  # real where the phases agree (mod pi)
    assert np.abs(cross.imag).max() < 1e-9 * np.abs(cross).max()


# --------------------------------------------------------------------------- SAM


def test_sam_is_mprnet_supervised_attention():
    """X_out1 = Conv(F) + X_in; X_amp = Conv(F) * sigmoid(Conv(X_out1)) + F (MPRNet's SAM [33]):
    the gate is computed from the stage-1 image X_out1, not from X_in."""
    width, channels = 4, 3
    sam = SAM(width, channels).double()
    rng = np.random.default_rng(2)
    to_image, from_image, conv1 = (
        _random_mix(rng, channels, width),
        _random_mix(rng, width, channels),
        _random_mix(rng, width, width),
    )
    set_pointwise(sam.to_image, *to_image)
    set_pointwise(sam.from_image, *from_image)
    set_pointwise(sam.conv1, *conv1)
    features, x_in = torch.randn(2, width, 6, 5, dtype=torch.float64), torch.rand(2, channels, 6, 5, dtype=torch.float64)
    with torch.no_grad():
        x_amp, x_out1 = sam(features, x_in)
    f, x = as_numpy(features), as_numpy(x_in)
    expected_out1 = pointwise(f, *to_image) + x
    expected_amp = pointwise(f, *conv1) * sigmoid(pointwise(expected_out1, *from_image)) + f
    np.testing.assert_allclose(as_numpy(x_out1), expected_out1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(as_numpy(x_amp), expected_amp, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- the U-Nets and the cross-stage fusion


@pytest.mark.parametrize("module_cls", [AmplitudeCorrectionModule, PhaseCorrectionModule])
def test_cross_stage_fusion_adds_stage_1_encoder_and_decoder_features(module_cls):
    """At each level of the second U-Net, before going down: x = block(x) + Conv_e(E1) + Conv_d(D1),
    with E1 and D1 the first stage's encoder and decoder features at that level (MPRNet's fusion)."""
    config = D2LNetConfig(width=4, depth=3)
    module = module_cls(config, cross_stage=True).double().eval()
    assert all(isinstance(block, module_cls.block) for block in module.encoder)
    rng = np.random.default_rng(3)
    widths = [4, 8]
    mixes = {}
    for level, w in enumerate(widths):
        mixes["e", level], mixes["d", level] = _random_mix(rng, w, w), _random_mix(rng, w, w)
        set_pointwise(module.fuse_encoder[level], *mixes["e", level])
        set_pointwise(module.fuse_decoder[level], *mixes["d", level])
    block_out, down_in = {}, {}
    for level, block in enumerate(module.encoder):
        block.register_forward_hook(lambda m, i, o, level=level: block_out.__setitem__(level, o))
    for level, down in enumerate(module.down):
        down.register_forward_pre_hook(lambda m, i, level=level: down_in.__setitem__(level, i[0]))
    size = [(16, 12), (8, 6)]
    stage1_encoder = [torch.randn(1, w, *s, dtype=torch.float64) for w, s in zip(widths, size)]
    stage1_decoder = [torch.randn(1, w, *s, dtype=torch.float64) for w, s in zip(widths, size)]
    with torch.no_grad():
        _, encoder, _ = module(torch.randn(1, 4, 16, 12, dtype=torch.float64), None, stage1_encoder, stage1_decoder)
    for level in range(len(widths)):
        expected = (
            as_numpy(block_out[level])
            + pointwise(as_numpy(stage1_encoder[level]), *mixes["e", level])
            + pointwise(as_numpy(stage1_decoder[level]), *mixes["d", level])
        )
        np.testing.assert_allclose(as_numpy(encoder[level]), expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(as_numpy(down_in[level]), expected, rtol=0, atol=1e-10)  # fused, then down


# --------------------------------------------------------------------------- the network: Fig. 3 and eqs. (13), (14)


@contextmanager
def _recording(model: torch.nn.Module, names: list[str]) -> Iterator[dict[str, tuple]]:
    """Records ``(inputs, output)`` of each named submodule during a forward pass."""
    seen: dict[str, tuple] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i, o)))
        for name in names
    ]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


PARTS = ["project1", "stage1", "sam", "project2", "merge", "stage2", "refine", "project_out", "refine_out"]


def _run(domain_order: str = "paper") -> tuple[torch.Tensor, object, dict[str, tuple], torch.nn.Module]:
    model = tiny_model("busy", domain_order=domain_order).double()
    depth = model.config.depth
    levels = [f"{stage}.{part}.{level}" for stage, part in (("stage1", "encoder"), ("stage1", "decoder"),
              ("stage2", "fuse_encoder"), ("stage2", "fuse_decoder")) for level in range(depth - 1)]  # fmt: skip
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)  # a multiple of the stride: no padding
    with _recording(model, PARTS + levels) as seen, torch.no_grad():
        out = model(x, qf=torch.tensor([20.0, 60.0]))
    return x, out, seen, model


@pytest.mark.parametrize("domain_order", ["paper", "released"])
def test_stage_2_input_is_eq_13(domain_order):
    """Paper, eq. (13): X_inv = F^-1(A(X_out1), P(X_in)). Released layout: the input's amplitude
    and stage 1's phase, F^-1(A(X_in), P(X_out1))."""
    x, out, seen, _ = _run(domain_order)
    x_inv = seen["project2"][0][0]
    x_out1 = seen["sam"][1][1]
    torch.testing.assert_close(out.out1, x_out1)
    a_from, p_from = (x_out1, x) if domain_order == "paper" else (x, x_out1)
    expected = ifft(np.abs(fft(as_numpy(a_from))), np.angle(fft(as_numpy(p_from))), x.shape[-2:])
    assert np.abs(as_numpy(out.out1) - as_numpy(x)).max() > 1e-2  # X_out1 and X_in differ
    np.testing.assert_allclose(as_numpy(x_inv), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("domain_order", ["paper", "released"])
def test_stages_in_the_order_of_fig_3(domain_order):
    """Paper: the ACM (amplitude) first and the PCM (phase) second; released: the reverse."""
    _, _, _, model = _run(domain_order)
    first, second = (AmplitudeCorrectionModule, PhaseCorrectionModule)[:: 1 if domain_order == "paper" else -1]
    assert type(model.stage1) is first and type(model.stage2) is second
    assert not model.stage1.cross_stage and model.stage2.cross_stage


def test_fig_3_wiring():
    """X_in -> conv -> ACM -> SAM (X_out1, X_amp); concat(conv(X_inv), X_amp) -> PCM (eq. 14), whose
    levels fuse the ACM's encoder and decoder features; channel modulation with a global residual
    gives Y = refine(PCM) + X_in, and X_out2 = refine_out(project_out(Y)) + Y."""
    x, out, seen, model = _run()
    inputs = {name: i for name, (i, _) in seen.items()}
    outputs = {name: o for name, (_, o) in seen.items()}
    # stage 1 and SAM
    torch.testing.assert_close(inputs["project1"][0], x)
    torch.testing.assert_close(inputs["stage1"][0], outputs["project1"])
    torch.testing.assert_close(inputs["sam"][0], outputs["stage1"][0])
    torch.testing.assert_close(inputs["sam"][1], x)
    # eq. (14): concat(X_inv, X_amp), in that order, into the PCM
    x_amp = outputs["sam"][0]
    torch.testing.assert_close(inputs["merge"][0], torch.cat([outputs["project2"], x_amp], dim=1))
    torch.testing.assert_close(inputs["stage2"][0], outputs["merge"])
    # the cross-stage fusion: encoder features to the encoder fusion, decoder features to the decoder's
    for level in range(model.config.depth - 1):
        torch.testing.assert_close(inputs[f"stage2.fuse_encoder.{level}"][0], outputs[f"stage1.encoder.{level}"])
        torch.testing.assert_close(inputs[f"stage2.fuse_decoder.{level}"][0], outputs[f"stage1.decoder.{level}"])
    # the output head and its two residuals
    torch.testing.assert_close(inputs["refine"][0], outputs["stage2"][0])
    y = outputs["refine"] + x
    torch.testing.assert_close(inputs["project_out"][0], y)
    torch.testing.assert_close(out.out2, outputs["refine_out"] + y)
    assert outputs["refine"].abs().max() > 1e-3 and outputs["refine_out"].abs().max() > 1e-3
