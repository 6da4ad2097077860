"""Loaders for the public data sets and for generic tables.

``data_dir()`` is where every command reads the registered data sets and where
``expertgate data fetch`` writes them: ``$EXPERTGATE_DATA_DIR``; else ``shared/data`` beside
the checkout (``<repo>/../shared/data``) when it exists; else ``data/`` in the checkout
(git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir() -> Path:
    env = os.environ.get("EXPERTGATE_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data"
    return shared if shared.is_dir() else repo / "data"
