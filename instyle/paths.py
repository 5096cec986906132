"""Where instyle finds shared data and shipped weights."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def data_dir() -> Path:
    """The shared data folder: $INSTYLE_DATA, else ../shared/data beside the project root."""
    env = os.environ.get("INSTYLE_DATA")
    if env:
        return Path(env)
    return PROJECT_ROOT.parent / "shared" / "data"
