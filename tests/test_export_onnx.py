"""ONNX export: graph form, metadata, parity with the PyTorch fp32 reference on real photos, fp16, CLI.

Exports are slow (torch.export traces the whole model), so each model is exported once per module.
"""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from conftest import need  # noqa: E402

from instyle import checkpoint  # noqa: E402
from instyle.cli import main  # noqa: E402
from instyle.export import onnx as onnx_export  # noqa: E402
from instyle.export import parity  # noqa: E402
from instyle.export.ort_runner import make_session  # noqa: E402
from instyle.models import JohnsonNet  # noqa: E402


@pytest.fixture(scope="module")
def tnet(data):
    """The pytorch/examples checkpoint (random weights) and its metadata."""
    return checkpoint.load(need(data / "pretrained" / "random-transformernet.pth"))


@pytest.fixture(scope="module")
def tnet_onnx(tnet, tmp_path_factory):
    model, meta = tnet
    return onnx_export.export_onnx(model, tmp_path_factory.mktemp("onnx") / "tnet.onnx", metadata=meta)


@pytest.fixture(scope="module")
def session(tnet_onnx):
    return make_session(tnet_onnx)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    """Stand-in for a model of our trainer: a small JohnsonNet saved with instyle.checkpoint.save, its
    weights perturbed so the output spans 0..255 (a fresh init would clamp nearly everything to 0)."""
    torch.manual_seed(0)
    model = JohnsonNet(width=8, blocks=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.deconv3.conv2d.weight.mul_(40)
        model.deconv3.conv2d.bias.fill_(128)
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    checkpoint.save(model, path, style="small", training={"iterations": 0})
    return path


def _ort(session, x):
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def test_graph_io_and_instance_norm_in_inference_form(tnet, tnet_onnx):
    model, _ = tnet
    graph = onnx.load(str(tnet_onnx)).graph
    ops = [n.op_type for n in graph.node]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    in_nodes = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    assert len(in_nodes) == len(norms) == 15
    assert "BatchNormalization" not in ops  # no instance-norm-as-training-batch-norm decomposition
    for node in in_nodes:
        eps = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}.get("epsilon", 1e-5)
        assert eps == pytest.approx(norms[0].eps, rel=1e-6)
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("image", "stylized")
    for value in (inp, out):
        t = value.type.tensor_type
        assert t.elem_type == onnx.TensorProto.FLOAT
        dims = t.shape.dim
        assert dims[1].dim_value == 3
        assert all(d.dim_param and not d.dim_value for d in (dims[0], dims[2], dims[3])), dims


def test_metadata_props(tnet_onnx):
    meta = onnx_export.read_metadata(tnet_onnx)
    assert meta["instyle.input_contract"] == "RGB 0..255 float32 NCHW"
    assert meta["style"] == "random-transformernet"
    assert meta["arch"] == "johnson"
    assert json.loads(meta["config"])["width"] == 32
    assert meta["instyle.version"] and meta["precision"] == "fp32"


@pytest.mark.parametrize("n,h,w", [(1, 333, 517), (1, 720, 1280), (3, 333, 517)])
def test_parity_with_pytorch_on_photos(tnet, session, n, h, w):
    model, _ = tnet
    x = parity.photo_batch(n, h, w)
    out, ref = _ort(session, x), parity.reference(model, x)
    stats = parity.compare(out, ref)
    assert out.shape == x.shape
    assert stats["max_abs"] <= 0.05, stats
    assert float(ref.std()) > 1  # the comparison is not between two constant images


def test_any_size_at_least_min_size(tnet, session):
    model, _ = tnet
    for h, w in [(8, 8), (9, 13), (10, 31)]:  # the in-graph pad reaches 3 px; 8 is the generator's minimum
        x = torch.rand(2, 3, h, w) * 255
        assert parity.compare(_ort(session, x), parity.reference(model, x))["max_abs"] <= 0.05


def test_fp16_keeps_io_float32_and_norms_fp32(tnet, tmp_path):
    model, meta = tnet
    path = onnx_export.export_onnx(model, tmp_path / "h.onnx", precision="fp16", metadata=meta)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = proto.graph
    assert g.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert g.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    types = {v.name: v.type.tensor_type.elem_type for v in g.value_info}
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in convs)
    norms = [n for n in g.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == 15 and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT for n in norms)
    x = parity.photo_batch(2, 333, 517)
    stats = parity.compare(_ort(make_session(path), x), parity.reference(model, x))
    assert stats["psnr"] >= 45, stats


def test_cli_export_trained_model_opset17_with_check(trained_ckpt, tmp_path, capsys):
    out = tmp_path / "small.onnx"
    assert main(["export", "onnx", "--model", str(trained_ckpt), "-o", str(out), "--opset", "17", "--check"]) == 0
    text = capsys.readouterr().out
    checks = [line for line in text.splitlines() if line.startswith("check ")]
    assert len(checks) == 3 and all(line.endswith("ok") for line in checks), text
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert onnx_export.read_metadata(out)["style"] == "small"
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]  # no temporary files left


def test_static_size(trained_ckpt, tmp_path):
    model, meta = checkpoint.load(trained_ckpt)
    proto = onnx_export.to_onnx_proto(model, static=(61, 90), metadata=meta)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 61, 90] and dims[0].dim_param
    path = tmp_path / "s.onnx"
    onnx.save(proto, str(path))
    x = parity.photo_batch(2, 61, 90)
    out = _ort(make_session(path), x)
    assert parity.compare(out, parity.reference(model, x))["max_abs"] <= 0.05


def test_cli_triton_repo_from_onnx_file(tnet_onnx, tmp_path):
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

    repo = tmp_path / "repo"
    assert main(["export", "triton-repo", "--model", str(tnet_onnx), "-o", str(repo), "--max-batch", "4"]) == 0
    folder = repo / "random-transformernet"
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    assert [i.name for i in config.input] == [i.name for i in graph.input] == ["image"]
    assert [o.name for o in config.output] == [o.name for o in graph.output] == ["stylized"]
    assert config.max_batch_size == 4 and config.backend == "onnxruntime"
    assert list(config.input[0].dims) == [3, -1, -1]
    assert (folder / "1" / "model.onnx").read_bytes() == tnet_onnx.read_bytes()
    assert "tritonserver" in (repo / "README.md").read_text()


@pytest.mark.parametrize("argv,code,needle", [
    (["export", "onnx", "--model", "no/such/model.pth", "-o", "{tmp}/x.onnx"], 1, "no such model"),
    (["export", "onnx", "--model", "{tmp}/m.onnx", "-o", "{tmp}/x.onnx"], 2, "already an ONNX file"),
    (["export", "onnx", "--model", "x.pth", "-o", "{tmp}/x.onnx", "--static", "12by5"], 2, "--static"),
    (["export", "onnx", "--model", "x.pth", "-o", "{tmp}/x.onnx", "--opset", "13"], 2, "--opset 13"),
    (["export", "tensorrt", "--model", "x.onnx", "-o", "{tmp}/x.engine", "--profile", "1x3x8:9"], 2, "--profile"),
    (["export", "tensorrt", "--model", "x.onnx", "-o", "{tmp}/x.engine", "--profile", "64x64:32x32:128x128"], 2,
     "MIN <= OPT <= MAX"),
    (["export", "triton-repo", "--model", "{tmp}/none.onnx", "-o", "{tmp}/repo"], 1, "no such ONNX file"),
])
def test_cli_errors_are_one_clear_line(argv, code, needle, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
    assert not any(p.suffix in (".onnx", ".engine") for p in tmp_path.rglob("*"))


def test_photo_batch_is_real_data(data):
    x = parity.photo_batch(3, 33, 51)
    assert x.shape == (3, 3, 33, 51) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 255 and not torch.equal(x[0], x[1])
    assert np.isfinite(x.numpy()).all()


def test_multi_style_graph_takes_style_weights(tmp_path):
    """A conditional-IN generator exports with a second input, N x S style weights, one mix per sample."""
    pytest.importorskip("onnxruntime")
    import onnx

    from instyle import models
    from instyle.export import parity, triton_repo
    from instyle.export.onnx import STYLE_INPUT, export_onnx, read_metadata
    from instyle.models.norm import ConditionalInstanceNorm2d

    torch.manual_seed(0)
    m = models.build("johnson", dict(width=8, blocks=1, styles=3)).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, ConditionalInstanceNorm2d):
                mod.weight.normal_(1, 0.5)
                mod.bias.normal_(0, 0.5)
    meta = {"styles": json.dumps([{"name": n, "source": ""} for n in "abc"])}
    for precision, tol in (("fp32", 1e-2), ("fp16", 1.0)):
        path = export_onnx(m, tmp_path / f"m-{precision}.onnx", precision=precision, metadata=meta)
        proto = onnx.load(str(path))
        assert [i.name for i in proto.graph.input] == ["image", STYLE_INPUT]
        assert json.loads(read_metadata(path)["styles"])[2]["name"] == "c"
        rows = parity.check_onnx(path, m, precision=precision, shapes=[(3, 37, 45), (1, 64, 48)])
        assert all(r["max_abs"] <= tol for r in rows), rows
    text = triton_repo.config_pbtxt("m", styles=3)
    assert f'name: "{STYLE_INPUT}"' in text and "dims: [ 3 ]" in text
    assert STYLE_INPUT not in triton_repo.config_pbtxt("m")
