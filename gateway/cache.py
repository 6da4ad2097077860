"""Decision cache: key = policy + policy version + hash of the normalised text.

``MemoryDecisionCache`` is the embedded default (an in-process LRU with TTL);
``RedisDecisionCache`` shares decisions among gateway replicas. A policy version change
(new config or new artifact) changes every key, so stale decisions are never served.

The Redis cache never fails a request: on a Redis error it reports itself unavailable (the
request proceeds uncached, the response and the log say so) and skips Redis for
``retry_s`` so a dead Redis costs one timeout per interval, not one per request; it comes
back by itself when Redis does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

__all__ = [
    "CacheUnavailable",
    "DecisionCache",
    "MemoryDecisionCache",
    "RedisDecisionCache",
    "decision_key",
]

log = logging.getLogger("expertgate.cache")


class CacheUnavailable(Exception):
    """The cache backend could not be reached; the caller proceeds without it."""


def decision_key(policy: str, version: str, text: str) -> str:
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"eg:dc:{policy}:{version}:{h}"


class DecisionCache(Protocol):
    name: str

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryDecisionCache:
    """In-process LRU with per-entry expiry. Bounded, so memory cannot grow without limit."""

    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._d: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._d.get(key)
        if item is None:
            return None
        exp, raw = item
        if exp < time.monotonic():
            self._d.pop(key, None)
            return None
        self._d.move_to_end(key)
        out: dict[str, Any] = orjson.loads(raw)
        return out

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._d[key] = (time.monotonic() + ttl_s, orjson.dumps(value))
        self._d.move_to_end(key)
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)

    async def close(self) -> None:
        self._d.clear()


class RedisDecisionCache:
    name = "redis"

    def __init__(self, client: Any, retry_s: float = 1.0) -> None:
        self._r = client
        self.retry_s = retry_s
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: Exception) -> CacheUnavailable:
        if self.available:
            log.warning("decision cache: Redis unavailable (%s); skipping it for %.1fs",
                        type(e).__name__, self.retry_s)
        self._down_until = time.monotonic() + self.retry_s
        return CacheUnavailable(str(e))

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.available:
            raise CacheUnavailable("redis marked down")
        try:
            raw = await self._r.get(key)
        except Exception as e:  # redis raises many types (ConnectionError, TimeoutError, ...)
            raise self._failed(e) from e
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        if not self.available:
            raise CacheUnavailable("redis marked down")
        try:
            await self._r.set(key, orjson.dumps(value), px=max(int(ttl_s * 1000), 1))
        except Exception as e:
            raise self._failed(e) from e

    async def close(self) -> None:
        return None
