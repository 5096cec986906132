"""Reference generators: shapes for every variant, and parity with an independent functional forward."""
import pytest
import torch
import torch.nn.functional as F

from instyle.models import JohnsonNet, PyramidNet, build


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
@pytest.mark.parametrize("padding", ["reflect", "zero"])
@pytest.mark.parametrize("upsampling", ["nearest", "transposed"])
def test_johnson_variants_keep_size(norm, padding, upsampling):
    net = JohnsonNet(width=8, blocks=2, norm=norm, padding=padding, upsampling=upsampling).eval()
    for h, w in [(8, 8), (20, 36), (64, 44)]:
        y = net(torch.rand(2, 3, h, w) * 255)
        assert y.shape == (2, 3, h, w)
        assert torch.isfinite(y).all()


def test_johnson_default_matches_transformernet_size():
    net = JohnsonNet()
    assert sum(p.numel() for p in net.parameters()) == 1_679_235  # pytorch/examples TransformerNet
    assert "res5.conv2.conv2d.weight" in net.state_dict() and "deconv3.conv2d.bias" in net.state_dict()


def _conv(x, sd, name, stride=1, upsample=False):
    w, b = sd[f"{name}.conv2d.weight"], sd[f"{name}.conv2d.bias"]
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    p = w.shape[-1] // 2
    return F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), w, b, stride)


def _in(x, sd, name):
    return F.instance_norm(x, weight=sd[f"{name}.weight"], bias=sd[f"{name}.bias"], eps=1e-5)


def transformer_net_functional(x, sd):
    """pytorch/examples TransformerNet written with torch.nn.functional only (the independent reference)."""
    y = F.relu(_in(_conv(x, sd, "conv1"), sd, "in1"))
    y = F.relu(_in(_conv(y, sd, "conv2", 2), sd, "in2"))
    y = F.relu(_in(_conv(y, sd, "conv3", 2), sd, "in3"))
    for i in range(1, 6):
        r = y
        y = F.relu(_in(_conv(y, sd, f"res{i}.conv1"), sd, f"res{i}.in1"))
        y = _in(_conv(y, sd, f"res{i}.conv2"), sd, f"res{i}.in2") + r
    y = F.relu(_in(_conv(y, sd, "deconv1", upsample=True), sd, "in4"))
    y = F.relu(_in(_conv(y, sd, "deconv2", upsample=True), sd, "in5"))
    return _conv(y, sd, "deconv3")


def test_johnson_matches_functional_forward(data):
    sd = torch.load(data / "pretrained" / "random-transformernet.pth", weights_only=True)
    net = JohnsonNet().eval()
    net.load_state_dict({k: v for k, v in sd.items() if "running" not in k})
    x = torch.rand(1, 3, 36, 52) * 255
    with torch.no_grad():
        assert torch.allclose(net(x), transformer_net_functional(x, sd), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_pyramid_style_mode_shapes(norm):
    net = PyramidNet(norm=norm).eval()
    for h, w in [(64, 64), (96, 160)]:
        assert net(torch.rand(2, 3, h, w) * 255).shape == (2, 3, h, w)


def test_pyramid_texture_mode_samples_any_multiple():
    net = PyramidNet(mode="texture", ratios=(8, 4, 2, 1), channels=4, padding="zero").eval()
    a = net(net.sample_noise(1, 32, 48, generator=torch.Generator().manual_seed(0)))
    b = net(net.sample_noise(1, 32, 48, generator=torch.Generator().manual_seed(1)))
    assert a.shape == (1, 3, 32, 48)
    assert not torch.allclose(a, b), "different noise must give different textures"
    assert net(net.sample_noise(2, 64, 16)).shape == (2, 3, 64, 16)


def test_pyramid_style_with_noise_channels():
    net = PyramidNet(ratios=(4, 2, 1), noise_channels=2).eval()
    x = net.with_noise(torch.rand(1, 3, 16, 24) * 255)
    assert x.shape[1] == 5 and net(x).shape == (1, 3, 16, 24)


def test_bad_configs_are_clear():
    with pytest.raises(ValueError, match="norm must be one of"):
        JohnsonNet(norm="layer")
    with pytest.raises(ValueError, match="padding must be one of"):
        JohnsonNet(padding="circular")
    with pytest.raises(ValueError, match="ratios must halve"):
        PyramidNet(ratios=(8, 3, 1))
    with pytest.raises(ValueError, match="unknown architecture"):
        build("unet")
    with pytest.raises(ValueError, match="takes 3 input channels"):
        PyramidNet(ratios=(2, 1))(torch.rand(1, 4, 8, 8))
