"""The one line a command prints when the Redis it was given fails it."""

from __future__ import annotations

__all__ = ["redis_failure"]


def redis_failure(command: str, url: str, error: BaseException, consequence: str) -> str:
    """``expertgate COMMAND: Redis URL failed (Error: message); CONSEQUENCE``, the URL's and
    the message's credentials masked (:func:`gateway.redact.redact`): which Redis, why, and
    what was not done, in place of a bare ``error: ConnectionError``."""
    from gateway.redact import redact

    msg = " ".join(str(error).split())
    return (f"expertgate {command}: Redis {redact(url)} failed ({type(error).__name__}"
            f"{': ' + redact(msg) if msg else ''}); {consequence}")
