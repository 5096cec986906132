"""Backends of the engine: triton (fused instance norm, Triton interpreter on CPU) and compile against
eager, the CUDA-graph LRU cache, load() defaults; GPU-only checks are marked `gpu`."""

import pytest
import torch
from conftest import need
from tolerances import assert_close

from instyle import checkpoint, io
from instyle.engine import BackendUnavailable, Stylizer, backends, load, plan
from instyle.engine.backends import torch_compile, triton_norms
from instyle.engine.graphs import GraphCache
from instyle.metrics import psnr_db
from instyle.models import JohnsonNet, PyramidNet

CPU = torch.device("cpu")
# fp32 kernel vs F.instance_norm: different reduction order only
ATOL = {torch.float32: 1e-4}


def narrow(seed=0, **kw):
    torch.manual_seed(seed)
    m = JohnsonNet(width=8, blocks=2, **kw).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.InstanceNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def image(n, h, w, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


needs_interpreter = pytest.mark.interpreter  # the Triton kernels on CPU tensors


@needs_interpreter
@pytest.mark.parametrize("shape", [(1, 3, 20, 28), (2, 3, 12, 16)], ids=str)
def test_triton_runner_matches_eager(shape):
    m = narrow()
    x = image(*shape[:1], *shape[2:])
    run = triton_norms.make_runner(m, CPU, torch.float32)
    with torch.inference_mode():
        ref = m(x)
        y = run(x)
    assert_close(y, ref, ATOL[torch.float32] * (1 + ref.abs().max().item()))


@needs_interpreter
def test_triton_backend_odd_batch_through_stylizer():
    x = image(2, 21, 27)
    y = Stylizer(narrow(upsampling="transposed"), backend="triton", tile="off")(x)
    ref = Stylizer(narrow(upsampling="transposed"), backend="eager", tile="off")(x)
    assert y.shape == x.shape
    assert_close(y, ref, 1e-2)  # 0..255 scale


@needs_interpreter
def test_triton_backend_pyramid():
    torch.manual_seed(0)
    m = PyramidNet(ratios=(2, 1), channels=4).eval()
    x = image(1, 8, 12)
    with torch.inference_mode():
        ref = m(x)
        y = triton_norms.make_runner(m, CPU, torch.float32)(x)
    assert_close(y, ref, ATOL[torch.float32] * (1 + ref.abs().max().item()))


@needs_interpreter
def test_triton_reference_module_untouched():
    m = narrow()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    names = [n for n, _ in m.named_modules()]
    triton_norms.make_runner(m, CPU, torch.float32)
    assert [n for n, _ in m.named_modules()] == names
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_triton_unavailable_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailable, match="CUDA"):
        triton_norms.make_runner(narrow(), CPU, torch.float32)


class FakeCapture:
    """Stands in for CUDA graph capture: records captures, replays the function."""

    def __init__(self):
        self.captured = []

    def __call__(self, fn, x):
        self.captured.append(tuple(x.shape))
        return fn


def test_graph_cache_lru_evicts_least_recently_used():
    fake = FakeCapture()
    cache = GraphCache(lambda x: x * 2, capacity=2, warmup_calls=1, capture=fake)
    a, b, c = torch.ones(1, 3, 4, 4), torch.ones(1, 3, 8, 4), torch.ones(2, 3, 4, 4)
    assert torch.equal(cache(a), a * 2)  # warm-up: no capture yet
    assert fake.captured == []
    cache(a)  # second call of the shape: captured
    cache(b), cache(b)
    assert fake.captured == [(1, 3, 4, 4), (1, 3, 8, 4)]
    cache(a)  # a becomes most recently used
    cache(c), cache(c)  # capacity 2: evicts b
    assert [k[0] for k in cache.keys()] == [(1, 3, 4, 4), (2, 3, 4, 4)]
    assert cache.evictions == 1 and cache.captures == 3
    cache(b)  # evicted shapes are warmed up again before a new capture
    assert cache.captures == 3
    cache(b)
    assert cache.captures == 4 and [k[0] for k in cache.keys()] == [(2, 3, 4, 4), (1, 3, 8, 4)]
    with pytest.raises(ValueError):
        GraphCache(lambda x: x, capacity=0)


@needs_interpreter
def test_triton_runner_uses_graph_cache_when_asked():
    run = backends.factory("triton")(narrow(), CPU, torch.float32, graphs=True, cache_size=3)
    assert isinstance(run, GraphCache) and run.capacity == 3
    assert not isinstance(backends.factory("triton")(narrow(), CPU, torch.float32), GraphCache)  # CPU: off
    with pytest.raises(ValueError, match="cache_size must be >= 1"):
        backends.factory("compile")(narrow(), CPU, torch.float32, compiler="eager", cache_size=0)


def test_compile_backend_marks_sizes_dynamic():
    """Many sizes, one graph: sizes are symbolic (no per-size recompilation)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    m = JohnsonNet(width=4, blocks=1).eval()
    run = torch_compile.make_runner(m, CPU, torch.float32, compiler="eager")
    with torch.inference_mode():
        for i, (h, w) in enumerate([(20, 28), (24, 32), (40, 44), (32, 20)]):
            x = image(1, h, w)
            assert_close(run(x), m(x), 1e-4)
            if i == 0:
                graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow  # inductor codegen on CPU takes ~1.5 min
def test_compile_backend_inductor_matches_eager():
    m = narrow()
    run = torch_compile.make_runner(m, CPU, torch.float32)
    with torch.inference_mode():
        for h, w in [(20, 28), (24, 32)]:
            x = image(1, h, w)
            assert_close(run(x), m(x), 1e-3)


def test_load_auto_on_cpu_tries_openvino_then_onnxruntime_then_eager(monkeypatch, capsys):
    real = backends.factory
    calls = []

    def factory(name):
        calls.append(name)
        if name in ("openvino", "onnxruntime"):
            raise BackendUnavailable(f"backend {name!r} needs the package {name} (test)")
        return real(name)

    monkeypatch.setattr(backends, "factory", factory)
    s = load(narrow(), device="cpu", tile="off")
    assert calls == ["openvino", "onnxruntime", "eager"]
    assert (s.backend, s.precision, s.tile) == ("eager", "fp32", "off")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [s.choice] and "backend eager fp32" in lines[0] and "needs the package onnxruntime" in lines[0]


def test_load_explicit_and_errors():
    s = load(narrow(), backend="eager", precision="fp32", device="cpu", tile=64)
    assert s.tile == 64 and s.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown backend"):
        load(narrow(), backend="warp", device="cpu")
    with pytest.raises(ValueError, match="precision"):
        load(narrow(), backend="eager", precision="fp8", device="cpu")


def test_top_level_load_passes_tile():
    import instyle

    s = instyle.load(narrow(), backend="eager", device="cpu", tile="off")
    assert s.tile == "off" and s.precision == "fp32"


def test_plan_rejects_unknown_modules():
    class Tiny(torch.nn.Module):
        stride_multiple, min_size = 1, 1

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="plan"):
        plan.build(Tiny())
    s = Stylizer(Tiny(), tile="auto")  # whole-image runs still work
    assert torch.equal(s(image(1, 5, 5)), image(1, 5, 5))
    with pytest.raises(ValueError, match="tiled"):
        Stylizer(Tiny(), tile=64)


# ---------------------------------------------------------------------------------------------------
# GPU only


def photo(data, h, w):
    pic = io.read_image(need(data / "content" / "demo" / "amber.jpg"))
    return io.to_tensor([pic])[:, :, :h, :w]


@pytest.mark.gpu
def test_gpu_graph_replay_across_sizes():
    """Replays stay correct across sizes, through captures, evictions and re-captures."""
    cuda = torch.device("cuda")
    m = narrow().cuda()
    run = backends.factory("triton")(m, cuda, torch.float32, cache_size=2)
    shapes = [(1, 64, 96), (1, 64, 96), (1, 72, 64), (1, 72, 64), (1, 64, 96), (1, 40, 40), (1, 40, 40),
              (1, 72, 64), (1, 72, 64), (1, 64, 96), (2, 40, 40)]
    with torch.inference_mode():
        for n, h, w in shapes:
            x = image(n, h, w).cuda()
            assert_close(run(x), m(x), 1e-2)
    assert run.captures >= 4 and run.evictions >= 2 and run.replays >= 5
    assert len(run.keys()) == 2
    s = Stylizer(narrow(), backend="triton", precision="fp32", device="cuda", tile="off")
    ref = Stylizer(narrow(), backend="eager", precision="fp32", device="cuda", tile="off")
    for h, w in [(61, 93), (61, 93), (61, 93)]:  # odd size, channels_last, graph replay
        x = image(1, h, w).cuda()
        assert_close(s(x), ref(x), 1e-2)
    assert s._run.replays == 2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_gpu_low_precision_psnr(data, precision):
    weights = need(data / "pretrained" / "random-transformernet.pth")
    x = photo(data, 512, 768).cuda()
    ref = Stylizer(checkpoint.load(weights)[0], backend="eager", precision="fp32", device="cuda", tile="off")(x)
    s = Stylizer(checkpoint.load(weights)[0], backend="triton", precision=precision, device="cuda", tile="off")
    for _ in range(3):  # warm-up, capture, replay
        y = s(x)
        assert psnr_db(y, ref) >= 45, f"triton {precision}: PSNR {psnr_db(y, ref):.1f} dB vs fp32 eager"


@pytest.mark.gpu
def test_gpu_tiled_equals_untiled_fp16(data):
    weights = need(data / "pretrained" / "random-transformernet.pth")
    x = photo(data, 700, 1000).cuda()
    whole = Stylizer(checkpoint.load(weights)[0], backend="triton", precision="fp16", device="cuda", tile="off")
    tiles = Stylizer(checkpoint.load(weights)[0], backend="triton", precision="fp16", device="cuda", tile=256)
    assert psnr_db(tiles(x), whole(x)) >= 45


@pytest.mark.gpu
def test_gpu_compile_backend():
    m = narrow()
    s = Stylizer(m, backend="compile", precision="fp32", device="cuda", tile="off")
    ref = Stylizer(narrow(), backend="eager", precision="fp32", device="cuda", tile="off")
    for h, w in [(64, 96), (64, 96), (72, 64), (72, 64)]:
        x = image(1, h, w).cuda()
        assert_close(s(x), ref(x), 1e-2)



def test_auto_chains_and_precisions_per_device():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert backends.chain(cuda) == ("fused", "triton", "eager")
    assert backends.chain(cpu) == ("openvino", "onnxruntime", "eager")
    assert backends.auto_precision("triton", cuda) == "fp16"
    assert backends.auto_precision("onnxruntime", cpu) == backends.auto_precision("eager", cpu) == "fp32"
    assert set(backends.BACKENDS) == set(backends.TABLE) and "openvino" in backends.BACKENDS
    with pytest.raises(BackendUnavailable, match="runs on cuda, not cpu"):
        backends.check_device("tensorrt", cpu)
    with pytest.raises(BackendUnavailable, match="runs on cpu, not cuda"):
        backends.check_device("openvino", cuda)


def test_auto_moves_past_fused_for_a_generator_it_cannot_run(monkeypatch):
    """auto's CUDA chain starts at fused; a pyramid net is refused by fused's own check and runs on the next
    backend, with the reason in the report line. The chain logic is device-independent, so CPU shows it."""
    monkeypatch.setitem(backends._CHAINS, "cpu", ("fused", "eager"))
    m = PyramidNet(ratios=(2, 1), channels=4).eval()
    s = load(m, device="cpu", precision="fp32", tile="off", report=False)
    assert s.backend == "eager"
    assert "skipped fused: backend 'fused' runs only the Johnson generator, not PyramidNet" in s.choice
    x = image(1, 24, 40)
    assert torch.equal(s(x), load(m, backend="eager", device="cpu", precision="fp32", tile="off")(x))

def test_missing_package_is_unavailable_with_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match=r"needs the package onnxruntime \(pip install 'instyle\[onnx\]'\)"):
        backends.factory("onnxruntime")


# ---------------------------------------------------------------------------------------------------
# The backend table: precisions and options, and their agreement with the factories.


def _keyword_options(fn) -> set[str]:
    import inspect

    return {p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_table_options_are_the_factorys_keywords(name):
    try:
        fn = backends.factory(name)
    except BackendUnavailable as e:
        pytest.skip(f"{name}: {e}")
    spec = backends.TABLE[name]
    graph_options = {"graphs", "cache_size"} if spec.graphs else set()  # taken by the table's graph wrap
    assert set(spec.options) == _keyword_options(spec.factory) | graph_options
    assert graph_options <= _keyword_options(fn) and not graph_options & _keyword_options(spec.factory)


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_runners_refuse_what_the_table_leaves_out(name):
    """The table's precisions are checked first (Stylizer); the runners' own guards agree with it."""
    from instyle.precision import DTYPES

    try:
        fn = backends.factory(name)
    except BackendUnavailable as e:
        pytest.skip(f"{name}: {e}")
    left_out = [p for p in DTYPES if p not in backends.TABLE[name].precisions]
    assert left_out
    for precision in left_out:
        with pytest.raises(BackendUnavailable, match=name):
            fn(narrow(), CPU, DTYPES[precision])


def test_precisions_outside_the_table_are_one_clear_line():
    with pytest.raises(BackendUnavailable, match="backend 'openvino' runs fp32 or bf16 or int8, not fp16"):
        Stylizer(narrow(), backend="openvino", precision="fp16")


def test_options_reach_the_factory_from_load(monkeypatch):
    seen = []

    def fake(model, device, dtype, *, prenorm="auto"):
        seen.append(dict(prenorm=prenorm))
        return lambda x: model(x.to(dtype))

    monkeypatch.setattr(backends.TABLE["fused"], "factory", fake)
    s = load(narrow(), backend="fused", precision="fp32", device="cpu",
             options={"prenorm": "all", "cache_size": 2, "graphs": True})
    assert seen == [dict(prenorm="all")] and s.options == {"prenorm": "all", "cache_size": 2, "graphs": True}
    assert isinstance(s._run, GraphCache) and s._run.capacity == 2  # the table's graph options, not the factory's
    torch.testing.assert_close(s(image(1, 9, 11)), Stylizer(narrow())(image(1, 9, 11)), rtol=0, atol=0)


def test_unknown_options_are_value_errors():
    with pytest.raises(ValueError, match="backend 'eager' has no option 'prenorm' \\(it takes no options\\)"):
        load(narrow(), backend="eager", device="cpu", options={"prenorm": "all"})
    with pytest.raises(ValueError, match="'graph'.*its options: graphs, cache_size"):
        Stylizer(narrow(), backend="triton", options={"graph": False})
    with pytest.raises(ValueError, match="backend 'auto' on cpu: no backend of .* 'prenorm'"):
        load(narrow(), device="cpu", options={"prenorm": "all"}, report=False)


def test_auto_gives_each_backend_the_options_it_takes(monkeypatch):
    seen = {}

    def recorder(name):
        def make(model, device, dtype, **kw):
            seen[name] = kw
            if name != "eager":
                raise BackendUnavailable(f"{name} off for this test")
            return lambda x: model(x.to(dtype))
        return make

    for name in ("openvino", "onnxruntime", "eager"):
        monkeypatch.setattr(backends.TABLE[name], "factory", recorder(name))
        monkeypatch.setattr(backends.TABLE[name], "requires", ())
    monkeypatch.setattr(backends.TABLE["onnxruntime"], "options", ("threads",))
    s = load(narrow(), device="cpu", precision="fp32", options={"threads": 2}, report=False)
    assert s.backend == "eager" and seen == {"openvino": {}, "onnxruntime": {"threads": 2}, "eager": {}}


def test_compile_mode_is_inductors_only():
    from instyle.engine.backends.torch_compile import make_runner

    with pytest.raises(ValueError, match="mode 'default' is inductor's; compiler 'eager' has no modes"):
        make_runner(narrow(), torch.device("cpu"), torch.float32, compiler="eager", mode="default")
