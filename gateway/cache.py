"""Decision cache: key = policy + policy version + hash of the normalised text.

``MemoryDecisionCache`` is the embedded default (an in-process LRU with TTL);
``RedisDecisionCache`` shares decisions among gateway replicas. A policy version change
(new config or new artifact) changes every key, so stale decisions are never served.

The Redis cache never fails a request: on a Redis error it reports itself unavailable (the
request proceeds uncached, the response and the log say so) and skips Redis for
``retry_s`` so a dead Redis costs one timeout per interval, not one per request; it comes
back by itself when Redis does. The process log hears of an outage once when it starts, then
at most once per ``remind_s`` (how long, how many lookups went uncached), and once when it
ends; the responses, the routing log and /metrics say it for every request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

import orjson

from gateway.redact import redact

__all__ = [
    "CacheUnavailable",
    "DecisionCache",
    "MemoryDecisionCache",
    "RedisDecisionCache",
    "decision_key",
    "redis_error",
    "text_hash",
]

log = logging.getLogger("expertgate.cache")

#: per-entry memory beyond the key's and the decision's bytes (measured with tracemalloc on
#: CPython 3.11: the OrderedDict slot, the (expiry, bytes) tuple, the float, object headers)
ENTRY_OVERHEAD = 270


class CacheUnavailable(Exception):
    """The cache backend could not be reached; the caller proceeds without it."""


def text_hash(text: str) -> str:
    """blake2b-128 of the routing text: the decision-cache key's text part and the routing
    log's ``text_hash`` (computed once per request)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def decision_key(policy: str, version: str, hashed_text: str) -> str:
    """The cache key of a decision: policy, policy version and :func:`text_hash`."""
    return f"eg:dc:{policy}:{version}:{hashed_text}"


class DecisionCache(Protocol):
    name: str

    async def get(self, key: str) -> dict[str, Any] | None: ...

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...

    async def close(self) -> None: ...


class MemoryDecisionCache:
    """In-process LRU with per-entry expiry, bounded by entries and by bytes.

    The byte bound counts each entry's key, its serialised decision and a fixed per-entry
    overhead (:data:`ENTRY_OVERHEAD`, measured: the OrderedDict slot, the tuple, the float and
    the objects' headers), so memory stays under ``max_bytes`` whatever the decisions hold.
    Decisions are stored as right-sized copies of orjson's output: orjson hands back a bytes
    object that keeps a 4 KiB buffer, which made each entry cost ~4.3 KiB for ~0.4 KiB of
    JSON (issue 19: +4.5 MiB per 1,000 prompts).
    """

    name = "memory"

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._d: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    @staticmethod
    def _size(key: str, raw: bytes) -> int:
        return len(key) + len(raw) + ENTRY_OVERHEAD

    def _drop(self, key: str) -> None:
        item = self._d.pop(key, None)
        if item is not None:
            self.bytes -= self._size(key, item[1])

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._d.get(key)
        if item is None:
            return None
        exp, raw = item
        if exp < time.monotonic():
            self._drop(key)
            return None
        self._d.move_to_end(key)
        out: dict[str, Any] = orjson.loads(raw)
        return out

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        raw = bytes(memoryview(orjson.dumps(value)))
        size = self._size(key, raw)
        if size > self.max_bytes:
            return
        self._drop(key)
        self._d[key] = (time.monotonic() + ttl_s, raw)
        self.bytes += size
        while len(self._d) > self.max_entries or self.bytes > self.max_bytes:
            old, (_, old_raw) = self._d.popitem(last=False)
            self.bytes -= self._size(old, old_raw)

    def __len__(self) -> int:
        return len(self._d)

    async def close(self) -> None:
        self._d.clear()
        self.bytes = 0


def redis_error(e: BaseException) -> str:
    """``Type: message`` of a Redis failure, credentials masked: the message tells a Redis
    briefly away (``Connection refused``) from one refusing the gateway (``OOM command not
    allowed``, ``DB index is out of range``, a wrong password), which waiting does not heal."""
    msg = redact(str(e))[:200]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


class RedisDecisionCache:
    name = "redis"

    def __init__(self, client: Any, retry_s: float = 1.0, remind_s: float = 60.0) -> None:
        self._r = client
        self.retry_s = retry_s
        #: while Redis stays down, the warning is repeated at most this often
        self.remind_s = remind_s
        self._down_until = 0.0
        #: when the outage began (None while Redis answers), the last warning about it, and
        #: the lookups that went uncached since it began
        self._down_since: float | None = None
        self._warned_at = 0.0
        self.skipped = 0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, e: Exception, lookup: bool) -> CacheUnavailable:
        now = time.monotonic()
        self.skipped += int(lookup)
        if self._down_since is None:
            self._down_since = self._warned_at = now
            log.warning("decision cache: Redis unavailable (%s); requests go uncached, "
                        "retrying every %.1fs", redis_error(e), self.retry_s)
        elif now - self._warned_at >= self.remind_s:
            self._warned_at = now
            log.warning("decision cache: Redis still unavailable (%s) after %.0fs; "
                        "%d lookup(s) skipped", redis_error(e), now - self._down_since,
                        self.skipped)
        self._down_until = now + self.retry_s
        return CacheUnavailable(str(e))

    def _answered(self) -> None:
        # Redis answered: it is up, whatever a lookup in flight beside this one met (a
        # burst's connect timeout); skipping it on until retry_s ran out sent requests
        # uncached ('x-expertgate-degraded: cache') after the log said it had recovered
        self._down_until = 0.0
        if self._down_since is not None:
            log.info("decision cache: Redis recovered after %.1fs (%d lookup(s) skipped)",
                     time.monotonic() - self._down_since, self.skipped)
            self._down_since = None
            self.skipped = 0

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.available:
            self.skipped += 1
            raise CacheUnavailable("redis marked down")
        try:
            raw = await self._r.get(key)
        except Exception as e:  # redis raises many types (ConnectionError, TimeoutError, ...)
            raise self._failed(e, lookup=True) from e
        self._answered()
        if raw is None:
            return None
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out = {}  # not JSON: the pipeline finds it unusable, decides afresh, overwrites
        return out if isinstance(out, dict) else {}

    async def set(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        if not self.available:
            raise CacheUnavailable("redis marked down")
        try:
            await self._r.set(key, orjson.dumps(value), px=max(int(ttl_s * 1000), 1))
        except Exception as e:
            raise self._failed(e, lookup=False) from e
        self._answered()

    async def close(self) -> None:
        return None
