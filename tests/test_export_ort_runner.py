"""The onnxruntime backend: parity with eager for every generator config, batch sizes, tiny images, cache."""
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from instyle.engine import BackendUnavailable, Stylizer  # noqa: E402
from instyle.export import onnx as onnx_export  # noqa: E402
from instyle.export import ort_runner  # noqa: E402
from instyle.models import JohnsonNet, PyramidNet  # noqa: E402

# every JohnsonNet option appears in one of the two Johnson configs (instance norm + reflect + nearest is the
# default, covered at full size in test_export_onnx.py); the pyramid checks a 2^k stride multiple
CONFIGS = {
    "johnson-batchnorm-zero-transposed": lambda: JohnsonNet(width=8, blocks=1, norm="batch", padding="zero",
                                                            upsampling="transposed"),
    "johnson-nonorm-reflect-nearest": lambda: JohnsonNet(width=8, blocks=2, norm="none"),
    "johnson-instance": lambda: JohnsonNet(width=8, blocks=1),
    "pyramid": lambda: PyramidNet(ratios=(4, 2, 1), channels=4),
}


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("cache")
        mp.setenv("INSTYLE_CACHE", str(path))
        yield path


def _model(name):
    torch.manual_seed(1)
    model = CONFIGS[name]().eval()
    with torch.no_grad():
        for m in model.modules():  # non-trivial batch-norm statistics, outputs spread over 0..255
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))][-1]
        last.weight.mul_(30)
        last.bias.fill_(128)
    return model


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_eager_for_batches_and_odd_sizes(name):
    model = _model(name)
    eager = Stylizer(model, backend="eager")
    ort = Stylizer(model, backend="onnxruntime")
    torch.manual_seed(2)
    shapes = [(1, 3, 67, 93), (3, 3, 64, 64), (2, 3, 5, 7)]  # 5x7: below min_size, padded by the engine
    for shape in shapes:
        x = torch.rand(shape) * 255
        out, ref = ort(x), eager(x)
        assert out.shape == x.shape
        err = (out - ref).abs().max().item()
        assert err <= 0.05, (name, shape, err)
        assert ref.std() > 1


def test_cache_reused_and_keyed_by_weights(cache):
    model = _model("johnson-instance")
    ort_runner.make_runner(model, torch.device("cpu"), torch.float32)  # exported here or by the test above
    before = {p.name: p.stat().st_mtime_ns for p in (cache / "onnx").iterdir()}
    ort_runner.make_runner(model, torch.device("cpu"), torch.float32)
    after = {p.name: p.stat().st_mtime_ns for p in (cache / "onnx").iterdir()}
    assert after == before  # nothing exported again
    assert not [n for n in after if n.startswith(".")]  # no temporary files left behind
    with torch.no_grad():
        model.conv1.conv2d.bias.add_(1)
    changed = onnx_export.cached_onnx(model)
    assert changed.name not in before and changed.is_file()  # keyed by the weights


def test_bf16_is_unavailable():
    with pytest.raises(BackendUnavailable, match="fp32 or fp16"):
        ort_runner.make_runner(_model("johnson-instance"), torch.device("cpu"), torch.bfloat16)


def test_session_options():
    so = ort_runner.session_options()
    assert so.intra_op_num_threads == ort_runner.physical_cores() >= 1
    assert ort_runner.providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]


def test_texture_models_are_unavailable_not_wrong():
    texture = PyramidNet(ratios=(2, 1), channels=4, mode="texture")
    with pytest.raises(BackendUnavailable, match="texture"):
        ort_runner.make_runner(texture, torch.device("cpu"), torch.float32)


def test_large_inputs_use_a_lean_session(monkeypatch):
    """Above LEAN_ABOVE_PIXELS the runner switches to an arena-less session with the same results."""
    made = []
    real = ort_runner.make_session
    monkeypatch.setattr(ort_runner, "make_session", lambda *a, **k: made.append(k.get("arena", True)) or real(*a, **k))
    monkeypatch.setattr(ort_runner, "LEAN_ABOVE_PIXELS", 40 * 40)
    model = _model("johnson-instance")
    ort, eager = Stylizer(model, backend="onnxruntime"), Stylizer(model, backend="eager")
    small, large = torch.rand(1, 3, 32, 32) * 255, torch.rand(1, 3, 48, 52) * 255
    for x in (small, large, small, large):
        assert (ort(x) - eager(x)).abs().max() <= 0.05
    assert made == [True, False], "one session of each kind, each made once"
