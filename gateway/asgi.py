"""Factory for multi-worker serving: ``uvicorn gateway.asgi:app --factory`` (settings from env)."""

from __future__ import annotations

import logging
from typing import Any

from gateway.app import create_app
from gateway.config import ConfigError, Settings
from gateway.redact import configure_logging

#: uvicorn's exit status for a worker that failed before serving (``STARTUP_FAILURE``)
_STARTUP_FAILURE = 3


def app() -> Any:
    settings = Settings()
    configure_logging(settings.log_level)  # a worker process: its own log, redacted too
    try:
        return create_app(settings)
    except ConfigError as e:
        # one line, as the lifespan's start-up failures, not a traceback from uvicorn's
        # worker (the file changed between the supervisor's check and this worker's start)
        logging.getLogger("expertgate").error("start-up failed: %s", e)
        raise SystemExit(_STARTUP_FAILURE) from None
