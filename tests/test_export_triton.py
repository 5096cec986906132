"""Triton-server repository: config.pbtxt against tritonclient's ModelConfig schema, layout, README."""
import pytest

from instyle.export import triton_repo

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("fmt", triton_repo.FORMATS)
@pytest.mark.parametrize("max_batch", [0, 1, 8])
def test_config_parses_with_the_contract(fmt, max_batch):
    config = _parse(triton_repo.config_pbtxt("mosaic", fmt, max_batch=max_batch))
    assert config.name == "mosaic" and config.max_batch_size == max_batch
    if fmt == "onnx":
        assert config.backend == "onnxruntime"
    else:
        assert config.platform == "tensorrt_plan"
    dims = [3, -1, -1] if max_batch else [-1, 3, -1, -1]
    for tensor, name in ((config.input[0], "image"), (config.output[0], "stylized")):
        assert tensor.name == name
        assert tensor.data_type == model_config_pb2.TYPE_FP32
        assert list(tensor.dims) == dims
    assert config.HasField("dynamic_batching") == (max_batch > 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="format"):
        triton_repo.config_pbtxt("x", "savedmodel")
    with pytest.raises(ValueError, match="max batch"):
        triton_repo.config_pbtxt("x", "onnx", max_batch=-1)


def test_model_name_is_sanitized():
    assert triton_repo.model_name("La Muse (v2).pth") == "La_Muse_v2_pth"
    assert triton_repo.model_name("???") == "instyle"


def test_write_repo_layout(tmp_path):
    src = tmp_path / "m.plan"
    src.write_bytes(b"engine bytes")
    (tmp_path / "m.plan.json").write_text("{}")
    folder = triton_repo.write_repo(tmp_path / "repo", "candy", src, "plan", max_batch=2)
    assert (folder / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert (folder / "1" / "model.plan.json").is_file()
    assert _parse((folder / "config.pbtxt").read_text()).platform == "tensorrt_plan"
    text = (tmp_path / "repo" / "README.md").read_text()
    assert "docker run" in text and "tritonclient.http" in text and '"candy"' in text
    assert not [p for p in (tmp_path / "repo").rglob(".*")]  # no temporary files


@pytest.mark.parametrize("max_batch", [0, 8])
def test_multi_style_config_declares_style_weights(max_batch):
    config = _parse(triton_repo.config_pbtxt("zoo", max_batch=max_batch, styles=10))
    assert [t.name for t in config.input] == ["image", "style_weights"]
    assert list(config.input[1].dims) == ([10] if max_batch else [-1, 10])
    assert config.input[1].data_type == model_config_pb2.TYPE_FP32
