"""3x3 convolutions through NNPACK's Winograd kernels, where they beat oneDNN: one thread, float32,
a CPU whose PyTorch kernels are AVX2.

oneDNN's AVX2 kernels compute a 3x3 convolution directly, every product; NNPACK, which PyTorch
ships, has Winograd F(6x6, 3x3) kernels that multiply a fifth as often (64 products for 36
outputs, plus the transforms). Held to AVX2, one thread, one 184x208 image: 5.3 ms against
oneDNN's 6.3 with 32 channels, 2.1 against 6.4 with 128 at a quarter of the side. NNPACK's own
threads scale poorly beside PyTorch's (a d2lnet-s forward at 256x256 took 0.62-0.79 s on two
threads against oneDNN's 0.55-0.64), and with AVX-512 kernels oneDNN is faster at 32 channels, so
it runs only on one thread of an AVX2 CPU (:func:`winograd_pays`): the default restore of a
machine another process keeps busy, and training on one thread there. Results differ from
oneDNN's by about 1e-5 of their range (``docs/speed.md``).

Inference: :class:`d2lnet.fusion.ConvActivation` calls :func:`conv3x3`. Training:
:func:`winograd_convolutions` sends ``F.conv2d`` through :class:`Conv3x3`, whose input gradient is
again a Winograd convolution (with the kernel flipped and its channels swapped) and whose weight
gradient stays with oneDNN.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from d2lnet.device import Precision


@functools.cache
def _nnpack_on_avx2() -> bool:
    # _nnpack_available() also initialises NNPACK, which its convolution does not do itself.
    return torch.backends.cpu.get_cpu_capability() == "AVX2" and torch._nnpack_available()


def winograd_pays(device: torch.device, precision: Precision) -> bool:
    """Whether float32 3x3 convolutions run through NNPACK's Winograd kernels now, and so the model
    in contiguous (NCHW) memory, which NNPACK reads: on the CPU in float32 on one thread, where
    PyTorch's kernels are AVX2 (``ATEN_CPU_CAPABILITY=avx2`` holds an AVX-512 CPU to them)."""
    if device.type != "cpu" or precision != "fp32" or torch.get_num_threads() != 1 or torch.is_autocast_enabled("cpu"):
        return False
    return _nnpack_on_avx2()


def winograd_shape(kernel: tuple, stride: tuple, dilation: tuple, groups: int) -> bool:
    """Whether NNPACK computes a convolution of this shape with Winograd's algorithm: 3x3, stride 1, dense."""
    return tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a float32 NCHW batch and a 3x3 kernel,
    by NNPACK, image by image (its batched path is slower)."""
    weight = weight.contiguous()
    images = [torch._nnpack_spatial_convolution(image, weight, bias, list(padding)) for image in x.split(1)]
    return images[0] if len(images) == 1 else torch.cat(images)


class Conv3x3(torch.autograd.Function):
    """A 3x3 convolution of stride 1 and padding 1 by :func:`conv3x3`, with its gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return conv3x3(x, weight, bias, (1, 1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # the adjoint of a correlation: the kernel flipped, in and out swapped
            grad_x = conv3x3(grad, weight.transpose(0, 1).flip(2, 3), None, (1, 1))
        if ctx.needs_input_grad[1] or ctx.has_bias and ctx.needs_input_grad[2]:
            bias_sizes = [weight.shape[0]] if ctx.has_bias else None
            mask = [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
            )
        return grad_x, grad_weight, grad_bias


_CONV2D_DEFAULTS = (None, 1, 0, 1, 1)  # bias, stride, padding, dilation, groups


def _pair(value: int | tuple) -> tuple:
    return (value, value) if isinstance(value, int) else tuple(value)


class _WinogradConv2d(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.conv2d and len(args) >= 2:
            x, weight = args[:2]
            names = ("bias", "stride", "padding", "dilation", "groups")
            given = dict(zip(names, args[2:], strict=False)) | kwargs
            bias, stride, padding, dilation, groups = (given.get(n, d) for n, d in zip(names, _CONV2D_DEFAULTS, strict=True))
            if (
                not isinstance(padding, str)
                and _pair(padding) == (1, 1)
                and winograd_shape(weight.shape[2:], _pair(stride), _pair(dilation), groups)
                and x.dim() == 4
                and x.device.type == "cpu"
                and x.dtype == weight.dtype == torch.float32
                and x.is_contiguous()
            ):
                return Conv3x3.apply(x, weight, bias)
        return func(*args, **kwargs)


def winograd_convolutions(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """A context in which ``F.conv2d`` (every ``nn.Conv2d``) of a contiguous float32 batch with a
    3x3 kernel, stride 1 and padding 1 runs as :class:`Conv3x3`, where :func:`winograd_pays`; else nothing."""
    return _WinogradConv2d() if winograd_pays(device, precision) else contextlib.nullcontext()
