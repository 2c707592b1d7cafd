"""The operations D2LNet's blocks are built from, in forms that run fast on the CPU.

:mod:`d2lnet.model` keeps the architecture (Fig. 3, eqs. 6-14) readable and calls these for the
parts where the obvious PyTorch expression is slow: the half-instance norm (HINet) with its
gradient by hand, means over channels and over pixels as matrix products, the maximum over
channels by the faster reduction, 1x1 convolutions of float32 spectra as batched products, and
a gradient kept in its input's memory layout. Each computes the same function as the expression
it replaces (``tests/test_ops.py``); the docstrings give the measurements that made them worth it.
"""

from __future__ import annotations

import torch
from torch import nn

from d2lnet.fourier import is_channels_last


def pointwise_conv(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
    """The 1x1 convolution ``conv`` of ``z`` (B, C, H, W) with contiguous planes, as one matrix
    product per image over its pixels, in ``z``'s dtype (an einsum would first copy z to (C, B, H, W))."""
    weight, bias = conv.weight.flatten(1).to(z.dtype), conv.bias.to(z.dtype)[:, None]
    return torch.baddbmm(bias, weight.expand(z.shape[0], -1, -1), z.flatten(2)).view(z.shape[0], -1, *z.shape[2:])


class HalfInstanceNorm(torch.autograd.Function):
    """Instance norm with a per-channel affine map on the first ``len(weight)`` channels of y
    (B, C, H, W), the identity on the rest: HINet's half-instance norm, with its gradient by hand.

    Forward, as one affine map per channel over the whole tensor: a single pass, where slicing a
    channels-last tensor, normalising and concatenating would copy it three times. Statistics in
    float32 (biased variance, two passes as InstanceNorm2d). Backward, the instance-norm gradient
    dL/dy = (w/sigma) (g - mean(g) - yhat mean(g yhat)) as again one affine map per channel of
    g and y: autograd through the slice builds a zero tensor in the contiguous layout and adds
    the channels-last gradient into it (7 ms of the 22 ms that the norm took forward and backward
    on a bf16 batch of 4x32x128x128; 13-16 ms in all this way).
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:  # noqa: ANN001
        half, stats_dtype = weight.numel(), torch.promote_types(y.dtype, torch.float32)
        centred = y[:, :half].to(stats_dtype, copy=True)
        # Two passes (torch.var_mean over H and W of a channels-last tensor is 10x slower), each a
        # matrix product over the pixels (spatial_mean), on a float32 copy made once and centred in place.
        with torch.autocast(device_type=y.device.type, enabled=False):  # autocast would take the products to bf16
            mean = spatial_mean(centred)
            rstd = torch.rsqrt(spatial_mean(centred.sub_(mean).square_()) + eps)
        scale = weight[:, None, None] * rstd
        ctx.save_for_backward(y, weight, mean, rstd)
        scale, shift = _per_channel(y, scale, 1.0), _per_channel(y, bias[:, None, None] - mean * scale, 0.0)
        return torch.addcmul(shift, y, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:  # noqa: ANN001
        y, weight, mean, rstd = ctx.saved_tensors
        half, count = weight.numel(), y.shape[2] * y.shape[3]
        g, y_half = grad[:, :half], y[:, :half]
        sum_g = g.sum(dim=(2, 3), keepdim=True, dtype=mean.dtype)
        sum_g_yhat = ((g * y_half).sum(dim=(2, 3), keepdim=True, dtype=mean.dtype) - mean * sum_g) * rstd
        a = weight[:, None, None] * rstd
        b = -a * rstd * sum_g_yhat / count  # dL/dy = a g + b (y - mean) - a mean(g)
        c = -(a * sum_g + b * mean * count) / count
        # In y's dtype, as the forward's map: float32 terms would promote g and y to float32 copies
        # (a third of the norm's backward in bf16). b y and c cancel where a channel's mean is far
        # larger than its spread, with the same rounding as the forward's shift there.
        grad_y = torch.addcmul(_per_channel(y, c, 0.0), grad, _per_channel(y, a, 1.0))
        grad_y = grad_y.addcmul_(y, _per_channel(y, b, 0.0))
        return grad_y, sum_g_yhat.sum(0).flatten(), sum_g.sum(0).flatten(), None


def _per_channel(y: torch.Tensor, first: torch.Tensor, rest: float) -> torch.Tensor:
    """A (B, C, 1, 1) tensor of ``first`` (B, half, 1, 1) then ``rest`` for y's other channels, in y's dtype."""
    fill = first.new_full((first.shape[0], y.shape[1] - first.shape[1], 1, 1), rest)
    return torch.cat([first, fill], dim=1).to(y.dtype)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=1, keepdim=True)`` of a (B, C, H, W) tensor; of a channels-last one as a matrix
    product with a vector of ones, as PyTorch's mean reduces bf16 through a float32 copy of x (a
    bf16 4x32x256x256 batch: 20 ms, against 2.5 ms as a product that accumulates in float32)."""
    if not x.is_contiguous(memory_format=torch.channels_last):
        return x.mean(dim=1, keepdim=True)
    return torch.matmul(x.permute(0, 2, 3, 1), x.new_ones(x.shape[1], 1)).permute(0, 3, 1, 2) / x.shape[1]


def channel_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(dim=1, keepdim=True)`` of a (B, C, H, W) tensor, by whichever reduction is faster.

    The same maximum either way: under autograd ``max``, as amax's backward counts ties through an
    int64 tensor of x's size (a bf16 block's attention took 40 ms forward and backward, 24 ms with
    max); without it ``amax`` of a float32 copy, as max() runs 25% slower forward and amax reduces
    bf16 a third slower than a float32 copy of it.
    """
    if x.requires_grad:
        return x.max(dim=1, keepdim=True).values
    return x.to(torch.promote_types(x.dtype, torch.float32)).amax(dim=1, keepdim=True).to(x.dtype)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=(2, 3), keepdim=True)`` of a (B, C, H, W) tensor, as a matrix product over the
    pixels in either memory layout (1.1 ms against 5.2 ms for mean() on a bf16 4x32x128x128 batch),
    whose gradient comes back in x's layout."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last):
        total = torch.matmul(x.new_ones(1, h * w), x.permute(0, 2, 3, 1).reshape(b, h * w, c))
    else:
        total = torch.matmul(x.reshape(b, c, h * w), x.new_ones(h * w, 1))
    return total.reshape(b, c, 1, 1) / (h * w)


class SpatialMean(nn.Module):
    """:func:`spatial_mean` as a module: ``nn.AdaptiveAvgPool2d(1)``, faster."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spatial_mean(x)


def keep_gradient_layout(x: torch.Tensor) -> torch.Tensor:
    """``x``, whose gradient comes back in ``x``'s memory format (see :class:`_SameLayoutGradient`)."""
    return _SameLayoutGradient.apply(x) if x.requires_grad else x


class _SameLayoutGradient(torch.autograd.Function):
    """The identity, with the gradient laid out as its input (channels-last or not).

    A reduction over channels (the spatial attention's maximum) gives its gradient in the
    contiguous layout. Added to a channels-last gradient, every later step of the backward mixes
    the two layouts and runs several times slower (a bf16 block's F_spa - F_fre took 9 ms to add
    up its gradient at 4x32x128x128, 1 ms once laid out alike), so one copy here pays.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.channels_last = is_channels_last(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad
