"""Whether Triton kernels run in Triton's CPU interpreter: the one reader of TRITON_INTERPRET.

Triton reads the variable when a kernel is defined, that is when instyle.kernels is imported, so whoever sets it
(tests/conftest.py, the campaign's dry run, bench/kernels --smoke) does so before anything imports triton; the
kernels take their tuning from it at import, the backends check it before they build.
"""
from __future__ import annotations

import os


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: kernels run on CPU tensors, slowly (tests and dry runs)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
