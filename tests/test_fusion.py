"""Inference with fused convolution + activation (d2lnet.fusion) computes what the plain modules compute."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model, torch_threads
from torch import nn

from d2lnet.engine import Restorer
from d2lnet.fusion import ConvActivation, _fused_op_available, fuse_activations
from d2lnet.model import build

needs_onednn = pytest.mark.skipif(not _fused_op_available(), reason="this PyTorch has no oneDNN fused convolution")


@needs_onednn
@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.2), nn.ReLU()], ids=["leaky_relu", "relu"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_convolution_is_the_convolution_then_the_activation(activation, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, 12, 20)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    # The reference, written out: the convolution, then max(y, 0) + slope * min(y, 0).
    y = F.conv2d(x, conv.weight, conv.bias, padding=1)
    slope = getattr(activation, "negative_slope", 0.0)
    expected = y.clamp(min=0) + slope * y.clamp(max=0)
    with torch.inference_mode():
        fused = ConvActivation(conv, activation)(x)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    assert (fused < 0).any() == (slope > 0)


@needs_onednn
@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (4, 2, 1), (3, 1, 1)], ids=["1x1", "down", "3x3"])
def test_a_convolution_alone_is_the_convolution(kernel, stride, padding):
    """Convolutions with no activation after them go through oneDNN too (PyTorch's own float32
    1x1 path on one thread is slower on some CPUs): the same numbers as F.conv2d."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding).to(memory_format=torch.channels_last)
    x = torch.randn(2, 6, 12, 20).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = ConvActivation(conv)
        assert fused.attr == "none"
        torch.testing.assert_close(fused(x), F.conv2d(x, conv.weight, conv.bias, stride, padding), rtol=1e-5, atol=1e-5)


def test_every_convolution_but_eq_8s_is_fused():
    """Eq. (8)'s spectral 1x1 convolutions stay plain modules: they run as matrix products of their weights."""
    fused = fuse_activations(build("d2lnet-xs"))
    spectral = {id(c) for m in fused.modules() if hasattr(m, "spectral") for c in m.spectral if type(c) is nn.Conv2d}
    inside = {id(m.conv) for m in fused.modules() if isinstance(m, ConvActivation)}
    plain = [name for name, m in fused.named_modules() if type(m) is nn.Conv2d and id(m) not in spectral | inside]
    assert plain == []
    assert len(inside) == sum(type(m) is nn.Conv2d for m in build("d2lnet-xs").modules()) - len(spectral)


@needs_onednn
def test_the_fused_path_is_the_one_taken_in_inference(monkeypatch):
    conv = ConvActivation(nn.Conv2d(2, 2, 3, padding=1), nn.LeakyReLU(0.2))
    monkeypatch.setattr(conv.activation, "forward", lambda y: pytest.fail("the activation ran as a separate call"))
    with torch.inference_mode():
        conv(torch.randn(1, 2, 8, 8))


def test_fused_model_matches_the_model_in_float32_and_keeps_training_unfused():
    torch.manual_seed(0)
    model = build("d2lnet-xs").eval()
    with torch.no_grad():  # image-producing convs away from zero, so every stage shows in the output
        for conv in (model.sam.to_image, model.refine[-1], model.refine_out[-1]):
            conv.weight.normal_(0, 0.1)
    fused = fuse_activations(model)
    assert sum(isinstance(m, ConvActivation) for m in fused.modules()) > 0
    assert not any(isinstance(m, ConvActivation) for m in model.modules())  # the model itself is left as it is
    x = torch.rand(2, 3, 24, 40)
    with torch.inference_mode():
        for a, b in zip(fused(x, 30.0), model(x, 30.0)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # With autograd, the plain modules run and the gradients are the model's.
    weight = model.project1[0].weight  # shared by both
    grads = [torch.autograd.grad(net(x, 30.0).out2.square().sum(), weight)[0] for net in (fused, model)]
    torch.testing.assert_close(grads[0], grads[1])


def test_fused_model_shares_the_weights():
    model = build("d2lnet-xs").eval()
    fused = fuse_activations(model)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        model.refine_out[-1].weight.normal_(0, 0.1)  # changed after fusing
        model.stage1.encoder[0].spatial[0].weight.mul_(2)
        torch.testing.assert_close(fused(x).out2, model(x).out2, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_fused_model_under_bf16_autocast_stays_close():
    torch.manual_seed(0)
    model = build("d2lnet-xs").eval().to(memory_format=torch.channels_last)
    with torch.no_grad():
        for conv in (model.sam.to_image, model.refine[-1], model.refine_out[-1]):
            conv.weight.normal_(0, 0.1)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        fused, plain = fuse_activations(model)(x, 30.0).out2.float(), model(x, 30.0).out2.float()
    assert (fused - plain).abs().max() < 2e-2  # bf16 rounds once where the plain modules round twice


def test_the_restorer_runs_the_fused_model_unless_compiled():
    model = build("d2lnet-xs")
    assert any(isinstance(m, ConvActivation) for m in Restorer(model, "cpu").net.modules())
    assert not any(isinstance(m, ConvActivation) for m in model.modules())


needs_nnpack = pytest.mark.skipif(not torch._nnpack_available(), reason="this PyTorch has no NNPACK")


@pytest.fixture
def winograd(winograd_everywhere, monkeypatch) -> list[tuple]:
    """The shapes that NNPACK's Winograd convolutions ran on, taken wherever they may run."""
    shapes = []
    run = ConvActivation._winograd
    monkeypatch.setattr(ConvActivation, "_winograd", lambda self, x: shapes.append(tuple(x.shape)) or run(self, x))
    return shapes


@needs_onednn
@needs_nnpack
@pytest.mark.parametrize("activation", [nn.LeakyReLU(0.2), nn.ReLU(), None], ids=["leaky_relu", "relu", "none"])
def test_winograd_convolution_is_the_convolution_then_the_activation(winograd, activation):
    """Three different images (their order matters), odd sizes, no bias: the float64 convolution,
    then max(y, 0) + slope * min(y, 0); Winograd's transforms round a little more than oneDNN's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=activation is None)
    x = torch.randn(3, 6, 13, 22)
    y = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    slope = 1.0 if activation is None else getattr(activation, "negative_slope", 0.0)
    expected = (y.clamp(min=0) + slope * y.clamp(max=0)).float()
    with torch.inference_mode():
        got = ConvActivation(conv, activation)(x)
    assert winograd == [(3, 6, 13, 22)]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize(
    "kernel, stride, dilation, groups", [(1, 1, 1, 1), (4, 2, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (3, 1, 1, 2)]
)
def test_winograd_is_only_for_dense_3x3_convolutions_of_stride_1(winograd, kernel, stride, dilation, groups):
    conv = nn.Conv2d(4, 4, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation, groups=groups)
    with torch.inference_mode():
        ConvActivation(conv)(torch.randn(1, 4, 16, 16))
    assert winograd == []


@needs_onednn
def test_winograd_runs_on_one_thread_in_float32_inference_of_contiguous_images(winograd):
    conv = ConvActivation(nn.Conv2d(4, 4, 3, padding=1), nn.LeakyReLU(0.2))
    x = torch.randn(1, 4, 16, 16)
    with torch_threads(2), torch.inference_mode():
        conv(x)
    with torch.inference_mode():
        conv(x.contiguous(memory_format=torch.channels_last))  # NNPACK reads NCHW: oneDNN's layout stays with oneDNN
        with torch.autocast("cpu", torch.bfloat16):
            conv(x)
    conv(x)  # autograd: the plain modules
    assert winograd == []


@needs_onednn
@needs_nnpack
def test_the_restorer_lays_the_model_out_for_winograd_when_it_pays(winograd):
    """In contiguous memory (NNPACK's), restoring what the channels-last oneDNN path restores;
    on two threads, channels-last without Winograd."""
    model = tiny_model("busy")
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    fast = Restorer(copy.deepcopy(model), "cpu", "fp32", tile=None)
    assert fast.memory_format == torch.contiguous_format
    got = fast.restore_tensor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, quality=20)
    assert winograd and all(len(shape) == 4 for shape in winograd)
    with torch_threads(2):
        plain = Restorer(copy.deepcopy(model), "cpu", "fp32", tile=None)
        assert plain.memory_format == torch.channels_last
        expected = plain.restore_tensor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, quality=20)
    assert (got - expected).abs().max() < 1e-4
    assert (expected - torch.from_numpy(image).permute(2, 0, 1)[None] / 255).abs().max() > 1e-2  # the model does something
