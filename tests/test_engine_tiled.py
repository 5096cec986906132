"""Exact tiled inference (engine/tiled.py) against whole-image runs, and the memory arithmetic behind it."""
import itertools

import pytest
import torch
from conftest import need
from tolerances import worst

from instyle import checkpoint, io
from instyle.engine import Stylizer, memory, plan, tiled
from instyle.models import JohnsonNet, PyramidNet

JOHNSON_VARIANTS = list(itertools.product(("instance", "batch", "none"), ("reflect", "zero"),
                                          ("nearest", "transposed")))


def johnson(norm="instance", padding="reflect", upsampling="nearest", seed=0):
    torch.manual_seed(seed)
    m = JohnsonNet(width=8, blocks=2, norm=norm, padding=padding, upsampling=upsampling).eval()
    for mod in m.modules():  # non-trivial eval statistics and affine parameters
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
    return m


def image(n, h, w, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.mark.parametrize("norm,padding,upsampling", JOHNSON_VARIANTS)
def test_plan_equals_forward(norm, padding, upsampling):
    m = johnson(norm, padding, upsampling)
    x = image(2, 20, 28)
    with torch.no_grad():
        assert torch.equal(plan.run(plan.build(m), x), m(x))


@pytest.mark.parametrize("mode,noise,norm", [("style", 0, "instance"), ("style", 2, "batch"), ("texture", 3, "none")])
def test_pyramid_plan_equals_forward(mode, noise, norm):
    torch.manual_seed(0)
    m = PyramidNet(ratios=(4, 2, 1), mode=mode, noise_channels=noise, norm=norm).eval()
    x = torch.rand(1, plan.in_channels(m), 16, 24) * 255
    with torch.no_grad():
        assert torch.equal(plan.run(plan.build(m), x), m(x))


@pytest.mark.parametrize("norm,padding,upsampling", JOHNSON_VARIANTS)
def test_tiled_equals_untiled_all_johnson_variants(norm, padding, upsampling):
    m = johnson(norm, padding, upsampling)
    x = image(1, 76, 52)  # 32-px tiles: several tiles per layer (16 px at 1/4 scale), ragged last tiles
    with torch.no_grad():
        ref = m(x)
        y = tiled.run_tiled(plan.build(m), x, 32, storage=torch.float32)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), worst(y, ref)


def test_tiled_fp16_storage_is_close():
    m = johnson()
    x = image(1, 64, 48)
    with torch.no_grad():
        ref = m(x)
        y = tiled.run_tiled(plan.build(m), x, 16, storage=torch.float16)
    # 16-bit stores round every activation once to ~5e-4 relative of its deviation from the shift
    assert (y - ref).abs().max() <= 5e-3 * ref.abs().max(), worst(y, ref)


def test_tiled_pyramid():
    torch.manual_seed(0)
    m = PyramidNet(ratios=(8, 4, 2, 1), channels=4).eval()
    x = image(1, 72, 40)
    with torch.no_grad():
        ref = m(x)
        y = tiled.run_tiled(plan.build(m), x, 16, storage=torch.float32)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), worst(y, ref)


@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 9, 61), (1, 3, 1, 1)], ids=str)
def test_stylizer_tiled_odd_sizes(shape):
    x = image(*shape[:1], *shape[2:])
    whole = Stylizer(johnson(), tile="off")
    tiles = Stylizer(johnson(), tile=32)
    ref, y = whole(x), tiles(x)
    assert tiles.last_tile == 32 and whole.last_tile is None
    assert y.shape == x.shape
    assert torch.allclose(y, ref, atol=1e-3), worst(y, ref)


@pytest.fixture(scope="module")
def photo_run(data):
    """A 1000x700 crop of a real photo, the pytorch/examples network, and its untiled fp32 output."""
    weights = need(data / "pretrained" / "random-transformernet.pth")
    pic = io.read_image(need(data / "content" / "demo" / "amber.jpg"))
    x = io.to_tensor([pic])[:, :, :700, :1000]
    assert x.shape == (1, 3, 700, 1000)
    model, _ = checkpoint.load(weights)
    return model, x, Stylizer(model, tile="off")(x)


def test_real_photo_tiled_equals_untiled(photo_run):
    model, x, ref = photo_run
    s = Stylizer(model, tile=256)
    y = s(x)
    assert s.last_tile == 256
    assert (y - ref).abs().max() <= 0.5, worst(y, ref)


def test_real_photo_16bit_stores_when_memory_is_short(photo_run, monkeypatch):
    """fp32 stores would not fit (patched MemAvailable), so the sweep keeps 16-bit stores."""
    model, x, ref = photo_run
    chosen = []
    choose = tiled.choose_storage
    monkeypatch.setattr(tiled, "choose_storage", lambda *a, **k: chosen.append(choose(*a, **k)) or chosen[-1])
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 200 * 10**6)
    y = Stylizer(model, tile=256)(x)
    assert chosen == [torch.float16]
    d = (y - ref).abs()
    assert d.max() <= 1.0 and d.mean() <= 0.1, worst(y, ref)


def test_forced_oom_falls_back_to_tiles(monkeypatch):
    s = Stylizer(johnson(), tile="auto")
    x = image(1, 40, 44)
    ref = s(x)
    assert s.last_tile is None

    def out_of_memory(_):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    s._run = out_of_memory
    monkeypatch.setattr(memory, "auto_tile", lambda *a, **k: 32)
    y = s(x)
    assert s.last_tile == 32
    assert torch.allclose(y, ref, atol=1e-3), worst(y, ref)
    off = Stylizer(johnson(), tile="off")
    off._run = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        off(x)


def test_auto_tiles_when_memory_is_short(monkeypatch):
    s = Stylizer(johnson(), tile="auto")
    x = image(1, 48, 48)
    assert s.plan_tile(x) is None
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10_000)
    assert s.plan_tile(x) == 64  # nothing fits: the smallest tile
    assert Stylizer(johnson(), tile="off").plan_tile(x) is None


def test_memory_reads_meminfo():
    assert memory.host_available_bytes() > 0


def test_108_megapixel_storage_arithmetic(monkeypatch):
    """The documented peak for a 12000x9000 photo: 1.5 * 32 * P elements of inter-layer stores."""
    steps = plan.build(JohnsonNet())
    shape = (1, 3, 9000, 12000)
    p = 9000 * 12000
    assert memory.store_peak_elements(steps, shape) == 48 * p
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 23 * 10**9)
    assert tiled.choose_storage(steps, shape, torch.float32) == torch.float16  # 20.7 GB fp32 would not fit
    assert tiled.choose_storage(steps, (1, 3, 2000, 3000), torch.float32) == torch.float32
    assert tiled.choose_storage(steps, shape, torch.bfloat16) == torch.bfloat16
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 4 * 10**9)
    with pytest.raises(MemoryError, match="host memory"):
        tiled.choose_storage(steps, shape, torch.float32)
    # device working set of one 1024-px fp16 tile stays far below a 24 GB GPU
    assert memory.tile_bytes(steps, shape, 1024, 2) < 2 * 10**9


def test_tile_option_validation():
    with pytest.raises(ValueError, match="tile"):
        Stylizer(johnson(), tile=4)
    with pytest.raises(ValueError, match="tile"):
        Stylizer(johnson(), tile="big")
    assert Stylizer(johnson(), tile="128").tile == 128
