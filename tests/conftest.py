"""Shared test set-up.

Without CUDA, Triton kernels run in the interpreter on CPU tensors: TRITON_INTERPRET must be set
before anything imports triton, so it happens here, at conftest import time.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported ONNX files and other caches go to a per-run folder, not the user's ~/.cache."""
    if "INSTYLE_CACHE" not in os.environ:
        os.environ["INSTYLE_CACHE"] = str(tmp_path_factory.mktemp("instyle-cache"))
    yield

from instyle.paths import data_dir  # noqa: E402

DATA = data_dir()


def pytest_collection_modifyitems(config, items):
    """GPU tests skip without CUDA; every other test skips on a CUDA machine: those are CPU tests (the
    Triton kernels run in the interpreter there, which is set only where CUDA is absent). Set
    INSTYLE_CPU_TESTS_ON_CUDA=1 to run them anyway."""
    if torch.cuda.is_available():
        if os.environ.get("INSTYLE_CPU_TESTS_ON_CUDA") == "1":
            return
        skip = pytest.mark.skip(
            reason="CPU test: runs on machines without CUDA (INSTYLE_CPU_TESTS_ON_CUDA=1 forces it)")
        for item in items:
            if "gpu" not in item.keywords:
                item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
