"""Exception types shared across subpackages (a leaf module: imports nothing of the project, nor torch)."""
from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says why (and, where a package is missing, how to install it)."""
