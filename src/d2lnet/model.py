"""D2LNet, the Dual-Domain Learning Network (paper Sec. 3.2, Fig. 3, equations (6) to (14)).

Reading guide, top to bottom as in Fig. 3::

    X_in --feature projection--> ACM (n AmplitudeCorrectionBlocks in a U-Net)
         --SAM--> X_out1 (image) and X_amp (features)
    X_inv = F^-1(A(X_out1), P(X_in))                                      eq. (13)
    concat(proj(X_inv), X_amp) --> PCM (n PhaseCorrectionBlocks in a U-Net,
         fed the ACM's features across stages) --channel modulation--> X_out2   eq. (14)

Where the paper is silent the layout follows the authors' released model file:
U-Net stages of ``depth`` levels with widths ``width * 2**i``, 4x4 stride-2
convolutions down and 2x2 transposed convolutions up, half-instance-norm
residual blocks on the inputs and skips, MPRNet's cross-stage feature fusion,
and a channel-attention refine head with a global residual.

``domain_order="released"`` reproduces the released code's deviation from the
paper (phase corrected in stage 1, amplitude in stage 2, and a stage-2 input with
the *input's* amplitude and stage 1's phase) so that the two can be compared.

The Fourier operations (eqs. 3-5, 7, 8, 13) are :mod:`d2lnet.fourier`'s; the other operations
whose plain PyTorch form is slow (the half-instance norm, the attention's pooling, eq. 8's 1x1
convolutions of spectra) are :mod:`d2lnet.ops`'s, so that this file reads as the architecture.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from d2lnet.fourier import (
    FFTNorm,
    amplitude_phase,
    from_amplitude_phase,
    inverse,
    phase_of,
    polar,
    spectrum,
    swap_amplitude,
    with_amplitude,
)
from d2lnet.ops import HalfInstanceNorm, SpatialMean, channel_max, channel_mean, keep_gradient_layout, pointwise_conv


@dataclass(frozen=True)
class D2LNetConfig:
    """Hyper-parameters of one D2LNet.

    Attributes:
        in_channels: 3 for colour (RGB), 1 for grey (BT.601 Y).
        width: channels of the first U-Net level; level i has ``width * 2**i``.
        depth: U-Net levels per stage; also the number n of correction blocks per module.
        domain_order: ``"paper"`` corrects amplitude in stage 1 and phase in stage 2 and
            builds X_inv from A(X_out1) and P(X_in) (eq. 13); ``"released"`` swaps both,
            as the authors' released code does.
        fft_norm: normalisation of every FFT; ``"ortho"`` is eq. (3), ``"backward"`` the
            released code's unnormalised transform.
        block_identity: add the block's 1x1 input projection once more to eq. (10), as the
            released code does (``out = spa * SA(spa - fre) + identity + fre``).
        quality_conditioning: modulate every correction block by an embedding of the JPEG
            quality factor, so that one model serves all qualities (blind restoration).
        quality_dim: size of that embedding.
        relu_slope: negative slope of the LeakyReLUs (the released code's 0.2; 0 is a ReLU).
    """

    in_channels: int = 3
    width: int = 64
    depth: int = 4
    domain_order: Literal["paper", "released"] = "paper"
    fft_norm: FFTNorm = "ortho"
    block_identity: bool = False
    quality_conditioning: bool = False
    quality_dim: int = 64
    relu_slope: float = 0.2

    def __post_init__(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {self.in_channels}")
        if self.depth < 1 or self.width < 4:
            raise ValueError(f"need depth >= 1 and width >= 4, got depth={self.depth}, width={self.width}")
        if self.domain_order not in ("paper", "released"):
            raise ValueError(f"domain_order must be 'paper' or 'released', got {self.domain_order!r}")
        if self.fft_norm not in ("ortho", "backward", "forward"):
            raise ValueError(f"fft_norm must be 'ortho', 'backward' or 'forward', got {self.fft_norm!r}")

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this (the U-Net halves the size depth - 1 times)."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> D2LNetConfig:
        """The inverse of :meth:`to_dict`; unknown keys are errors (a newer file, or not a config)."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown D2LNet configuration key(s): {', '.join(sorted(unknown))}")
        return cls(**values)


CONFIGS: dict[str, D2LNetConfig] = {
    # The paper's network at the released code's size (per-quality models, no QF input).
    "d2lnet-paper": D2LNetConfig(width=64, depth=4),
    # The released code's layout, for comparison with the paper's.
    "d2lnet-released": D2LNetConfig(width=64, depth=4, domain_order="released", fft_norm="backward", block_identity=True),
    # Half width, blind over quality factors: the size of the bundled models.
    "d2lnet-s": D2LNetConfig(width=32, depth=4, quality_conditioning=True),
    # Quarter width, blind: the fast configuration, for speed over the last tenth of a dB.
    "d2lnet-t": D2LNetConfig(width=16, depth=4, quality_conditioning=True),
    # Tiny, for tests and smoke runs.
    "d2lnet-xs": D2LNetConfig(width=8, depth=3, quality_conditioning=True, quality_dim=16),
}


def build(name: str, **overrides) -> D2LNet:
    """Build an untrained D2LNet from a named configuration, e.g. ``build("d2lnet-s", in_channels=1)``."""
    if name not in CONFIGS:
        raise KeyError(f"unknown configuration {name!r}; choose one of {', '.join(CONFIGS)}")
    return D2LNet(replace(CONFIGS[name], **overrides))


# --------------------------------------------------------------------------- building blocks


def _conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class HINResBlock(nn.Module):
    """Half-instance-norm residual block (HINet): normalises half the channels after the first conv."""

    def __init__(self, channels: int, relu_slope: float) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels)
        self.norm = nn.InstanceNorm2d(channels // 2, affine=True)
        self.conv2 = _conv3x3(channels, channels)
        self.act = nn.LeakyReLU(relu_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv1(x))
        return x + self.act(self.conv2(self.half_instance_norm(y)))

    def half_instance_norm(self, y: torch.Tensor) -> torch.Tensor:
        """``cat([self.norm(y[:, :half]), y[:, half:]])`` (see :class:`HalfInstanceNorm`)."""
        return HalfInstanceNorm.apply(y, self.norm.weight, self.norm.bias, self.norm.eps)


class FeatureProjection(nn.Sequential):
    """Projects an image into feature space: conv3x3 then HIN residual blocks ("Conv" at the left of Fig. 3)."""

    def __init__(self, c_in: int, width: int, relu_slope: float, blocks: int = 2) -> None:
        super().__init__(_conv3x3(c_in, width), *[HINResBlock(width, relu_slope) for _ in range(blocks)])


class SpatialAttention(nn.Module):
    """SA(.) of eq. (10), the parameter-free-style spatial attention of [27]:
    sigmoid(conv3x3([mean over channels, max over channels]))."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = keep_gradient_layout(x)
        return torch.sigmoid(self.conv(torch.cat([channel_mean(x), channel_max(x)], dim=1)))


class QualityEmbedding(nn.Module):
    """Embeds the JPEG quality factor (1 to 100) for blind restoration; an unknown quality gets a learned vector.

    Not in the paper, whose Sec. 5 names its one-model-per-QF design as its drawback: with
    this embedding driving a channel modulation in every correction block, one model
    covers all quality factors. Training drops the quality now and then so that the
    "unknown" vector learns to restore without it.
    """

    def __init__(self, dim: int, frequencies: int = 8) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(2 * frequencies, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.unknown = nn.Parameter(torch.zeros(dim))

    def forward(self, qf: torch.Tensor) -> torch.Tensor:
        """``qf``: (B,) floats; NaN marks an unknown quality. Returns (B, dim)."""
        known = ~torch.isnan(qf)
        q = torch.where(known, qf, torch.zeros_like(qf)).clamp(0, 100) / 100
        k = torch.arange(1, self.frequencies + 1, device=qf.device, dtype=q.dtype)
        angles = math.pi * q[:, None] * k
        embedding = self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))
        return torch.where(known[:, None], embedding, self.unknown.to(embedding.dtype).expand_as(embedding))


class QualityFiLM(nn.Module):
    """FiLM by the quality embedding: scales and shifts each channel by an affine map of it.

    (Not the paper's "channel modulation", which is the output head, :class:`Refine`.)
    """

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.normal_(self.linear.weight, std=1e-3)  # start close to the identity map
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.linear(cond)[:, :, None, None].chunk(2, dim=1)
        return torch.addcmul(beta, x, 1 + gamma)  # x (1 + gamma) + beta in one pass over x


class DualDomainBlock(nn.Module):
    """A correction block, eqs. (6) to (10): a spatial branch and a Fourier branch fused by spatial attention.

    The Fourier branch splits the (1x1-projected) input F_Xi into amplitude and phase
    (eq. 7), refines one of them with Conv = 1x1 conv, LeakyReLU, 1x1 conv while keeping
    the other (eq. 8), and transforms back. Subclasses choose which spectrum they correct.
    As in eq. (8) taken literally (and the released code), a refined amplitude may come out
    negative, which flips that coefficient's sign: the phase is then kept modulo pi.
    """

    corrects: Literal["amplitude", "phase"]

    def __init__(self, c_in: int, c_out: int, config: D2LNetConfig) -> None:
        super().__init__()
        slope = config.relu_slope
        self.fft_norm = config.fft_norm
        self.block_identity = config.block_identity
        self.project = nn.Conv2d(c_in, c_out, 1)  # F_Xi at the block's width
        self.spatial = nn.Sequential(  # Conv(.) of eq. (6)
            _conv3x3(c_in, c_out), nn.LeakyReLU(slope), _conv3x3(c_out, c_out), nn.LeakyReLU(slope)
        )
        self.spectral = nn.Sequential(  # Conv(.) of eq. (8), per frequency across channels
            nn.Conv2d(c_out, c_out, 1), nn.LeakyReLU(slope), nn.Conv2d(c_out, c_out, 1)
        )
        self.attention = SpatialAttention()
        self.film = QualityFiLM(config.quality_dim, c_out) if config.quality_conditioning else None

    def fourier(self, f_x: torch.Tensor) -> torch.Tensor:
        """F_fre: eq. (7) splits F(F_Xi) into amplitude and phase, eq. (8) refines one and transforms back.

        Computed without the angle where it is not needed (see :mod:`d2lnet.fourier`). The whole
        branch runs in float32 on the spectra as the FFTs lay them out, plane by plane, and F_fre
        comes back in F_Xi's dtype and layout: between F_Xi and F_fre there is no other
        conversion, so that a bf16 channels-last network pays for two copies per block.
        """
        s, amplitude = spectrum(f_x, self.fft_norm)
        if self.corrects == "amplitude":
            s = with_amplitude(s, amplitude, self.spectral_fp32(amplitude))
        else:
            s = polar(amplitude, self.spectral_fp32(phase_of(s)))
        # In F_Xi's memory format too: eqs. (9)-(10) mixing a channels-last tensor with a
        # contiguous one would run several times slower.
        return inverse(s, f_x.shape[-2:], self.fft_norm, like=f_x)

    def spectral_fp32(self, z: torch.Tensor) -> torch.Tensor:
        """``self.spectral`` (Conv of eq. 8) on a float32 spectrum (B, C, H, W'), as matrix products
        over the frequencies: a 1x1 convolution of planes laid out one after the other, with no
        layout change (a convolution would make two) and no rounding to bf16 on the way."""
        first, act, second = self.spectral
        with torch.autocast(device_type=z.device.type, enabled=False):
            return pointwise_conv(second, act(pointwise_conv(first, z)))

    def fourier_literal(self, f_x: torch.Tensor) -> torch.Tensor:
        """:meth:`fourier` as eqs. (7) and (8) read, angle and all: the reference it is tested against."""
        amplitude, phase = amplitude_phase(f_x, self.fft_norm)  # eq. (7)
        if self.corrects == "amplitude":
            amplitude = self.spectral(amplitude)
        else:
            phase = self.spectral(phase)
        return from_amplitude_phase(amplitude, phase, f_x.shape[-2:], self.fft_norm).to(f_x.dtype)  # eq. (8)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        f_x = self.project(x)
        f_spa = self.spatial(x)  # eq. (6)
        if self.film is not None and cond is not None:
            f_spa = self.film(f_spa, cond)
        f_fre = self.fourier(f_x)  # eqs. (7) and (8)
        f_dif = f_spa - f_fre  # eq. (9)
        f_out = torch.addcmul(f_fre, self.attention(f_dif), f_spa)  # eq. (10): SA(F_dif) F_spa + F_fre, one pass
        if self.block_identity:
            f_out = f_out + f_x
        return f_out


class AmplitudeCorrectionBlock(DualDomainBlock):
    """ACB: corrects the amplitude spectrum and keeps the phase (eq. 8)."""

    corrects = "amplitude"


class PhaseCorrectionBlock(DualDomainBlock):
    """PCB: corrects the phase spectrum and keeps the amplitude (Sec. 3.2, "Phase Correction Module")."""

    corrects = "phase"


class ConvBlock(nn.Module):
    """Decoder block: two 3x3 conv-LeakyReLU with a 1x1 residual (the released code's up-path block)."""

    def __init__(self, c_in: int, c_out: int, relu_slope: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv3x3(c_in, c_out), nn.LeakyReLU(relu_slope), _conv3x3(c_out, c_out), nn.LeakyReLU(relu_slope)
        )
        self.identity = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.identity(x)


class CorrectionModule(nn.Module):
    """A U-Net whose encoder levels are correction blocks (the n ACBs or PCBs of a module).

    With ``cross_stage=True`` (the second stage) each encoder level also receives the
    first stage's encoder and decoder features at that level (MPRNet's cross-stage
    feature fusion, which the released code uses to join the stages).
    """

    block: type[DualDomainBlock]

    def __init__(self, config: D2LNetConfig, cross_stage: bool = False) -> None:
        super().__init__()
        widths = [config.width * 2**i for i in range(config.depth)]
        slope = config.relu_slope
        self.encoder = nn.ModuleList(self.block(widths[max(i - 1, 0)], widths[i], config) for i in range(config.depth))
        self.down = nn.ModuleList(nn.Conv2d(w, w, 4, stride=2, padding=1, bias=False) for w in widths[:-1])
        self.skip = nn.ModuleList(HINResBlock(w, slope) for w in widths[:-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(2 * w, w, 2, stride=2) for w in widths[:-1])
        self.decoder = nn.ModuleList(ConvBlock(2 * w, w, slope) for w in widths[:-1])
        self.cross_stage = cross_stage
        if cross_stage:
            self.fuse_encoder = nn.ModuleList(_conv3x3(w, w) for w in widths[:-1])
            self.fuse_decoder = nn.ModuleList(_conv3x3(w, w) for w in widths[:-1])

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor | None = None,
        stage1_encoder: list[torch.Tensor] | None = None,
        stage1_decoder: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Returns the full-resolution output and the encoder and decoder features of each
        level (index 0 = full resolution), which the next stage fuses."""
        encoder: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x, cond)
            if level == len(self.encoder) - 1:
                break
            if self.cross_stage:
                x = x + self.fuse_encoder[level](stage1_encoder[level]) + self.fuse_decoder[level](stage1_decoder[level])
            encoder.append(x)
            x = self.down[level](x)
        decoder: list[torch.Tensor] = [torch.empty(0)] * len(encoder)
        for level in reversed(range(len(encoder))):
            x = self.decoder[level](torch.cat([self.up[level](x), self.skip[level](encoder[level])], dim=1))
            decoder[level] = x
        return x, encoder, decoder


class AmplitudeCorrectionModule(CorrectionModule):
    """ACM: n amplitude correction blocks with skip links (Sec. 3.2)."""

    block = AmplitudeCorrectionBlock


class PhaseCorrectionModule(CorrectionModule):
    """PCM: n phase correction blocks with skip links (Sec. 3.2, eq. 14)."""

    block = PhaseCorrectionBlock


class SAM(nn.Module):
    """Supervised Attention Module of MPRNet [33]: gives the stage-1 image X_out1 and the
    attention-gated features X_amp that carry on to stage 2."""

    def __init__(self, width: int, image_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(width, width)
        self.to_image = _conv3x3(width, image_channels)
        self.from_image = _conv3x3(image_channels, width)

    def forward(self, features: torch.Tensor, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_out1 = self.to_image(features) + x_in
        gate = torch.sigmoid(self.from_image(x_out1))
        x_amp = torch.addcmul(features, self.conv1(features), gate)
        return x_amp, x_out1


class ChannelAttention(nn.Module):
    """Residual conv pair gated per channel by squeeze-and-excitation (the released refine head).

    The squeeze uses a LeakyReLU where the released code has a ReLU: with few channels its
    handful of hidden units can all die, and the gate then never learns.
    """

    def __init__(self, channels: int, reduction: int = 4, relu_slope: float = 0.2) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels))
        self.excite = nn.Sequential(
            SpatialMean(),
            nn.Conv2d(channels, max(channels // reduction, 1), 1),
            nn.LeakyReLU(relu_slope),
            nn.Conv2d(max(channels // reduction, 1), channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return torch.addcmul(x, self.excite(y), y)


class Refine(nn.Sequential):
    """Channel-modulation output head of Fig. 3: conv, channel attention, conv to image channels."""

    def __init__(self, width: int, image_channels: int) -> None:
        super().__init__(_conv3x3(width, width), ChannelAttention(width), _conv3x3(width, image_channels))


# --------------------------------------------------------------------------- the network


def _rename_legacy_keys(state_dict: dict, prefix: str, *args) -> None:
    """Weights saved before the quality FiLM was renamed (``.modulation.`` -> ``.film.``) still load."""
    for key in [k for k in state_dict if k.startswith(prefix) and ".modulation." in k]:
        state_dict[key.replace(".modulation.", ".film.")] = state_dict.pop(key)


class D2LNetOutput(NamedTuple):
    out1: torch.Tensor  # X_out1, the amplitude-corrected image (supervised by eq. 18)
    out2: torch.Tensor  # X_out2, the final restoration (supervised by eqs. 15 and 21)


class D2LNet(nn.Module):
    """The Dual-Domain Learning Network of Fig. 3.

    Images are float tensors in [0, 1] of shape (B, C, H, W) with any H and W: the
    input is padded (edge replication, as JPEG pads partial blocks) to a multiple of
    ``config.stride`` and the outputs cropped back.
    """

    def __init__(self, config: D2LNetConfig) -> None:
        super().__init__()
        self.config = config
        c, w, slope = config.in_channels, config.width, config.relu_slope
        paper = config.domain_order == "paper"
        first, second = (
            (AmplitudeCorrectionModule, PhaseCorrectionModule) if paper else (PhaseCorrectionModule, AmplitudeCorrectionModule)
        )
        self.quality = QualityEmbedding(config.quality_dim) if config.quality_conditioning else None
        self.project1 = FeatureProjection(c, w, slope)
        self.stage1 = first(config)
        self.sam = SAM(w, c)
        self.project2 = FeatureProjection(c, w, slope)
        self.merge = nn.Conv2d(2 * w, w, 1)  # concat(X_inv, X_amp) of eq. (14), back to width
        self.stage2 = second(config, cross_stage=True)
        self.refine = Refine(w, c)
        self.project_out = FeatureProjection(c, w, slope, blocks=1)
        self.refine_out = Refine(w, c)
        # Start as the identity map (X_out1 = X_out2 = X_in): every image-producing conv at zero, so
        # training begins at the JPEG input's quality and only has to learn the correction.
        for conv in (self.sam.to_image, self.refine[-1], self.refine_out[-1]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self._register_load_state_dict_pre_hook(_rename_legacy_keys)

    def quality_condition(self, qf: torch.Tensor | float | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """The conditioning vector for quality factors ``qf``: None (unknown), a number, or (B,) with
        NaN for each unknown one."""
        if self.quality is None:
            return None
        dtype = self.quality.unknown.dtype
        if qf is None:
            qf = float("nan")
        return self.quality(torch.as_tensor(qf, dtype=dtype, device=device).reshape(-1).expand(batch))

    def forward(self, x: torch.Tensor, qf: torch.Tensor | float | None = None) -> D2LNetOutput:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.config.stride
        x_in = F.pad(x, (0, -w % s, 0, -h % s), mode="replicate") if (h % s or w % s) else x
        cond = self.quality_condition(qf, x.shape[0], x.device)

        features, encoder, decoder = self.stage1(self.project1(x_in), cond)
        x_amp, x_out1 = self.sam(features, x_in)

        if self.config.domain_order == "paper":
            x_inv = swap_amplitude(amplitude_from=x_out1, phase_from=x_in, norm=self.config.fft_norm)  # eq. (13)
        else:
            x_inv = swap_amplitude(amplitude_from=x_in, phase_from=x_out1, norm=self.config.fft_norm)
        x_inv = x_inv.to(x_out1.dtype)
        features = self.merge(torch.cat([self.project2(x_inv), x_amp], dim=1))
        features, _, _ = self.stage2(features, cond, encoder, decoder)  # eq. (14)

        y = self.refine(features) + x_in
        x_out2 = self.refine_out(self.project_out(y)) + y
        return D2LNetOutput(x_out1[..., :h, :w], x_out2[..., :h, :w])
