"""Shared test set-up.

Without CUDA, Triton kernels run in the interpreter on CPU tensors: TRITON_INTERPRET must be set
before anything imports triton, so it happens here, at conftest import time. With CUDA it stays off (the GPU
tests need Triton's compiler) and the tests marked `interpreter` skip; every other CPU test runs there too, on
the CPU (`TRITON_INTERPRET=1 pytest -m "not gpu"` runs the interpreter tests there as well).
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported ONNX files and other caches go to a per-run folder, not the user's ~/.cache."""
    if "INSTYLE_CACHE" not in os.environ:
        os.environ["INSTYLE_CACHE"] = str(tmp_path_factory.mktemp("instyle-cache"))
    yield

from instyle.interpreter import interpreting  # noqa: E402
from instyle.paths import data_dir  # noqa: E402

DATA = data_dir()


def pytest_collection_modifyitems(config, items):
    """Every test runs on every machine, but: `gpu` tests skip without CUDA, and `interpreter` tests (Triton
    kernels on CPU tensors) skip where the interpreter is off -- on a CUDA machine, where the GPU tests need
    Triton's compiler; a test marked both is a GPU test."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_interpreter = pytest.mark.skip(reason="runs Triton kernels on CPU tensors: needs TRITON_INTERPRET=1, "
                                        "which tests/conftest.py sets only where CUDA is absent")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        elif "interpreter" in item.keywords and "gpu" not in item.keywords and not interpreting():
            item.add_marker(skip_interpreter)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """On a CUDA machine a test not marked `gpu` sees the machine CI sees, one without CUDA: in this process
    torch.cuda.is_available() is False and child processes get no visible device, from its fixtures' set-up to
    their teardown. So "auto" picks the same device, backend and precision as in CI, and a CPU test's
    tolerances mean the same on a GPU workstation."""
    if not HAS_CUDA or "gpu" in item.keywords:
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setattr(torch.cuda, "is_available", lambda: False)
    patch.setenv("CUDA_VISIBLE_DEVICES", "")
    try:
        yield
    finally:
        patch.undo()


@pytest.fixture(scope="session")
def data():
    """The shared data folder (../shared/data or $INSTYLE_DATA); skips when absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA} (set INSTYLE_DATA)")
    return DATA


@pytest.fixture(scope="session")
def model_path(data):
    """The shared pytorch/examples TransformerNet with seeded random weights (legacy IN keys included)."""
    return data / "pretrained" / "random-transformernet.pth"


def need(path):
    """Skip the calling test unless `path` exists."""
    if not path.exists():
        pytest.skip(f"missing data file {path}")
    return path
