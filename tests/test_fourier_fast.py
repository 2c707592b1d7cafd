"""The fast Fourier forms compute eqs. (7), (8) and (13) exactly as the literal reference does.

The references (``DualDomainBlock.fourier_literal``, ``fourier.swap_amplitude_literal``) are the
equations to the letter: split the spectrum into amplitude and phase with atan2 (eqs. 4-5),
refine one, rebuild with cos and sin (eq. 8). The model's blocks skip the angle where they
can; values and gradients must agree. (test_equations.py pins the blocks to NumPy.)
"""

from __future__ import annotations

import pytest
import torch

from d2lnet import model as model_module
from d2lnet.fourier import inverse, swap_amplitude_literal, with_amplitude
from d2lnet.model import DualDomainBlock, build


def _values_and_grads(module, *inputs, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.zero_grad()
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    out = module(*inputs, **kwargs)
    out = torch.cat([o.flatten() for o in out]) if isinstance(out, tuple) else out.flatten()
    (out.square().sum() + out.sin().sum()).backward()  # any smooth function of every output
    grads = [x.grad for x in inputs] + [p.grad for p in module.parameters() if p.grad is not None]
    return out.detach(), [g.clone() for g in grads]


def _assert_same(fast, slow, rtol: float) -> None:
    (fast_out, fast_grads), (slow_out, slow_grads) = fast, slow
    torch.testing.assert_close(fast_out, slow_out, rtol=rtol, atol=rtol * slow_out.abs().max().item())
    assert len(fast_grads) == len(slow_grads) > 0
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


RELEASED = {"domain_order": "released", "fft_norm": "backward", "block_identity": True}


@pytest.mark.parametrize("overrides", [{}, RELEASED], ids=["paper", "released"])
@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fast_blocks_match_the_literal_equations_in_float32(monkeypatch, overrides, stage):
    """Each ACB and PCB (eqs. 6-10) in float32: values and gradients within 1e-5."""
    torch.manual_seed(0)
    block = getattr(build("d2lnet-xs", **overrides), stage).encoder[1]
    x, cond = torch.randn(2, 8, 20, 36), torch.randn(2, 16)
    fast = _values_and_grads(block, x, cond)
    monkeypatch.setattr(DualDomainBlock, "fourier", DualDomainBlock.fourier_literal)
    _assert_same(fast, _values_and_grads(block, x, cond), rtol=1e-5)


def _busy_float64(**overrides):
    torch.manual_seed(0)
    model = build("d2lnet-xs", **overrides).double()
    with torch.no_grad():  # image-producing convs away from zero, so both stages matter
        for conv in (model.sam.to_image, model.refine[-1], model.refine_out[-1]):
            conv.weight.normal_(0, 0.1)
    return model, torch.rand(2, 3, 24, 40, dtype=torch.float64)


def _use_literal_forms(monkeypatch) -> None:
    monkeypatch.setattr(DualDomainBlock, "fourier", DualDomainBlock.fourier_literal)
    monkeypatch.setattr(model_module, "swap_amplitude", swap_amplitude_literal)


def test_fast_network_matches_the_literal_equations_released_order(monkeypatch):
    """The whole released-order network (PCM, eq. 13 swapped, ACM) in float64: values and gradients."""
    model, x = _busy_float64(**RELEASED)
    fast = _values_and_grads(model, x, qf=30.0)
    _use_literal_forms(monkeypatch)
    _assert_same(fast, _values_and_grads(model, x, qf=30.0), rtol=1e-9)


def test_fast_network_matches_the_literal_equations_up_to_the_phase_module(monkeypatch):
    """The paper's order through the ACM, SAM and X_inv (eq. 13) into the PCM's input, in float64.

    Past that point a whole-network comparison is ill-posed whatever the precision: a PCB
    refines raw phases, and a real negative coefficient (DC, Nyquist) has phase +pi or -pi by
    the sign of a zero imaginary part, so a rounding-level change of X_inv moves the output.
    Each PCB is compared on its own above.
    """
    model, x = _busy_float64()

    def stage2_input():
        seen = {}
        handle = model.stage2.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
        out1 = model(x, 30.0).out1
        handle.remove()
        return out1, seen["x"]

    with torch.no_grad():
        fast = stage2_input()
        _use_literal_forms(monkeypatch)
        slow = stage2_input()
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


def test_with_amplitude_keeps_the_phase_and_treats_zero_as_phase_zero():
    s = torch.tensor([[3 + 4j, 0j, -2 + 0j, 0 - 1j]], dtype=torch.complex64)
    amplitude = torch.sqrt(s.real**2 + s.imag**2 + 1e-16)
    new = torch.tensor([[10.0, 7.0, 5.0, 2.0]])
    out = with_amplitude(s, amplitude, new)
    expected = torch.tensor([[6 + 8j, 7 + 0j, -5 + 0j, 0 - 2j]], dtype=torch.complex64)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [(16, 20), (15, 9)])
def test_inverse_is_irfft2(size: tuple[int, int]) -> None:
    """F^-1 as two 1-D inverses (the fast form) gives irfft2's numbers, for any half-spectrum."""
    half = torch.randn(2, 3, size[0], size[1] // 2 + 1, dtype=torch.complex128)
    torch.testing.assert_close(inverse(half, size), torch.fft.irfft2(half, s=size, norm="ortho"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_fourier_branch_keeps_the_dtype_and_layout_of_its_input(stage):
    """Under bf16 autocast on a channels-last tensor (the CPU's fast path) F_fre comes back in
    bf16 and channels-last, computed in float32 in between: within bf16's rounding of the
    literal float32 equations."""
    torch.manual_seed(0)
    block = getattr(build("d2lnet-xs"), stage).encoder[0]
    f_x = torch.randn(2, 8, 24, 40)
    expected = block.fourier_literal(f_x)
    channels_last = f_x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = block.fourier(channels_last)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=0.02 * expected.abs().max().item())
