"""API keys -> tenant, and what each key may use.

Keys are stored as sha256 hex digests, never in clear, in two places:

- the config file's ``api_keys`` (name, sha256, policies, experts, requests_per_minute,
  tokens_per_minute);
- Redis, so that operators can add or revoke keys without a restart. One hash per key::

      eg:apikey:<sha256 hex>  name  <tenant name>          (required)
                              policies  "*" or "auto,cheap"  (comma-separated; default "*")
                              experts   "*" or "coder"       (default "*")
                              requests_per_minute  300       (optional)
                              tokens_per_minute    100000    (optional)

  ``expertgate keys add`` writes one; ``DEL eg:apikey:<sha256>`` revokes it. On the hot
  path a key read from Redis is remembered for ``cache_ttl_s`` (so a revocation takes effect
  within that time); an unknown key is remembered as unknown for ``negative_ttl_s`` so a
  flood of bad keys costs Redis one lookup per key per interval. Every ``refresh_s`` a
  background task also reads all of them (SCAN), so the other endpoints, which check keys
  without waiting on Redis, know them too. Config keys win over Redis keys with the same
  digest.

A missing or unknown key is 401, a key that may not use the requested policy or expert is
403. While Redis is down, keys already known keep working and a key never seen is answered
503 (it might be valid; "invalid key" would be a lie). With no keys configured and
``require_auth`` false, requests are anonymous: set ``require_auth: true`` when the keys live
only in Redis. The raw key never appears in a log or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.config import APIKeyConfig, GatewayConfig
from gateway.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable

__all__ = ["KEY_PREFIX", "Authenticator", "Principal", "hash_key", "key_record"]

log = logging.getLogger("expertgate.auth")

KEY_PREFIX = "eg:apikey:"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_record(cfg: APIKeyConfig) -> dict[str, str]:
    """The Redis hash fields for a key (the layout in this module's docstring)."""
    rec = {"name": cfg.name, "policies": ",".join(cfg.policies),
           "experts": ",".join(cfg.experts)}
    if cfg.requests_per_minute is not None:
        rec["requests_per_minute"] = str(cfg.requests_per_minute)
    if cfg.tokens_per_minute is not None:
        rec["tokens_per_minute"] = str(cfg.tokens_per_minute)
    return rec


def _parse_record(digest: str, raw: dict[Any, Any]) -> APIKeyConfig:
    rec = {(k.decode() if isinstance(k, bytes) else str(k)):
           (v.decode() if isinstance(v, bytes) else str(v)) for k, v in raw.items()}
    data: dict[str, Any] = {"name": rec.get("name", ""), "sha256": digest}
    for f in ("policies", "experts"):
        if f in rec:
            data[f] = [x.strip() for x in rec[f].split(",") if x.strip()]
    for f in ("requests_per_minute", "tokens_per_minute"):
        if rec.get(f):
            data[f] = rec[f]
    return APIKeyConfig.model_validate(data)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant name and the key's record (``None`` when anonymous)."""

    tenant: str
    key: APIKeyConfig | None = None


def _digest(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The sha256 of the request's key; 401 when there is none."""
    token = _token(headers)
    if not token:
        raise AuthenticationFailed("missing API key: send 'Authorization: Bearer <key>'")
    return hash_key(token)


def _token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    token = None
    for k, v in headers:
        if k == b"authorization":
            val = v.decode("latin-1").strip()
            if val[:7].lower() == "bearer ":
                token = val[7:].strip()
            break
        if k == b"x-api-key":
            token = v.decode("latin-1").strip()
    return token or None


class Authenticator:
    def __init__(self, config: GatewayConfig, redis: Any = None, *, cache_ttl_s: float = 10.0,
                 negative_ttl_s: float = 1.0, retry_s: float = 1.0,
                 max_cached: int = 10_000, refresh_s: float = 10.0) -> None:
        self.required = config.require_auth or bool(config.api_keys)
        self._keys: dict[str, APIKeyConfig] = {k.sha256: k for k in config.api_keys}
        self._policies = {p.name for p in config.policies}
        self.redis = redis
        self.cache_ttl_s = cache_ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.retry_s = retry_s
        self.max_cached = max_cached
        # digest -> (expires at, record or None for "not a key")
        self._cached: OrderedDict[str, tuple[float, APIKeyConfig | None]] = OrderedDict()
        self._down_until = 0.0
        self.refresh_s = refresh_s
        #: every Redis key as of the last refresh (digest -> record)
        self._redis_keys: dict[str, APIKeyConfig] = {}
        self._task: asyncio.Task[None] | None = None

    # -- background refresh ------------------------------------------------------------
    def start(self) -> None:
        """Refresh the Redis keys now and every ``refresh_s`` (no-op without Redis)."""
        if self.redis is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(),
                                                                name="api-key-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> int:
        """Read every ``eg:apikey:*`` record; revoked keys disappear. Returns the count."""
        names = [k async for k in self.redis.scan_iter(match=KEY_PREFIX + "*", count=1000)]
        pipe = self.redis.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(n)
        raws = await pipe.execute() if names else []
        found: dict[str, APIKeyConfig] = {}
        for n, raw in zip(names, raws, strict=True):
            digest = (n.decode() if isinstance(n, bytes) else str(n))[len(KEY_PREFIX):]
            if not raw:
                continue
            try:
                found[digest] = _parse_record(digest, raw)
            except ValidationError as e:
                log.warning("API keys: Redis record %s%s... is invalid, refusing it: %s",
                            KEY_PREFIX, digest[:8], e.errors()[0].get("msg"))
        self._redis_keys = found
        return len(found)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as e:  # Redis down: keep the last snapshot, try again later
                log.debug("API keys: refresh failed (%s)", type(e).__name__)
            await asyncio.sleep(self.refresh_s)

    # -- lookup ------------------------------------------------------------------------
    def _config_key(self, digest: str) -> APIKeyConfig | None:
        for stored, cfg in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return cfg
        return None

    def _remember(self, digest: str, rec: APIKeyConfig | None, ttl: float) -> None:
        self._cached[digest] = (time.monotonic() + ttl, rec)
        self._cached.move_to_end(digest)
        while len(self._cached) > self.max_cached:
            self._cached.popitem(last=False)

    async def _redis_key(self, digest: str) -> APIKeyConfig | None:
        now = time.monotonic()
        hit = self._cached.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        known = hit[1] if hit is not None and hit[1] is not None else self._redis_keys.get(digest)
        if now < self._down_until:
            if known is not None:
                return known  # known key, store down: keep serving it
            raise ServiceUnavailable("cannot verify the API key: the key store is unavailable",
                                     code="key_store_unavailable",
                                     headers={"retry-after": "1"})
        try:
            raw = await self.redis.hgetall(KEY_PREFIX + digest)
        except Exception as e:  # redis raises many types; any of them means "store down"
            log.warning("API keys: Redis unavailable (%s); known keys keep working",
                        type(e).__name__)
            self._down_until = now + self.retry_s
            if known is not None:
                return known
            raise ServiceUnavailable("cannot verify the API key: the key store is unavailable",
                                     code="key_store_unavailable",
                                     headers={"retry-after": "1"}) from None
        if not raw:
            self._remember(digest, None, self.negative_ttl_s)
            return None
        try:
            rec = _parse_record(digest, raw)
        except ValidationError as e:
            # a broken record is an operator's mistake: say which (by digest prefix), refuse it
            log.warning("API keys: Redis record %s%s... is invalid, refusing it: %s",
                        KEY_PREFIX, digest[:8], e.errors()[0].get("msg"))
            self._remember(digest, None, self.negative_ttl_s)
            return None
        self._remember(digest, rec, self.cache_ttl_s)
        return rec

    # -- checks ------------------------------------------------------------------------
    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> APIKeyConfig | None:
        """Config keys and Redis keys already seen (for the non-hot endpoints)."""
        if not self.required:
            return None
        digest = _digest(headers)
        cfg = self._config_key(digest)
        if cfg is None:
            hit = self._cached.get(digest)
            fresh = hit is not None and hit[0] > time.monotonic()
            cfg = hit[1] if hit is not None and fresh else self._redis_keys.get(digest)
        if cfg is None:
            raise AuthenticationFailed("invalid API key")
        return cfg

    async def identify_async(self, headers: Iterable[tuple[bytes, bytes]]
                             ) -> APIKeyConfig | None:
        """Config keys, then Redis keys (looked up and cached)."""
        if not self.required:
            return None
        digest = _digest(headers)
        cfg = self._config_key(digest)
        if cfg is None and self.redis is not None:
            cfg = await self._redis_key(digest)
        if cfg is None:
            raise AuthenticationFailed("invalid API key")
        return cfg

    def _authorize(self, key: APIKeyConfig, model: str | None) -> None:
        if model is None:
            return
        allowed = key.policies if model in self._policies else key.experts
        if "*" not in allowed and model not in allowed:
            kind = "policy" if model in self._policies else "model"
            raise PermissionDenied(f"this API key may not use the {kind} '{model}'",
                                   param="model")

    def check(self, headers: Iterable[tuple[bytes, bytes]], model: str | None) -> str:
        """Authenticate and authorise ``model``; returns the tenant name."""
        key = self.identify(headers)
        if key is None:
            return "anonymous"
        self._authorize(key, model)
        return key.name

    async def resolve(self, headers: Iterable[tuple[bytes, bytes]], model: str | None
                      ) -> Principal:
        """The hot path's check: like :meth:`check`, with Redis keys, returning the key."""
        key = await self.identify_async(headers)
        if key is None:
            return Principal("anonymous")
        self._authorize(key, model)
        return Principal(key.name, key)
