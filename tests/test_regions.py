"""Regions: per-pixel styles, mixes and strength by spatial conditional instance norm (engine/regions.py).

The shipped multi-style zoo in eager fp32 on small real photos: a constant map is the plain mix, two regions
look like their own styles, tiled equals untiled, the ONNX spatial graph equals eager, `none` is the photo,
and the command line's --mask/--regions/--strength-map/--feather end to end, bad masks included.
"""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import worst

import instyle
from instyle import models
from instyle.cli import main
from instyle.engine import Stylizer
from instyle.engine.padding import pad_to_multiple
from instyle.engine.regions import Regions, gaussian_feather, split
from instyle.errors import BackendUnavailable
from instyle.specs import parse_regions

ZOO = Path(instyle.__file__).parent / "zoo" / "styles.safetensors"
CANDY, WAVE, MOSAIC, UDNIE = 0, 6, 1, 3  # indices in the zoo's style list


@pytest.fixture(scope="module")
def zoo():
    return instyle.load(str(ZOO), backend="eager", precision="fp32", device="cpu", tile="off", report=False)


def photo_tensor(data, name="amber", size=(128, 128)) -> torch.Tensor:
    with Image.open(data / "content" / "demo" / f"{name}.jpg") as im:
        a = np.asarray(im.convert("RGB").resize(size, Image.BICUBIC))
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()


def one_hot_map(styles: int, h: int, w: int, left: int, right: int, split_at: int) -> torch.Tensor:
    m = torch.zeros(1, styles, h, w)
    m[:, left, :, :split_at] = 1
    m[:, right, :, split_at:] = 1
    return m


def test_constant_map_equals_plain_mix(zoo, data):
    """The spatial norm with the same mix at every pixel is the N x S mix: the generator itself (not the engine's
    shortcut to N x S weights), at an odd size. Weights 1/4, 3/4 are exact in binary, so the area-averaged maps
    are exactly the mix at every layer; what differs is the order of the (gamma, beta) sums (einsum vs matmul)."""
    x = photo_tensor(data, size=(97, 65))
    s = len(zoo.style_names)
    w = torch.zeros(1, s)
    w[0, CANDY], w[0, WAVE] = 0.25, 0.75
    net = zoo.source
    xp, size = pad_to_multiple(x, net.stride_multiple, net.min_size)
    mp, _ = pad_to_multiple(w[:, :, None, None].expand(1, s, *x.shape[-2:]).contiguous(), net.stride_multiple,
                            net.min_size)
    with torch.no_grad():
        ref = net(xp, w)[..., :65, :97].clamp(0, 255)
        y = net(xp, mp)[..., :65, :97].clamp(0, 255)
    assert (y - ref).abs().max() <= 1e-4, worst(y, ref)
    # through the engine (which hands a constant map to any backend as N x S weights): the same mix
    y2 = zoo(x, style_map=mp[..., :65, :97])
    assert (y2 - zoo(x, style_weights=w)).abs().max() <= 1e-4


def test_two_regions_look_like_their_own_styles(zoo, data):
    """Left half candy, right half wave, against each style's own output.

    Measured (amber and chicago at 128x128, candy|wave, wave|candy, mosaic|udnie): the difference does not fall
    to zero away from the boundary and barely depends on the distance beyond ~8 px. Two things are global: the
    receptive field (~54 px of radius at full resolution) and, above all, each IN layer's statistics, taken over
    the whole image, where both styles' activations now meet; so each half is close to, not equal to, its own
    style, by an amount set by how much of the image the other style covers. Measured mean |diff| on 0..255 beyond
    the 8 px band: halves 9-25 (own style) vs 34-61 (the other style); an 8 px strip of the other style: 1.8-7.7.
    Asserted with a margin for this pair (measured: halves 13.8 / 8.9 own vs 40.2 / 33.6 other; strip 1.95 beyond
    the band, 2.57 within it)."""
    x = photo_tensor(data)
    s, w = len(zoo.style_names), 128
    ya, yb = (zoo(x, style_weights=torch.eye(s)[i:i + 1]) for i in (CANDY, WAVE))
    band = 8
    col = torch.arange(w)
    y = zoo(x, style_map=one_hot_map(s, 128, w, CANDY, WAVE, 64))
    for side, own, other in ((col < 64 - band, ya, yb), (col >= 64 + band, yb, ya)):
        d_own = (y - own).abs()[..., side].mean().item()
        d_other = (y - other).abs()[..., side].mean().item()
        assert d_own <= 18 and d_own <= 0.5 * d_other, (d_own, d_other)
    # a thin region of the other style: beyond the band the rest is within a few levels of candy alone
    y = zoo(x, style_map=one_hot_map(s, 128, w, CANDY, WAVE, w - 8))
    d = (y - ya).abs().mean(dim=(0, 1, 2))
    beyond, within = d[: w - 8 - band].mean().item(), d[w - 8 - band: w - 8].mean().item()
    assert beyond <= 3.0 and within > beyond, (beyond, within)


def test_tiled_equals_untiled_with_a_map(zoo, data):
    """Exact tiled inference takes per-pixel (gamma, beta): the map resized per layer, cut to each band."""
    x = photo_tensor(data, size=(101, 75))
    s = len(zoo.style_names)
    m = one_hot_map(s, 75, 101, CANDY, WAVE, 40)
    m[:, :, 30:50] = 0
    m[:, MOSAIC, 30:50] = 0.5
    m[:, UDNIE, 30:50] = 0.5
    tiled = Stylizer(copy.deepcopy(zoo.source), backend="eager", precision="fp32", device="cpu", tile=32,
                     metadata=zoo.metadata)
    y = tiled(x, style_map=m)
    assert tiled.last_tile == 32
    ref = zoo(x, style_map=m)
    assert torch.allclose(y, ref, atol=1e-3), worst(y, ref)


def test_none_is_the_photo_exactly(zoo, data):
    """`none` pixels (further than the feather from an edge) are the input, bit for bit."""
    x = photo_tensor(data, size=(96, 80))
    labels = torch.zeros(80, 96, dtype=torch.long)
    labels[:, 48:] = 1
    labels[20:60, 10:40] = 2
    regions = Regions(labels=labels, mixes=({"candy": 1}, {"wave": 1}, "none"), feather=4)
    y = zoo(x, style_map=regions.maps(zoo.style_names, 1, 80, 96, "cpu")[0])
    inner = (slice(None), slice(None), slice(25, 55), slice(15, 35))  # > 4 px inside the none box
    assert torch.equal(y[inner], x[inner])
    assert (y[..., :, 60:] - x[..., :, 60:]).abs().mean() > 10  # styled elsewhere
    zoo.set_regions(regions)  # the same as a default control
    try:
        assert torch.equal(zoo(x), y)
    finally:
        zoo.set_regions(None)


def test_strength_map_and_single_style_none():
    """A single-style model's {style, none} map is a per-pixel strength: out = s*y + (1-s)*x per pixel."""
    torch.manual_seed(0)
    net = models.build("johnson", dict(width=8, blocks=1))
    st = Stylizer(net, backend="eager", precision="fp32", device="cpu", tile="off")
    x = torch.rand(1, 3, 21, 30) * 255
    full = st(x)
    s = torch.rand(1, 1, 21, 30)
    assert torch.allclose(st(x, strength_map=s), full * s + x * (1 - s), atol=1e-4)
    m = torch.cat([s, 1 - s], 1)  # {style, none}
    assert torch.allclose(st(x, style_map=m), full * s + x * (1 - s), atol=1e-4)
    assert torch.equal(st(x, strength_map=torch.zeros(1, 1, 21, 30)), x)


def test_strength_map_with_per_sample_mixes(zoo, data):
    """A strength map goes with style_weights (what the server sends): each sample its own mix, then each pixel
    its strength; a style map with style_weights stays an error."""
    x = torch.cat([photo_tensor(data, size=(23, 17)), photo_tensor(data, "chicago", size=(23, 17))])
    w = torch.zeros(2, len(zoo.style_names))
    w[0, CANDY], w[1, WAVE], w[1, MOSAIC] = 1, 0.5, 0.5
    s = torch.rand(2, 1, 17, 23, generator=torch.Generator().manual_seed(0))
    full = zoo(x, style_weights=w)
    assert (zoo(x, style_weights=w, strength_map=s) - (full * s + x * (1 - s))).abs().max() <= 1e-3
    with pytest.raises(ValueError, match="exclude each other"):
        zoo(x, style_weights=w, style_map=torch.ones(2, len(zoo.style_names), 17, 23))


def test_pyramid_takes_maps_tiled_and_untiled():
    """The pyramid's norms run from 1/4 to 1 of the input here: constant map = mix; tiled = untiled."""
    torch.manual_seed(0)
    net = models.build("pyramid", dict(ratios=[4, 2, 1], channels=4, styles=3)).eval()
    for p in net.parameters():
        if p.dim() == 2:
            p.data.normal_(0, 0.5)
    x = torch.rand(1, 3, 45, 61) * 255
    xp, _ = pad_to_multiple(x, net.stride_multiple, net.min_size)
    w = torch.tensor([[0.25, 0.75, 0.0]])
    with torch.no_grad():
        assert (net(xp, w) - net(xp, w[:, :, None, None].expand(1, 3, *xp.shape[-2:]))).abs().max() <= 1e-4
    m = torch.zeros(1, 3, 45, 61)
    m[:, 0, :, :30], m[:, 2, :, 30:] = 1, 1
    ref = Stylizer(copy.deepcopy(net), tile="off")(x, style_map=m)
    assert torch.allclose(Stylizer(copy.deepcopy(net), tile=32)(x, style_map=m), ref, atol=1e-3)
    y = Stylizer(copy.deepcopy(net), tile="off", style_scale=2)(x, style_map=m)  # the map follows the resize
    assert y.shape == x.shape


def test_map_errors():
    with pytest.raises(ValueError, match="style_map must be"):
        split(torch.ones(1, 3, 4, 5), None, 4, (1, 3, 4, 5))
    with pytest.raises(ValueError, match="positive sum"):
        split(torch.zeros(1, 4, 4, 5), None, 4, (1, 3, 4, 5))
    with pytest.raises(ValueError, match="0..1"):
        split(None, torch.full((1, 1, 4, 5), 2.0), 4, (1, 3, 4, 5))


def test_backend_without_maps_is_a_clear_error(zoo, data, monkeypatch):
    x = photo_tensor(data, size=(40, 32))
    m = one_hot_map(len(zoo.style_names), 32, 40, CANDY, WAVE, 20)
    monkeypatch.setattr(Stylizer, "takes_style_map", property(lambda self: False))
    with pytest.raises(BackendUnavailable, match="--backend eager"):
        zoo(x, style_map=m)
    zoo(x, style_map=one_hot_map(len(zoo.style_names), 32, 40, CANDY, CANDY, 20))  # constant: N x S, runs


def test_feather_keeps_interiors_exact():
    onehot = torch.zeros(1, 2, 30, 30)
    onehot[:, 0, :, :15] = 1
    onehot[:, 1, :, 15:] = 1
    f = gaussian_feather(onehot, 5)
    assert torch.equal(f[..., :9], onehot[..., :9]) and torch.equal(f[..., 21:], onehot[..., 21:])
    assert 0 < f[0, 0, 0, 14] < 1 and torch.allclose(f.sum(1), torch.ones(1, 30, 30))


def test_onnx_spatial_graph_matches_eager(data):
    """The spatial graph (per-pixel style_map input) in ONNX Runtime against eager, at an odd size, batch 2.
    A small random multi-style generator: the graph is the same for the zoo, and its export is minutes here."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from instyle.export import onnx as onnx_export
    from instyle.export.parity import photo_batch, ramp_map, reference

    torch.manual_seed(0)
    net = models.build("johnson", dict(width=8, blocks=1, styles=3)).eval()
    for name, p in net.named_parameters():
        if p.dim() == 2:  # distinct (gamma, beta) per style
            p.data.normal_(0, 0.5 if name.endswith("weight") else 20)
    proto = onnx_export.to_onnx_proto(net, spatial=True)
    assert [i.name for i in proto.graph.input] == ["image", "style_map"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = photo_batch(2, 37, 53)
    m = ramp_map(2, 3, 37, 53).contiguous()
    (out,) = session.run(None, {"image": x.numpy(), "style_map": m.numpy()})
    ref = reference(net, x, m)
    y = torch.from_numpy(out)
    assert (y - ref).abs().max() <= 1e-3, worst(y, ref)
    # the onnxruntime backend runs the same graph for maps
    st = Stylizer(copy.deepcopy(net), backend="onnxruntime", precision="fp32", device="cpu", tile="off")
    assert st.takes_style_map
    y2 = st(x, style_map=m)
    assert torch.allclose(y2, ref, atol=1e-3), worst(y2, ref)


def test_parse_regions_syntax():
    assert parse_regions("0=none;255=candy") == [((0, 0, 0), {"none": 1.0}), ((255, 255, 255), {"candy": 1.0})]
    assert parse_regions("#ff0000=wave;#0000ff=candy=1,mosaic=3;*=none") == [
        ((255, 0, 0), {"wave": 1.0}), ((0, 0, 255), {"candy": 1.0, "mosaic": 3.0}), ("*", {"none": 1.0})]
    assert parse_regions("128=candy=0.6,none=0.4") == [((128,) * 3, {"candy": 0.6, "none": 0.4})]
    for bad in ("", "0=", "x=candy", "0=a;0=b", "0=candy=-1", "#12=a", "256=a", "0=a=b", "0=a=0"):
        with pytest.raises(ValueError, match="--regions"):
            parse_regions(bad)


# --- the command line ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("regions") / "photo.png"
    with Image.open(data / "content" / "demo" / "chicago.jpg") as im:
        im.convert("RGB").crop((40, 30, 40 + 99, 30 + 67)).save(path)
    return path


def stylize(*args):
    return main(["stylize", *map(str, args), "--model", str(ZOO), "--device", "cpu"])


def test_cli_mask_regions_end_to_end(tmp_path, photo_file, capsys):
    mask = np.zeros((67, 99, 3), np.uint8)
    mask[:, 50:] = (255, 0, 0)
    mask[20:50, 5:40] = (0, 0, 255)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(mask[::2, ::2].copy()).save(tmp_path / "small.png")  # another size: resized, said so
    out = tmp_path / "out"
    assert stylize(photo_file, "-o", out, "--mask", tmp_path / "mask.png", "--feather", "2",
                   "--regions", "#000000=candy;#ff0000=wave=1,mosaic=1;#0000ff=none", "--backend", "auto") == 0
    err = capsys.readouterr().err
    assert "runs backend eager" in err
    y = np.asarray(Image.open(out / "photo.png"), dtype=int)
    x = np.asarray(Image.open(photo_file), dtype=int)
    assert y.shape == x.shape
    assert (y[23:47, 8:37] == x[23:47, 8:37]).all()  # the none box, beyond the 2 px feather
    assert np.abs(y[:, 60:] - x[:, 60:]).mean() > 10
    assert stylize(photo_file, "-o", tmp_path / "o2", "--mask", tmp_path / "small.png", "--backend", "eager",
                   "--regions", "0=candy;#ff0000=wave;#0000ff=none") == 0
    assert "--mask" in capsys.readouterr().err and (tmp_path / "o2" / "photo.png").is_file()
    Image.fromarray(np.tile(np.linspace(0, 255, 99, dtype=np.uint8), (67, 1))).save(tmp_path / "ramp.png")
    assert stylize(photo_file, "-o", tmp_path / "o3", "--strength-map", tmp_path / "ramp.png", "--style", "wave",
                   "--backend", "eager") == 0
    y = np.asarray(Image.open(tmp_path / "o3" / "photo.png"), dtype=int)
    assert (y[:, 0] == x[:, 0]).all() and np.abs(y[:, -5:] - x[:, -5:]).mean() > 10


def _bad_masks(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    Image.new("RGBA", (20, 20), (0, 0, 0, 100)).save(tmp_path / "alpha.png")
    Image.new("L", (1, 1), 0).save(tmp_path / "one.png")
    Image.new("L", (80, 80), 0).save(tmp_path / "huge.png")  # over --max-pixels 5000 below
    Image.new("L", (20, 20), 7).save(tmp_path / "seven.png")
    Image.fromarray(np.full((20, 20), 4000, np.uint16)).save(tmp_path / "deep.png")
    return [("garbage.png", "not an image"), ("alpha.png", "transparency"), ("one.png", "at least 2x2"),
            ("huge.png", "over the limit"), ("seven.png", "the value 7 has no region"), ("deep.png", "16-bit")]


def test_cli_bad_masks_exit_2_with_one_line(tmp_path, photo_file, capsys):
    for name, cause in _bad_masks(tmp_path):
        out = tmp_path / f"out-{name}"
        code = stylize(photo_file, "-o", out, "--mask", tmp_path / name, "--regions", "0=candy;255=none",
                       "--backend", "eager", "--max-pixels", "5000" if name == "huge.png" else "268435456")
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert len(err.splitlines()) == 1 and cause in err and name in err, (name, err)
        assert not (out / "photo.png").exists()
    for extra, cause in ((["--regions", "7=nosuchstyle"], "unknown style"), (["--regions", "7=candy;x=1"], "x"),
                         ([], "go together")):
        code = stylize(photo_file, "-o", tmp_path / "o", "--mask", tmp_path / "seven.png", *extra,
                       "--backend", "eager")
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and cause in err, err
        assert not (tmp_path / "o" / "photo.png").exists()


def test_cli_backend_without_maps_is_a_usage_error(tmp_path, photo_file, capsys, monkeypatch):
    """A backend that cannot take style maps (openvino, fused, ...) stops the run before any output."""
    mask = np.zeros((67, 99), np.uint8)
    mask[:, 50:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    monkeypatch.setattr(Stylizer, "takes_style_map", property(lambda self: False))
    code = stylize(photo_file, "-o", tmp_path / "out", "--mask", tmp_path / "mask.png", "--backend", "eager",
                   "--regions", "0=candy;255=wave")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--backend eager" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out" / "photo.png").exists()
    # one style and none: a strength map, which every backend runs
    assert stylize(photo_file, "-o", tmp_path / "out", "--mask", tmp_path / "mask.png", "--backend", "eager",
                   "--regions", "0=candy;255=none") == 0
