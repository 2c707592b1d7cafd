"""D2LNet (Sec. 3.2): shapes, gradients, the two domain orders, the quality input, precision."""

import pytest
import torch
from helpers import tiny_model

from d2lnet import model as model_module
from d2lnet.model import CONFIGS, AmplitudeCorrectionBlock, D2LNet, D2LNetConfig, PhaseCorrectionBlock, build


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 17, 30), (3, 3, 33, 8), (1, 3, 64, 64)])
def test_any_size_and_batch(shape):
    net = build("d2lnet-xs")
    out = net(torch.rand(shape), qf=torch.tensor([10.0, 0.0, 95.0])[: shape[0]])
    assert out.out1.shape == out.out2.shape == shape


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_named_configuration_builds_and_runs_on_odd_sizes(name, channels):
    net = build(name, in_channels=channels).eval()
    with torch.no_grad():
        out = net(torch.rand(2, channels, 19, 13), qf=30)
    assert out.out2.shape == (2, channels, 19, 13)
    assert torch.isfinite(out.out2).all()


def test_starts_as_the_identity_map():
    x = torch.rand(2, 3, 24, 40)
    out = build("d2lnet-xs")(x, qf=20)
    torch.testing.assert_close(out.out1, x)
    torch.testing.assert_close(out.out2, x)


def test_every_parameter_receives_a_gradient():
    """After one step moves the zero-initialised output convs, gradients reach every parameter,
    including the unknown-quality embedding (the batch mixes known and unknown qualities)."""
    net = build("d2lnet-xs")
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    x, gt, qf = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24), torch.tensor([10.0, float("nan")])
    for _ in range(2):
        optimizer.zero_grad()
        out = net(x, qf)
        ((out.out1 - gt).abs().mean() + (out.out2 - gt).abs().mean()).backward()
        optimizer.step()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing}"


def test_domain_orders_compute_different_functions():
    paper = tiny_model("busy", quality_conditioning=False)
    released = D2LNet(D2LNetConfig(**{**paper.config.to_dict(), "domain_order": "released"}))
    released.load_state_dict(paper.state_dict())  # same parameters, different wiring
    assert isinstance(paper.stage1.encoder[0], AmplitudeCorrectionBlock)
    assert isinstance(paper.stage2.encoder[0], PhaseCorrectionBlock)
    assert isinstance(released.stage1.encoder[0], PhaseCorrectionBlock)
    assert isinstance(released.stage2.encoder[0], AmplitudeCorrectionBlock)
    x = torch.rand(1, 3, 32, 32)
    assert (paper(x).out2 - released(x).out2).abs().max() > 1e-3


def test_quality_input_changes_the_output_of_a_conditioned_model():
    net = tiny_model("busy")
    with torch.no_grad():  # make the modulation strong enough to see
        for m in net.modules():
            if isinstance(m, model_module.QualityFiLM):
                m.linear.weight.normal_(0, 0.5)
    x = torch.rand(1, 3, 16, 16)
    out10, out90, unknown = net(x, 10).out2, net(x, 90).out2, net(x, None).out2
    assert (out10 - out90).abs().max() > 1e-4 and (out10 - unknown).abs().max() > 1e-4
    torch.testing.assert_close(net(x, float("nan")).out2, unknown)  # NaN is the tensor form of None
    both = net(torch.cat([x, x]), torch.tensor([10.0, 90.0])).out2  # per-sample qualities
    torch.testing.assert_close(both[0], out10[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1], out90[0], atol=1e-5, rtol=0)


def test_bf16_autocast_on_cpu_is_close_to_fp32():
    net = tiny_model("busy")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        reference = net(x, 20).out2
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, 20).out2
    assert low.dtype in (torch.float32, torch.bfloat16)
    assert (low.float() - reference).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype):
    net = tiny_model("busy").cuda()
    x = torch.rand(2, 3, 37, 21, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        out = net(x, 10).out2
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_config_validation():
    with pytest.raises(ValueError):
        D2LNetConfig(in_channels=2)
    with pytest.raises(ValueError):
        D2LNetConfig(domain_order="sideways")
    with pytest.raises(KeyError):
        build("d2lnet-huge")
    with pytest.raises(ValueError, match="expected input"):
        build("d2lnet-xs")(torch.rand(1, 1, 8, 8))


def test_half_instance_norm_block_against_numpy():
    """HINResBlock (HINet): x + lrelu(conv2(h)), h = lrelu(conv1(x)) whose first half of channels is
    instance-normalised (biased variance, eps 1e-5, per-channel affine) and second half kept;
    against NumPy in float64, in either memory layout."""
    import numpy as np
    import torch.nn.functional as F

    torch.manual_seed(0)
    block = model_module.HINResBlock(6, 0.2).double()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 2.0)
        block.norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        h = F.leaky_relu(block.conv1(x), 0.2).numpy()  # the convolutions are PyTorch's own; the norm is checked
        mean = h[:, :3].mean(axis=(2, 3), keepdims=True)
        var = h[:, :3].var(axis=(2, 3), keepdims=True)
        gamma, beta = block.norm.weight.numpy()[:, None, None], block.norm.bias.numpy()[:, None, None]
        h[:, :3] = (h[:, :3] - mean) / np.sqrt(var + 1e-5) * gamma + beta
        expected = x + F.leaky_relu(block.conv2(torch.from_numpy(h)), 0.2)
        for layout in (torch.contiguous_format, torch.channels_last):
            got = block.to(memory_format=layout)(x.contiguous(memory_format=layout))
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
