"""NNPACK's Winograd 3x3 convolutions (d2lnet.winograd): when they run, and that they are the
convolution, forward and backward, against float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model, torch_threads
from torch import nn

from d2lnet import winograd
from d2lnet.winograd import Conv3x3, winograd_convolutions, winograd_pays

needs_nnpack = pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch has no NNPACK")
CPU = torch.device("cpu")


def test_winograd_pays_on_one_thread_in_float32_on_the_cpu(winograd_everywhere):
    assert winograd_pays(CPU, "fp32")
    assert not winograd_pays(CPU, "bf16") and not winograd_pays(torch.device("meta"), "fp32")
    with torch_threads(2):
        assert not winograd_pays(CPU, "fp32")
    with torch.autocast("cpu", torch.bfloat16):
        assert not winograd_pays(CPU, "fp32")


def test_winograd_waits_for_an_avx2_cpu(monkeypatch):
    monkeypatch.setattr(winograd, "_nnpack_on_avx2", lambda: False)
    assert not winograd_pays(CPU, "fp32")
    assert not isinstance(winograd_convolutions(CPU, "fp32"), torch.overrides.TorchFunctionMode)


@needs_nnpack
@pytest.mark.parametrize("bias", [True, False])
def test_the_convolution_and_its_gradients_are_float64s(bias):
    """Values and the gradients of input, weight and bias, against F.conv2d in float64. In and out
    channels differ and the kernel is not symmetric, so the input gradient's swap of channels and
    flip of the kernel each show; three different images, odd sizes."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 13, 22, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    grad = torch.randn(3, 6, 13, 22)
    leaves = [t for t in (x, w, b) if t is not None]
    got = Conv3x3.apply(x, w, b)
    got_grads = torch.autograd.grad(got, leaves, grad)
    doubles = [t.detach().double().requires_grad_() for t in leaves]
    expected = F.conv2d(doubles[0], doubles[1], doubles[2] if bias else None, padding=1)
    expected_grads = torch.autograd.grad(expected, doubles, grad.double())
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e.float(), rtol=1e-4, atol=1e-4)


@needs_nnpack
def test_only_weights_that_need_it_get_a_gradient():
    x = torch.randn(1, 2, 8, 8)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y = Conv3x3.apply(x, w, torch.zeros(3))
    (gw,) = torch.autograd.grad(y.sum(), [w])
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), [w])[0], rtol=1e-4, atol=1e-4)


@needs_nnpack
@pytest.mark.parametrize(
    "conv, layout, dtype, routed",
    [
        (nn.Conv2d(4, 4, 3, padding=1), torch.contiguous_format, torch.float32, True),
        (nn.Conv2d(4, 4, 3, padding=1, bias=False), torch.contiguous_format, torch.float32, True),
        (nn.Conv2d(4, 4, 3, padding=0), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 3, stride=2, padding=1), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 3, padding=2, dilation=2), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 3, padding=1, groups=2), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 4, stride=2, padding=1), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 1), torch.contiguous_format, torch.float32, False),
        (nn.Conv2d(4, 4, 3, padding=1), torch.channels_last, torch.float32, False),
        (nn.Conv2d(4, 4, 3, padding=1), torch.contiguous_format, torch.float64, False),
    ],
)
def test_in_training_only_dense_3x3_convolutions_of_stride_and_padding_1_take_it(
    winograd_everywhere, conv, layout, dtype, routed
):
    conv = conv.to(dtype=dtype, memory_format=layout)
    x = torch.randn(2, 4, 12, 12, dtype=dtype).contiguous(memory_format=layout)
    with winograd_convolutions(CPU, "fp32"):
        y = conv(x)
    assert (type(y.grad_fn).__name__ == "Conv3x3Backward") == routed
    torch.testing.assert_close(
        y, F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups), rtol=1e-4, atol=1e-4
    )


@needs_nnpack
def test_a_training_step_through_winograd_has_the_plain_gradients(winograd_everywhere, monkeypatch):
    """A tiny D2LNet's loss and every parameter's gradient, in NCHW float32 on one thread, with and without."""
    calls = []
    conv3x3 = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda *args: calls.append(args[0].shape) or conv3x3(*args))
    model = tiny_model("busy").train()
    x = torch.rand(2, 3, 32, 40)

    def gradients() -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = model(x, torch.tensor([20.0, 40.0]))
        loss = (out.out1 - x).abs().mean() + (out.out2 - x).abs().mean()
        return loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)

    with winograd_convolutions(CPU, "fp32"):
        loss, grads = gradients()
    routed = len(calls)
    assert routed > 20  # the forward's convolutions and their input gradients
    plain_loss, plain_grads = gradients()
    assert len(calls) == routed  # outside the context, none
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    for name, g, e in zip([n for n, _ in model.named_parameters()], grads, plain_grads, strict=True):
        if e is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-5, msg=name)
