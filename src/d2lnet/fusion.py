"""Inference on the CPU with every convolution, and the activation after it, as one oneDNN call.

In eager PyTorch a LeakyReLU after a convolution is a second pass over its output; oneDNN
applies it as a post-op while the convolution's output is still in cache (a 3x3 convolution
of 32 channels at 184x208, batch 4, bf16: 1.8 ms fused against 2.7 ms as two calls, on an
Intel Xeon with AMX). :func:`fuse_activations` rewrites a copy of a D2LNet for inference so
that every convolution that is always followed by its activation (the spatial branches of
eq. 6, the decoder blocks, the half-instance-norm blocks, the channel-attention body) is one
:class:`ConvActivation`, and every other convolution is one too, with no activation: PyTorch
sends a float32 1x1 convolution on one thread to its own matrix-product path instead of
oneDNN, and on an AMD EPYC that path (MKL's) runs 2.4-3x slower (a 64-to-32-channel 1x1
convolution at 256x256: 3.9 ms against 1.3 ms). It computes the same function; outside CPU
inference (autograd, CUDA, a PyTorch without the oneDNN op) it runs the plain modules as before.

On one thread of a CPU whose kernels are AVX2 (no AVX-512), float32 3x3 convolutions of stride 1
run through NNPACK's Winograd kernels instead (:func:`winograd_pays`): oneDNN's direct AVX2
convolution computes every product, Winograd's F(6x6, 3x3) a fifth as many. Held to AVX2, one
thread, a 3x3 convolution of one 184x208 image took 5.3 ms against oneDNN's 6.3 with 32 channels
and 2.1 against 6.4 with 128 (at a quarter of the side); a d2lnet-s forward at 256x256 0.81-0.83 s
against 1.04-1.08. NNPACK's own threads scale poorly beside PyTorch's (0.62-0.79 s on two threads,
oneDNN 0.55-0.64), and with AVX-512 oneDNN is faster at 32 channels, so it runs only on one thread
of an AVX2 CPU: the default restore of a machine that another process keeps busy. Its results
differ from oneDNN's by about 1e-5 of their range (README, "Speed on the CPU").
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from d2lnet.device import Precision
from d2lnet.model import ChannelAttention, ConvBlock, D2LNet, DualDomainBlock, HINResBlock

Activation = nn.LeakyReLU | nn.ReLU


def _fused_op_available() -> bool:
    """oneDNN's fused convolution, and the per-device autocast queries (PyTorch 2.4+) that cast for it."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch, "get_autocast_dtype")
    )


class ConvActivation(nn.Module):
    """``activation(conv(x))``, or ``conv(x)`` without one: one oneDNN call in CPU inference
    (the activation as a post-op)."""

    def __init__(self, conv: nn.Conv2d, activation: Activation | None = None) -> None:
        super().__init__()
        if not _fusable(conv):
            raise ValueError("only convolutions with explicit zero padding can be fused")
        self.conv, self.activation = conv, nn.Identity() if activation is None else activation
        if isinstance(activation, nn.LeakyReLU):
            self.attr, self.scalars = "leaky_relu", [activation.negative_slope]
        elif isinstance(activation, nn.ReLU):
            self.attr, self.scalars = "relu", []
        else:
            self.attr, self.scalars = "none", []
        self.fused = _fused_op_available()
        self.winograd = _winograd_shape(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused or x.device.type != "cpu" or torch.is_grad_enabled():
            return self.activation(self.conv(x))
        if self.winograd and x.dtype == torch.float32 and x.is_contiguous() and winograd_pays(x.device, "fp32"):
            return self._winograd(x)
        # Autocast does not see the oneDNN op: cast as it would cast a convolution.
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        conv = self.conv
        bias = None if conv.bias is None else conv.bias.to(dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), conv.weight.to(dtype), bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            self.attr, self.scalars, "",
        )  # fmt: skip

    def _winograd(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution by NNPACK, image by image (its batched path is slower), then the activation in place."""
        conv = self.conv
        weight = conv.weight.contiguous()
        images = [torch._nnpack_spatial_convolution(image, weight, conv.bias, conv.padding) for image in x.split(1)]
        y = images[0] if len(images) == 1 else torch.cat(images)
        if self.attr == "leaky_relu":
            F.leaky_relu_(y, self.scalars[0])
        elif self.attr == "relu":
            y.relu_()
        return y


def _winograd_shape(conv: nn.Conv2d) -> bool:
    """Whether NNPACK computes this convolution with Winograd's algorithm: 3x3, stride 1, dense."""
    return conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1


@functools.cache
def _nnpack_on_avx2() -> bool:
    # _nnpack_available() also initialises NNPACK, which its convolution does not do itself.
    return torch.backends.cpu.get_cpu_capability() == "AVX2" and torch._nnpack_available()


def winograd_pays(device: torch.device, precision: Precision) -> bool:
    """Whether float32 3x3 convolutions run through NNPACK's Winograd kernels now, and so the model
    in contiguous (NCHW) memory, which NNPACK reads: CPU inference in float32 on one thread of a CPU
    whose PyTorch kernels are AVX2 (``ATEN_CPU_CAPABILITY=avx2`` holds an AVX-512 CPU to them)."""
    if device.type != "cpu" or precision != "fp32" or torch.get_num_threads() != 1 or torch.is_autocast_enabled("cpu"):
        return False
    return _nnpack_on_avx2()


def _fusable(conv: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _fuse_sequential(sequence: nn.Sequential) -> None:
    """Each Conv2d directly followed by a LeakyReLU or ReLU in ``sequence``: the pair as one ConvActivation."""
    for i in range(len(sequence) - 1):
        conv, activation = sequence[i], sequence[i + 1]
        if _fusable(conv) and isinstance(activation, Activation):
            sequence[i], sequence[i + 1] = ConvActivation(conv, activation), nn.Identity()


_FUSABLE = (DualDomainBlock, ConvBlock, ChannelAttention, HINResBlock)


def fuse_activations(model: D2LNet) -> D2LNet:
    """``model`` for inference with every convolution as a :class:`ConvActivation`, with the
    activation that always follows it where there is one: a copy of its modules that shares its
    parameters and buffers, so that it sees later changes to the weights while ``model`` itself
    is left as it is. A model with nothing to fuse is returned as it is."""
    if not any(isinstance(m, _FUSABLE) for m in model.modules()):
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    model = copy.deepcopy(model, memo=shared)
    for module in list(model.modules()):
        if isinstance(module, DualDomainBlock):
            _fuse_sequential(module.spatial)  # not module.spectral: eq. (8) runs as matrix products
        elif isinstance(module, (ConvBlock, ChannelAttention)):
            _fuse_sequential(module.body)
        elif isinstance(module, HINResBlock):  # act(conv1(x)) and act(conv2(.)): the activation follows both
            module.conv1 = ConvActivation(module.conv1, module.act)
            module.conv2 = ConvActivation(module.conv2, module.act)
            module.act = nn.Identity()
    # Then every other convolution, alone; not eq. (8)'s, which run as matrix products of their weights.
    spectral = {id(m.spectral) for m in model.modules() if isinstance(m, DualDomainBlock)}
    for parent in [m for m in model.modules() if id(m) not in spectral and not isinstance(m, ConvActivation)]:
        for name, child in parent.named_children():
            if _fusable(child):
                setattr(parent, name, ConvActivation(child))
    return model
