"""Factory for multi-worker serving: ``uvicorn gateway.asgi:app --factory`` (settings from env)."""

from __future__ import annotations

from typing import Any

from gateway.app import create_app
from gateway.config import Settings
from gateway.redact import configure_logging


def app() -> Any:
    settings = Settings()
    configure_logging(settings.log_level)  # a worker process: its own log, redacted too
    return create_app(settings)
