"""A Triton Inference Server model repository: REPO/NAME/1/model.onnx|model.plan + config.pbtxt + README.md.

The config declares the export contract: input `image`, output `stylized`, TYPE_FP32, dims [3, -1, -1]
(H and W dynamic) with batching handled by Triton (max_batch_size > 0 puts N outside `dims`) and dynamic
batching on. Triton batches only requests of equal H and W; clients that send many sizes get no batching
but still any size (the stride padding is inside the graph).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from instyle.atomic import atomic_path

from .onnx import INPUT_CONTRACT, INPUT_NAME, OUTPUT_NAME, STYLE_INPUT

FORMATS = ("onnx", "plan")
_PLATFORM = {"onnx": 'backend: "onnxruntime"', "plan": 'platform: "tensorrt_plan"'}


def model_name(text: str) -> str:
    """A Triton model name from a style or file name (letters, digits, _ and -)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return name or "instyle"


def config_pbtxt(name: str, fmt: str = "onnx", *, max_batch: int = 8, instances: int = 1,
                 queue_delay_us: int = 2000, styles: int = 1) -> str:
    """config.pbtxt text for a model of the export contract (styles > 1: the `style_weights` input too)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if max_batch < 0:
        raise ValueError(f"max batch must be >= 0, got {max_batch}")
    dims = "[ 3, -1, -1 ]" if max_batch > 0 else "[ -1, 3, -1, -1 ]"
    batching = (f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n"
                if max_batch > 0 else "")
    style_dims = f"[ {styles} ]" if max_batch > 0 else f"[ -1, {styles} ]"
    style_input = (f',\n  {{\n    name: "{STYLE_INPUT}"\n    data_type: TYPE_FP32\n    dims: {style_dims}\n  }}'
                   if styles > 1 else "")
    return (
        f'name: "{name}"\n'
        f"{_PLATFORM[fmt]}\n"
        f"max_batch_size: {max_batch}\n"
        f"# {INPUT_CONTRACT} in; same shape, clamped 0..255, out\n"
        f'input [\n  {{\n    name: "{INPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: {dims}\n  }}{style_input}\n]\n'
        f'output [\n  {{\n    name: "{OUTPUT_NAME}"\n    data_type: TYPE_FP32\n    dims: {dims}\n  }}\n]\n'
        f"{batching}"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_AUTO\n  }}\n]\n"
    )


def readme(name: str, fmt: str) -> str:
    gpu_note = ("The plan file only runs on the GPU model and TensorRT version that built it (see "
                "model.plan.json); use the tritonserver release whose TensorRT matches.\n"
                if fmt == "plan" else
                "ONNX Runtime runs it on CPU or GPU (instance_group kind KIND_AUTO picks GPU when present).\n")
    return f"""# Triton model repository: {name}

Made by `instyle export triton-repo`. Contract: input `{INPUT_NAME}` float32 N x 3 x H x W, RGB in 0..255;
output `{OUTPUT_NAME}`, same shape, clamped to 0..255. Any H, W >= the generator's minimum (8 px for the
Johnson generator) works: the padding to the stride multiple happens inside the model.
{gpu_note}
## Serve

```sh
docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
    -v "$PWD":/models nvcr.io/nvidia/tritonserver:24.08-py3 \\
    tritonserver --model-repository=/models
curl -s localhost:8000/v2/models/{name}/ready && echo ready
```
(CPU only: drop `--gpus all`. Run it from this folder, or mount this folder's path at /models.)

## Call (pip install "tritonclient[http]" pillow numpy)

```python
import numpy as np, tritonclient.http as httpclient
from PIL import Image

image = np.asarray(Image.open("photo.jpg").convert("RGB"), dtype=np.float32)   # H, W, 3 in 0..255
batch = image.transpose(2, 0, 1)[None].copy()                                     # 1, 3, H, W
client = httpclient.InferenceServerClient("localhost:8000")
inp = httpclient.InferInput("{INPUT_NAME}", list(batch.shape), "FP32")
inp.set_data_from_numpy(batch)
out = client.infer("{name}", [inp], outputs=[httpclient.InferRequestedOutput("{OUTPUT_NAME}")])
result = out.as_numpy("{OUTPUT_NAME}")[0].transpose(1, 2, 0)
Image.fromarray(result.round().astype(np.uint8)).save("stylized.jpg")
```

Dynamic batching groups concurrent requests of the same H x W (up to max_batch_size per batch).
"""


def write_repo(repo: str | os.PathLike, name: str, model_file: str | os.PathLike, fmt: str = "onnx", *,
               max_batch: int = 8, styles: int = 1) -> Path:
    """Lay out REPO/NAME/ around an existing model file (copied in); returns the model's folder."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    folder = Path(repo) / name
    target = folder / "1" / f"model.{fmt}"
    config = config_pbtxt(name, fmt, max_batch=max_batch, styles=styles)
    with atomic_path(target) as tmp:
        shutil.copyfile(model_file, tmp)
    sidecar = Path(str(model_file) + ".json")
    if fmt == "plan" and sidecar.is_file():
        with atomic_path(Path(str(target) + ".json")) as tmp:
            shutil.copyfile(sidecar, tmp)
    for path, text in ((folder / "config.pbtxt", config), (Path(repo) / "README.md", readme(name, fmt))):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    return folder
