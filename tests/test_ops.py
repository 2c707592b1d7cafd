"""d2lnet.ops: the fast forms of the blocks' operations against the expressions they replace
(NumPy, float64, finite differences and autograd through the plain PyTorch form)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2lnet import ops


def test_pointwise_conv_is_the_1x1_convolution():
    """Eq. (8)'s 1x1 convolutions as batched products: NumPy's per-pixel channel mix plus bias, in
    float64, for a batch, and the gradients of F.conv2d's."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 4, 1).double()
    z = torch.randn(3, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    got = ops.pointwise_conv(conv, z)
    w, b = conv.weight.detach().numpy()[:, :, 0, 0], conv.bias.detach().numpy()
    expected = np.einsum("oc,bchw->bohw", w, z.detach().numpy()) + b[None, :, None, None]
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(got)
    mine = torch.autograd.grad(got, (z, conv.weight, conv.bias), grad)
    theirs = torch.autograd.grad(conv(z), (z, conv.weight, conv.bias), grad)
    for g, e in zip(mine, theirs):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_keep_gradient_layout_is_the_identity_with_a_channels_last_gradient():
    """The attention's channel maximum gives its gradient in the contiguous layout; after
    keep_gradient_layout it comes back channels-last, with the same values."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    kept = ops.keep_gradient_layout(x)
    torch.testing.assert_close(kept, x, rtol=0, atol=0)
    (got,) = torch.autograd.grad(kept.max(dim=1).values.sum(), x)
    (expected,) = torch.autograd.grad(x.max(dim=1).values.sum(), x)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    plain = torch.randn(2, 6, 5, 7)
    assert ops.keep_gradient_layout(plain) is plain  # nothing to keep without a gradient


def test_half_instance_norm_gradient_against_finite_differences_and_autograd():
    """HalfInstanceNorm's hand-written backward: torch.autograd.gradcheck (finite differences, float64)
    for y, weight and bias, with a large mean so that a cancelling formula would show; and the same
    gradients as autograd through cat([F.instance_norm(y[:, :half]), y[:, half:]]), channels-last too."""

    torch.manual_seed(0)
    y = (torch.randn(2, 6, 5, 7, dtype=torch.float64) * 0.5 + 3.0).requires_grad_()
    weight = torch.rand(3, dtype=torch.float64).add(0.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64).requires_grad_()
    norm = ops.HalfInstanceNorm.apply
    assert torch.autograd.gradcheck(lambda *a: norm(*a, 1e-5), (y, weight, bias))

    def reference(y, weight, bias):
        return torch.cat([F.instance_norm(y[:, :3], weight=weight, bias=bias, eps=1e-5), y[:, 3:]], dim=1)

    grad = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        y_l = y.detach().contiguous(memory_format=layout).requires_grad_()
        got = torch.autograd.grad(norm(y_l, weight, bias, 1e-5), (y_l, weight, bias), grad)
        expected = torch.autograd.grad(reference(y_l, weight, bias), (y_l, weight, bias), grad)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_half_instance_norm_in_bf16_is_close_to_float64():
    """On a bf16 channels-last batch (the training case), values and gradients within bf16 rounding."""
    torch.manual_seed(0)
    y64 = torch.randn(2, 8, 16, 16, dtype=torch.float64) * 2 + 1
    weight, bias = torch.rand(4, dtype=torch.float64) + 0.5, torch.randn(4, dtype=torch.float64)
    grad = torch.randn_like(y64)
    results = []
    for dtype, params in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        y = y64.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
        out = ops.HalfInstanceNorm.apply(y, weight.to(params), bias.to(params), 1e-5)
        (grad_y,) = torch.autograd.grad(out, (y,), grad.to(dtype))
        results.append((out.double(), grad_y.double()))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=0.02, atol=0.05)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_and_spatial_means_against_numpy(layout):
    """The attention's pooling as matrix products: the means over channels and over pixels of
    NumPy, in float64 (values and, through autograd, the uniform 1/n gradient), either layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    for mean, axes, n in ((ops.channel_mean, (1,), 5), (ops.spatial_mean, (2, 3), 63)):
        got = mean(x)
        expected = x.detach().numpy().mean(axis=axes, keepdims=True)
        np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
        (grad,) = torch.autograd.grad(got.sum(), x)
        np.testing.assert_allclose(grad.numpy(), np.full(x.shape, 1 / n), rtol=1e-12)
        assert grad.is_contiguous(memory_format=layout)  # no layout mixing in the backward after it


def test_bf16_means_accumulate_in_float32():
    """bf16 channels-last means within bf16 rounding of the float64 mean, where a bf16 running sum
    of 4096 values would be off by far more."""
    torch.manual_seed(0)
    x64 = torch.rand(2, 64, 64, 64, dtype=torch.float64) + 1.0
    x = x64.bfloat16().contiguous(memory_format=torch.channels_last)
    for mean, dims in ((ops.channel_mean, (1,)), (ops.spatial_mean, (2, 3))):
        expected = x.double().mean(dim=dims, keepdim=True)
        torch.testing.assert_close(mean(x).double(), expected, rtol=2**-8, atol=0)


def test_half_instance_norm_statistics_stay_float32_under_autocast():
    """A float32 input is normalised with float32 statistics, also under bf16 autocast (which would
    run the products over the pixels in bf16): float64's output to float32 rounding, with a mean
    30 times the spread, where bf16 statistics are off by several percent."""
    torch.manual_seed(0)
    y = (torch.randn(2, 8, 32, 32) * 0.1 + 3.0).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.rand(4) + 0.5, torch.randn(4)
    expected = ops.HalfInstanceNorm.apply(y.double(), weight.double(), bias.double(), 1e-5)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            got = ops.HalfInstanceNorm.apply(y, weight, bias, 1e-5)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channel_max_is_the_maximum_over_channels_with_and_without_autograd(dtype):
    """Both reductions (max under autograd, amax of a float32 copy without) give NumPy's maximum over
    channels exactly, in the input's dtype, and the gradient reaches the maximum's position only."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).to(dtype).contiguous(memory_format=torch.channels_last)
    expected = x.float().numpy().max(axis=1, keepdims=True)
    plain = ops.channel_max(x)
    tracked = ops.channel_max(x.detach().requires_grad_())
    for got in (plain, tracked):
        assert got.dtype == dtype and got.shape == (2, 1, 5, 7)
        np.testing.assert_array_equal(got.detach().float().numpy(), expected)
    y = x.detach().float().requires_grad_()
    (grad,) = torch.autograd.grad(ops.channel_max(y).sum(), y)
    np.testing.assert_array_equal(grad.numpy(), (y.detach().numpy() == expected).astype(np.float32))
