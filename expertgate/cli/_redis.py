"""The one line a command prints when the Redis it was given fails it, or cannot be read."""

from __future__ import annotations

import sys

__all__ = ["bad_redis_url", "redis_failure"]


def bad_redis_url(command: str, url: str | None) -> bool:
    """Whether ``--redis-url`` ``url`` is one redis-py cannot read (``http://...``, no
    scheme), after ``expertgate COMMAND: --redis-url: why`` on stderr. It ended in the
    command's crash path (``error: ValueError``, exit 1), ``policy revert`` after it had
    rewritten the file. EXPERTGATE_REDIS_URL is checked by ``Settings`` itself."""
    from gateway.config import redis_url_problem

    why = redis_url_problem(url) if url else None
    if why is not None:
        print(f"expertgate {command}: --redis-url: {why}", file=sys.stderr)
    return why is not None


def redis_failure(command: str, url: str, error: BaseException, consequence: str) -> str:
    """``expertgate COMMAND: Redis URL failed (Error: message); CONSEQUENCE``, the URL's and
    the message's credentials masked (:func:`gateway.redact.redact`): which Redis, why, and
    what was not done, in place of a bare ``error: ConnectionError``."""
    from gateway.redact import redact

    msg = " ".join(str(error).split())
    return (f"expertgate {command}: Redis {redact(url)} failed ({type(error).__name__}"
            f"{': ' + redact(msg) if msg else ''}); {consequence}")
