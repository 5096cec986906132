"""Exception types shared across the package (a leaf module: it imports nothing of the project).

Library code raises these; only the CLI (instyle/cli.py) turns them into one-line messages and exit codes.
"""
from __future__ import annotations

import importlib

# optional package (import name) -> what to install; anything else is installed under its import name
INSTALL = {
    "onnx": "pip install 'instyle[onnx]'",
    "onnxruntime": "pip install 'instyle[onnx]'",
    "onnxscript": "pip install 'instyle[onnx]'",
    "tensorrt": "pip install 'instyle[tensorrt]'",
    "matplotlib": "pip install 'instyle[train]'",
    "png": "pip install pypng",
    "tritonclient": "pip install 'tritonclient[grpc]'",
    "PIL": "pip install pillow",
    "av": "pip install av",
    "ray": "pip install 'instyle[ray]'",
    "openvino": "pip install openvino",
    "fastapi": "pip install 'instyle[serve]'",
    "starlette": "pip install 'instyle[serve]'",
    "uvicorn": "pip install 'instyle[serve]'",
    "python_multipart": "pip install 'instyle[serve]'",
    "prometheus_client": "pip install 'instyle[serve]'",
}


class UsageError(Exception):
    """A mistake in the command line that argparse cannot see (exit code 2)."""


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file (and the key) and the cause."""


class ImageError(ValueError):
    """An image that cannot be read or written; the message is `PATH: cause`."""


class MissingDependency(ImportError):
    """An optional package that a command needs is not installed (exit code 2); the message says how to install it."""

    def __init__(self, package: str, purpose: str = ""):
        self.package = package
        self.install = install_command(package)
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{what}: {self.install}", name=package)


def install_command(package: str) -> str:
    """The command that installs the optional package imported as `package` (dotted names: the top level)."""
    top = package.split(".")[0]
    return INSTALL.get(top, f"pip install {top}")


def require(package: str, purpose: str = "") -> None:
    """Import `package` now, raising MissingDependency (one line with the install command) when it is absent."""
    try:
        importlib.import_module(package)
    except ImportError as e:
        # e.name differs from `package` when the package is there but one of its own dependencies is not
        raise MissingDependency((e.name or package).split(".")[0], purpose) from None


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says why (and, where a package is missing, how to install it)."""
