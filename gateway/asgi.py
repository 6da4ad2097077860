"""Factory for multi-worker serving: ``uvicorn gateway.asgi:app --factory`` (settings from env)."""

from __future__ import annotations

from typing import Any

from gateway.app import create_app
from gateway.config import Settings


def app() -> Any:
    return create_app(Settings())
