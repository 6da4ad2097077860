"""Loaders for the public data sets in shared/data and for generic tables.

``data_dir()`` finds shared/data: ``$EXPERTGATE_DATA_DIR`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir() -> Path:
    env = os.environ.get("EXPERTGATE_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"
