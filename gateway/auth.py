"""API keys -> tenant, and what each key may use.

Keys are stored as sha256 hex digests, never in clear, in two places:

- the config file's ``api_keys`` (name, sha256, policies, experts, requests_per_minute,
  tokens_per_minute);
- Redis, so that operators can add or revoke keys without a restart. One hash per key::

      eg:apikey:<sha256 hex>  name  <tenant name>          (required)
                              policies  "*" or "auto,cheap"  (comma-separated; default "*")
                              experts   "*" or "coder"       (absent: the policies' experts)
                              admin     "1"                  (optional: an admin key)
                              requests_per_minute  300       (optional)
                              tokens_per_minute    100000    (optional)

  ``expertgate keys add`` writes one; ``DEL eg:apikey:<sha256>`` revokes it. On the hot
  path a key read from Redis is remembered for ``cache_ttl_s`` (so a revocation takes effect
  within that time); an unknown key is remembered as unknown for ``negative_ttl_s`` so a
  flood of bad keys costs Redis one lookup per key per interval. Every ``refresh_s`` a
  background task also reads all of them (SCAN), so keys stay known while Redis is down.
  Every endpoint looks keys up the same way (:meth:`Authenticator.resolve`). Config keys win
  over Redis keys with the same digest.

A missing or unknown key is 401, a key that may not use the requested policy or expert is
403 (a model that is neither is left to the request path's 404, whatever the key). A key's
expert allow-list, when not written, is the experts reachable from its allowed policies
(:func:`reachable_experts`). While Redis is down, keys already known keep working and a key
never seen is answered 503 (it might be valid; "invalid key" would be a lie). With no keys
configured and ``require_auth`` false, requests are anonymous: set ``require_auth: true``
when the keys live only in Redis. The raw key never appears in a log or an error message. A
reload re-reads the config keys in place (:meth:`Authenticator.configure`): the Redis keys
already known stay known, so no request sees a valid key refused.

Roles: ``/admin/*`` (and the dashboard's admin views) need an admin key
(:func:`require_admin`); tenant keys get 403. With no keys configured at all, admin endpoints
answer only clients on the loopback interface, and only requests a browser page on another
site cannot have made (:meth:`Authenticator.local_request`): the ``Host`` must name this
machine (a loopback name or address, the host name, the address listened on), so a DNS
rebinding page (``attacker.example`` resolved to 127.0.0.1) is refused, and an ``Origin``
(or ``Sec-Fetch-Site: cross-site``) from another site is refused, so a cross-site form or
``fetch`` cannot reload the configuration. ``/metrics``, ``/docs``, ``/openapi.json`` and
the checks of ``/readyz`` need what their setting says (:meth:`Authenticator.allowed`).

Request ids (:class:`RequestIds`) are 128 random bits plus a 64-bit keyed tag of (those bits,
tenant): unguessable, and :meth:`RequestIds.owned` tells from the id alone whether a tenant
made the request, on any gateway sharing the secret (kept in Redis, or beside the JSONL log).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from pydantic import ValidationError

from gateway.aio import stop_task
from gateway.config import APIKeyConfig, GatewayConfig
from gateway.errors import (
    AuthenticationFailed,
    ModelNotPermitted,
    PermissionDenied,
    ServiceUnavailable,
    UnknownModel,
)

__all__ = ["KEY_CACHE_S", "KEY_HEADERS", "KEY_PREFIX", "Authenticator", "Principal", "RequestIds",
           "bearer_token", "hash_key", "key_record", "reachable_experts", "request_token",
           "require_admin", "require_key"]

log = logging.getLogger("expertgate.auth")

KEY_PREFIX = "eg:apikey:"
#: how long a gateway remembers a Redis key's record it has read, and between two reads of
#: all of them: the longest a revocation (or a changed record) takes to reach it
#: (``expertgate keys revoke`` and ``add`` say so)
KEY_CACHE_S = 10.0
REQUEST_ID_SECRET_KEY = "eg:request-id-secret"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _header_digest(token: str) -> str:
    """The digest of a key read from a header, which every endpoint decodes as latin-1: of
    the bytes the client sent. ``hash_key`` of that text re-encoded a UTF-8 key's bytes
    (``sk-clé``: ``c3 a9`` read as two characters) into other bytes, so a key with a
    character outside ASCII, stored by ``keys hash``/``keys add`` (UTF-8), never matched."""
    try:
        raw = token.encode("latin-1")
    except UnicodeEncodeError:  # not from a header: the text as hash_key reads it
        raw = token.encode()
    return hashlib.sha256(raw).hexdigest()


def key_record(cfg: APIKeyConfig) -> dict[str, str]:
    """The Redis hash fields for a key (the layout in this module's docstring)."""
    rec = {"name": cfg.name, "policies": ",".join(cfg.policies)}
    if cfg.experts is not None:
        rec["experts"] = ",".join(cfg.experts)
    if cfg.admin:
        rec["admin"] = "1"
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
    if "admin" in rec:
        data["admin"] = rec["admin"].strip().lower() in ("1", "true", "yes")
    return APIKeyConfig.model_validate(data)


def reachable_experts(policies: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """policy name -> every expert a request for it may reach: the router's targets, the
    semantic routes' experts, the fallback chain, the skills aggregator, the reject
    fallback and a shadow/canary candidate's experts (a learned router's table models as
    the experts the policy's ``models`` maps them to). ``policies`` maps names to
    :class:`gateway.pipeline.PolicyRuntime`."""
    out: dict[str, frozenset[str]] = {}
    for name, rt in policies.items():
        pol = rt.config
        # a learned router names its table's models: the policy's ``models`` map says which
        # expert serves each (the decision's targets are renamed so before anything is served)
        served = pol.models
        table = list(getattr(rt.router, "experts_", ()) or ())
        agg = getattr(rt.router, "aggregator_", None) or getattr(rt.router, "aggregator", None)
        if isinstance(agg, str):
            table.append(agg)
        cand = getattr(rt, "candidate", None)  # a canary serves its router's experts too
        if cand is not None:
            table += getattr(cand.runtime.router, "experts_", ()) or ()
        names = {served.get(m, m) for m in table}
        names.update(r.expert for r in pol.routes)
        names.update(pol.fallback)
        if pol.on_reject.expert:
            names.add(pol.on_reject.expert)
        out[name] = frozenset(names)
    return out


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant name and the key's record (``None`` when anonymous)."""

    tenant: str
    key: APIKeyConfig | None = None

    @property
    def admin(self) -> bool:
        return self.key is not None and self.key.admin


def bearer_token(value: bytes) -> str | None:
    """The key in an ``Authorization`` header value (``Bearer <key>``), else None."""
    val = value.decode("latin-1").strip()
    return val[7:].strip() or None if val[:7].lower() == "bearer " else None


#: the headers that carry a key by themselves: ``x-api-key`` (Anthropic-style clients) and
#: ``api-key`` (the Azure OpenAI SDK, as LiteLLM's proxy accepts it)
KEY_HEADERS = frozenset({b"x-api-key", b"api-key"})


def request_token(authorization: bytes | None, api_key: str | None) -> str | None:
    """The request's key from its first ``Authorization`` header and its ``x-api-key`` or
    ``api-key`` (:data:`KEY_HEADERS`): the bearer token if the former is one, else the
    latter (a ``Basic`` header, say from a proxy, never hides an ``x-api-key``). Every
    endpoint picks the key this way."""
    return (bearer_token(authorization) if authorization is not None else None) or api_key


def _token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The request's key (:func:`request_token`), wherever its headers come in the list."""
    auth: bytes | None = None
    api_key: str | None = None
    for k, v in headers:
        if k == b"authorization":
            if auth is None:
                auth = v
        elif k in KEY_HEADERS and api_key is None:
            api_key = v.decode("latin-1").strip() or None
    return request_token(auth, api_key)


def _host_name(value: str) -> str:
    """The host of a ``Host`` header or of an origin's authority, without port or brackets,
    lower case (``[::1]:8080`` -> ``::1``)."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1:].split("]", 1)[0]
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v.rstrip(".")


@functools.lru_cache(maxsize=8)
def _allowed_names(allowed: str) -> frozenset[str]:
    """The host names of an ``EXPERTGATE_ALLOWED_HOSTS`` value (comma-separated), parsed
    once per value rather than at every request."""
    return frozenset(_host_name(h) for h in allowed.split(",") if h.strip())


def _local_name(host: str, extra: frozenset[str]) -> bool:
    """Whether ``host`` (from :func:`_host_name`) names this machine: ``localhost`` (and
    ``*.localhost``, which browsers resolve to loopback themselves), a loopback address, an
    unspecified one, or one of ``extra`` (the host name, the configured listen address, the
    address the request came in on)."""
    if host in extra or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


class Authenticator:
    def __init__(self, config: GatewayConfig, redis: Any = None, *,
                 cache_ttl_s: float = KEY_CACHE_S, negative_ttl_s: float = 1.0,
                 retry_s: float = 1.0, max_cached: int = 10_000,
                 refresh_s: float = KEY_CACHE_S) -> None:
        self.required = False
        self._keys: dict[str, APIKeyConfig] = {}
        self._policies: frozenset[str] = frozenset()
        self._experts: frozenset[str] = frozenset()
        #: besides loopback names and addresses, the ``Host`` names that mean this machine
        #: for the keyless loopback admin (:meth:`local_request`); the app adds its
        #: configured listen address
        self.local_hosts: frozenset[str] = _machine_names()
        self._reach: dict[str, frozenset[str]] = {}
        self._reach_memo: dict[tuple[str, ...], frozenset[str]] = {}
        self.configure(config)
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

    def configure(self, config: GatewayConfig,
                  reach: dict[str, frozenset[str]] | None = None) -> None:
        """Take the config's keys and policies (at start and on reload). The Redis keys and
        lookups already known are kept: a reload never makes a valid key fail."""
        self.required = config.require_auth or bool(config.api_keys)
        self._keys = {k.sha256: k for k in config.api_keys}
        self._policies = frozenset(p.name for p in config.policies)
        self._experts = frozenset(e.name for e in config.experts)
        if reach is not None:
            self.set_reach(reach)

    def set_reach(self, reach: dict[str, frozenset[str]]) -> None:
        """The experts each policy may reach (:func:`reachable_experts` of the PolicySet)."""
        self._reach = reach
        self._reach_memo = {}

    def unchecked(self, config: GatewayConfig) -> list[str]:
        """One line when ``config`` checks no key (no ``api_keys``, ``require_auth`` false)
        while the Redis keys last read hold some (``expertgate keys add``): a reload to such
        a file served every request without a key, and said nothing."""
        if config.require_auth or config.api_keys or not self._redis_keys:
            return []
        return [f"Redis holds {len(self._redis_keys)} API key(s) (expertgate keys add), but "
                f"they are not checked: {config.source} has no api_keys and require_auth is "
                "false, so every request is served without a key. Set require_auth: true "
                "to require them"]

    # -- background refresh ------------------------------------------------------------
    def start(self) -> None:
        """Refresh the Redis keys now and every ``refresh_s`` (no-op without Redis)."""
        if self.redis is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop(),
                                                                name="api-key-refresh")

    async def close(self) -> None:
        await stop_task(self._task)
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
        # the snapshot is newer than any remembered lookup that contradicts it
        for digest, (_, rec) in list(self._cached.items()):
            if (rec is None) == (digest in found):
                del self._cached[digest]
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
        self._down_until = 0.0  # the store answered, whatever a lookup beside this one met
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
    async def identify(self, headers: Iterable[tuple[bytes, bytes]]
                       ) -> APIKeyConfig | None:
        """Config keys, then Redis keys (looked up and cached)."""
        return await self.identify_token(_token(headers))

    async def identify_token(self, token: str | None) -> APIKeyConfig | None:
        """The key record of ``token`` (from ``Authorization: Bearer`` or ``x-api-key``):
        config keys, then Redis keys; None when no keys are configured; 401 otherwise."""
        if not self.required:
            return None
        if not token:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>' (or 'api-key: <key>')")
        digest = _header_digest(token)
        cfg = self._config_key(digest)
        if cfg is None and self.redis is not None:
            cfg = await self._redis_key(digest)
        if cfg is None:
            raise AuthenticationFailed("invalid API key")
        return cfg

    def _allowed_experts(self, key: APIKeyConfig) -> frozenset[str] | tuple[str, ...]:
        if key.experts is not None:
            return tuple(key.experts)
        pols = tuple(key.policies)
        got = self._reach_memo.get(pols)
        if got is None:
            names = (self._reach.keys() if "*" in pols
                     else [p for p in pols if p in self._reach])
            got = frozenset().union(*(self._reach[p] for p in names))
            self._reach_memo[pols] = got
        return got

    def may_use(self, key: APIKeyConfig | None, model: str) -> bool:
        """Whether ``key`` (None: anonymous, no keys configured) may use ``model``, a
        policy or an expert of the configuration (what ``GET /v1/models`` lists to it)."""
        if key is None:
            return True
        allowed: Any = key.policies if model in self._policies else self._allowed_experts(key)
        return "*" in allowed or model in allowed

    def authorize(self, key: APIKeyConfig, model: str | None) -> None:
        """404 ``model_not_found`` unless ``model`` is a policy or an expert that ``key`` may
        use. A model outside the key's allow-lists gets the very answer of one that does not
        exist (:class:`~gateway.errors.ModelNotPermitted`), at the same point of the request
        (before the token budget is charged), so the key cannot tell the two apart."""
        if model is None:
            return
        if model not in self._policies and model not in self._experts:
            raise UnknownModel.named(model)
        if not self.may_use(key, model):
            raise ModelNotPermitted.named(model)

    async def resolve(self, headers: Iterable[tuple[bytes, bytes]], model: str | None
                      ) -> Principal:
        """Authenticate (config keys, then Redis) and authorise ``model``."""
        key = await self.identify(headers)
        if key is None:
            return Principal("anonymous")
        self.authorize(key, model)
        return Principal(key.name, key)

    async def allowed(self, scope: Mapping[str, Any], level: str) -> bool:
        """Whether the caller meets ``level`` ("open", "key", "admin"); raises the 401/503 of
        a bad key only where a key is needed."""
        if level == "open":
            return True
        if level == "key":
            await self.resolve(scope.get("headers", ()), None)
            return True
        return (await self.admin(scope)) is not None

    async def admin(self, scope: Mapping[str, Any]) -> Principal | None:
        """The admin principal, or ``None`` for a valid non-admin key; 401 for a bad key.
        With no keys configured only a loopback client counts as admin, and only for a
        request no other site's page made (:meth:`local_request`: 403 otherwise)."""
        if not self.required:
            if not _loopback(scope):
                return None
            self.local_request(scope)
            return Principal("local-admin")
        p = await self.resolve(scope.get("headers", ()), None)
        return p if p.admin else None

    def host_named(self, scope: Mapping[str, Any], allowed: str = "") -> bool:
        """Whether the request's ``Host`` (if any) names this machine (as
        :meth:`local_request` takes it) or one of ``allowed`` (comma-separated; ``*``: any)."""
        names = _allowed_names(allowed)
        if "*" in names:
            return True
        # (the address the request came in on is loopback, where this check applies)
        extra = self.local_hosts | names
        for k, v in scope.get("headers", ()):
            if k == b"host":
                return _local_name(_host_name(v.decode("latin-1")), extra)
        return True  # HTTP/1.0 without a Host: no browser page sends that

    def local_request(self, scope: Mapping[str, Any]) -> None:
        """403 unless a loopback client's request is one this machine's own user made, not a
        browser page of another site: trusting the peer address alone lets a DNS-rebinding
        page (its name resolved to 127.0.0.1; the browser sends ``Host: attacker.example``)
        read the admin views, and any page POST a "simple" cross-site request.

        The ``Host`` must name this machine (:func:`_local_name`; the address the request
        came in on counts); an ``Origin``, when sent, must name it too (``null``, a sandboxed
        or ``file:`` page, does not); ``Sec-Fetch-Site: cross-site`` is refused. Tools
        (curl, scripts) send a local ``Host`` and no ``Origin``."""
        extra = self.local_hosts
        server = scope.get("server")
        if server and server[0]:
            extra = extra | {_host_name(str(server[0]))}
        host = origin = site = None
        for k, v in scope.get("headers", ()):
            if k == b"host":
                host = v.decode("latin-1")
            elif k == b"origin":
                origin = v.decode("latin-1")
            elif k == b"sec-fetch-site":
                site = v.decode("latin-1").strip().lower()
        if host is not None and not _local_name(_host_name(host), extra):
            raise PermissionDenied(
                f"the Host header {_host_name(host)[:64]!r} does not name this machine: with no "
                "API keys configured, admin endpoints answer only requests to a loopback "
                "name or address (a DNS-rebinding guard); configure an admin key "
                "(api_keys: admin: true) to reach them under another name",
                code="untrusted_host")
        cross = site == "cross-site"
        if origin is not None:
            o = origin.strip().lower()
            authority = o.split("://", 1)[1] if "://" in o else ""
            cross = cross or not authority or not _local_name(
                _host_name(authority.split("/", 1)[0]), extra)
        if cross:
            raise PermissionDenied(
                "a cross-site request (its Origin is another site's page): with no API keys "
                "configured, admin endpoints refuse requests a browser page of another site "
                "made; configure an admin key (api_keys: admin: true) for remote tools",
                code="cross_site_request")


def _machine_names() -> frozenset[str]:
    """This machine's host names (lower case): ``Host`` values that name it."""
    names = set()
    with contextlib.suppress(OSError):
        name = socket.gethostname().lower()
        if name:
            names.update({name, name.split(".", 1)[0]})
    return frozenset(names)


def _loopback(scope: Mapping[str, Any]) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


async def require_key(request: Request) -> Principal:
    """FastAPI dependency: any valid key (anonymous when no keys are configured)."""
    auth: Authenticator = request.app.state.gw.auth
    return await auth.resolve(request.scope.get("headers", ()), None)


async def require_admin(request: Request) -> Principal:
    """FastAPI dependency for every admin endpoint and admin view: an admin key (401 without a
    valid key, 403 for a tenant key); with no keys configured, loopback clients only."""
    auth: Authenticator = request.app.state.gw.auth
    p = await auth.admin(request.scope)
    if p is None:
        if not auth.required:
            raise PermissionDenied("admin endpoints answer only on the loopback interface "
                                   "while no API keys are configured; configure an admin "
                                   "key (api_keys: admin: true)", code="admin_required")
        raise PermissionDenied("this API key is not an admin key", code="admin_required")
    return p


class _NoncePool:
    """16-byte nonces cut from one ``os.urandom`` read of 4 KiB (one system call per 256
    requests rather than per request; the bytes are the same CSPRNG's). A forked child
    starts with an empty pool, never its parent's bytes."""

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()  # never the same nonce twice, whatever the thread
        os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        self._buf = b""
        self._at = 0
        self._lock = threading.Lock()

    def take(self) -> bytes:
        with self._lock:
            at = self._at
            if at + 16 > len(self._buf):
                self._buf = os.urandom(4096)
                at = 0
            self._at = at + 16
            return self._buf[at:at + 16]


_nonces = _NoncePool()


class RequestIds:
    """Unguessable request ids that say which tenant made the request.

    id = hex(16 random bytes) + hex(8-byte blake2b keyed by a secret over (those bytes,
    tenant)). Issuing costs 16 bytes of ``os.urandom`` and one short keyed hash; checking
    ownership needs no storage and works on every gateway holding the secret. Ids issued
    under an older secret of this process still verify (the secret list only grows).
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secrets: list[bytes] = [secret or os.urandom(32)]

    @property
    def secret(self) -> bytes:
        return self._secrets[0]

    def adopt(self, secret: bytes) -> None:
        """Issue with ``secret`` from now on (the shared one); keep verifying older ids."""
        if secret not in self._secrets:
            self._secrets.insert(0, secret)

    @staticmethod
    def _tag(secret: bytes, nonce: bytes, tenant: str) -> str:
        return hashlib.blake2b(nonce + b"\0" + tenant.encode("utf-8", "surrogatepass"),
                               key=secret, digest_size=8).hexdigest()

    @staticmethod
    def nonce() -> bytes:
        return _nonces.take()

    def issue(self, nonce: bytes, tenant: str) -> str:
        return nonce.hex() + self._tag(self._secrets[0], nonce, tenant)

    def request_id(self, nonce: bytes, tenant: str | None) -> str:
        """The one way a response's ``x-request-id`` is made: for a request that leaves a
        routing-log record, issued (:meth:`issue`) to its ``tenant`` (feedback can name it);
        otherwise (``tenant`` None: the dry run, feedback, the FastAPI endpoints) the bare
        nonce, which verifies for no tenant, so no feedback can name it."""
        return nonce.hex() if tenant is None else self.issue(nonce, tenant)

    def owned(self, request_id: str, tenant: str) -> bool:
        """Whether ``request_id`` was issued (by a gateway sharing the secret) to ``tenant``."""
        if len(request_id) != 48:
            return False
        try:
            nonce = bytes.fromhex(request_id[:32])
        except ValueError:
            return False
        tag = request_id[32:]
        return any(hmac.compare_digest(self._tag(s, nonce, tenant), tag)
                   for s in self._secrets)

    async def share_through(self, redis: Any) -> None:
        """Adopt the secret kept in Redis (made by the first gateway), so that every gateway
        on this Redis issues and verifies the same ids. Called again from time to time: a
        Redis that lost its data gets the secret in use back (from the first gateway to
        look), and a gateway that finds another one there adopts it."""
        await redis.set(REQUEST_ID_SECRET_KEY, self._secrets[0].hex(), nx=True)
        raw = await redis.get(REQUEST_ID_SECRET_KEY)
        self.adopt(bytes.fromhex(raw.decode() if isinstance(raw, bytes) else str(raw)))

    @classmethod
    def from_file(cls, path: Path) -> RequestIds:
        """The secret kept in ``path`` (created 0600 on first use), so ids outlive a restart
        and every worker of one host agrees; a process-local secret if it cannot be kept."""
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("request ids: cannot read %s (%s); using a process-local secret",
                        path, e)
            return cls()
        secret = os.urandom(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret.hex())
            try:
                os.link(tmp, path)  # atomic: the first process to link wins
            except FileExistsError:
                secret = bytes.fromhex(path.read_text().strip())
            finally:
                tmp.unlink(missing_ok=True)
        except (OSError, ValueError) as e:
            log.warning("request ids: cannot keep a secret in %s (%s); ids issued now "
                        "will not verify after a restart", path, e)
        return cls(secret)
