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

On one thread of a CPU whose kernels are AVX2, float32 3x3 convolutions of stride 1 run through
NNPACK's Winograd kernels instead (:mod:`d2lnet.winograd`), the activation in place after them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from d2lnet.model import ChannelAttention, ConvBlock, D2LNet, DualDomainBlock, HINResBlock
from d2lnet.winograd import conv3x3, winograd_pays, winograd_shape

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
        self.winograd = winograd_shape(conv.kernel_size, conv.stride, conv.dilation, conv.groups)

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
        y = conv3x3(x, self.conv.weight, self.conv.bias, self.conv.padding)
        if self.attr == "leaky_relu":
            F.leaky_relu_(y, self.scalars[0])
        elif self.attr == "relu":
            y.relu_()
        return y


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
