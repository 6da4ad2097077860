"""create_app(settings): the one place where the gateway's parts are wired together.

The returned ASGI app is a thin raw-ASGI front: the POST endpoints of the API
(``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/route``,
``/v1/feedback``, and their aliases: docs/api.md) go through the request path,
:mod:`gateway.request`; everything else goes
to a FastAPI app (models, admin, health, metrics, the dashboard, OpenAPI), after any body
was read here under the same size limit and timeout (:func:`gateway.request.read.read_other`),
so no endpoint parses an unbounded body. The lifespan builds the embedder, policies, cache, upstream
pool and log sink, and tears them down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from gateway.aio import stop_task
from gateway.api import _client_request_id as client_request_id
from gateway.api import no_route
from gateway.auth import Authenticator, RequestIds, reachable_experts
from gateway.cache import DecisionCache, MemoryDecisionCache, RedisDecisionCache
from gateway.canary import CanaryMonitor
from gateway.canary_sync import CanarySync, FlushResult, read_ended
from gateway.config import (
    ConfigError,
    GatewayConfig,
    Settings,
    _loopback_host,
    auth_problem,
    load_config,
    missing_credentials,
    open_to_network,
)
from gateway.dashboard import DecisionFeed
from gateway.dispatch import Dispatcher
from gateway.errors import GatewayError, PermissionDenied
from gateway.logs import JsonlSink, RedisStreamSink, RoutingLog
from gateway.metrics import make_metrics
from gateway.pipeline import Pipeline, PolicySet, build_policy_set, carry_canary_state
from gateway.ratelimit import RateLimiter
from gateway.redact import redact
from gateway.request import ENDPOINTS, azure_route, handle
from gateway.request.plan import Plan
from gateway.request.read import BodyReads, ClientDisconnected, read_other
from routers.embed import Embedder, make_embedder
from routers.logrecord import CanaryEvent, ShadowRecord

__all__ = ["Gateway", "create_app"]

log = logging.getLogger("expertgate")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: a run of slashes in a request's path (``//v1/chat/completions``), read as one
_SLASHES = re.compile(r"/{2,}")
#: an Azure deployment path without its deployment (the SDK given an empty model): merging
#: its slashes would read ``/deployments//chat/completions`` as the completions of a
#: deployment named ``chat``
_NO_DEPLOYMENT = re.compile(r"/deployments//")
#: paths outside the API whose readers a setting names (/healthz is always open; /readyz
#: hides its checks from callers below ``readyz_auth``, in gateway/api/health.py)
_GATED = {"/metrics": "metrics_auth", "/docs": "docs_auth", "/redoc": "docs_auth",
          "/openapi.json": "docs_auth", "/docs/oauth2-redirect": "docs_auth"}


def _needs_embedder(cfg: GatewayConfig) -> bool:
    return bool(cfg.policies)


class Gateway:
    """Everything a request needs, built once at start-up and kept on the app."""

    def __init__(self, settings: Settings, config: GatewayConfig,
                 embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.config = config
        self.metrics = make_metrics()
        self._embedder = embedder
        self.embedder: Embedder | None = None
        self.redis: Any = None
        self.cache: DecisionCache = MemoryDecisionCache(settings.decision_cache_size,
                                                          settings.decision_cache_bytes)
        self.dispatcher = Dispatcher(config, self.metrics)
        self.routing_log: RoutingLog | None = None
        #: recent decisions and running totals for the dashboard (/ui)
        self.feed = DecisionFeed(config)
        self.policy_set: PolicySet
        self.pipeline: Pipeline
        self.auth = Authenticator(config)
        if settings.host:  # a Host naming the listen address names this machine
            self.auth.local_hosts |= {settings.host.strip("[]").lower()}
        #: refuse a keyless gateway's requests under a Host that does not name this
        #: machine (DNS rebinding): only where it listens on loopback (Settings.host_check)
        self.host_check = settings.host_check and _loopback_host(settings.host)
        self.request_ids = RequestIds()
        self._rid_task: asyncio.Task[None] | None = None
        self.ratelimiter = RateLimiter(None, self.metrics.registry)
        self.started_at = time.time()
        self.ready = False
        self.draining = False
        self.body_reads = BodyReads()
        self._drain_scheduled = False
        self._reload_lock = asyncio.Lock()
        self._batcher: Any = None
        #: request id -> (policy, arm) of recent requests beside a canary, for feedback
        #: request id -> [policy, arm, its latest rating or None] of canaried requests
        self._arms: collections.OrderedDict[str, list[Any]] = collections.OrderedDict()
        #: request id -> (policy, text, expert) of recent answers of online policies
        self._online: collections.OrderedDict[str, tuple[str, str, str]] = \
            collections.OrderedDict()
        #: canary counts and reverts shared through Redis (None without Redis)
        self._canary_sync: CanarySync | None = None
        self._canary_task: asyncio.Task[None] | None = None
        self._canary_wake = asyncio.Event()
        #: the reverts file as last read (mtime), for the workers of one machine
        self._reverts_seen = 0.0
        #: (policy, candidate identity) -> the record of an operator's promote / revert
        #: read from Redis: that candidate never runs here again (gateway/canary_sync.py)
        self._ended: dict[tuple[str, str], dict[str, Any]] = {}
        self._ended_reload: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        # also a worker that a supervisor starts on SIGHUP (serve --workers N): refused, it
        # leaves the running workers in place
        problem = auth_problem(self.config, s.redis_url)
        if problem:
            raise ConfigError(problem)
        if self._embedder is None and _needs_embedder(self.config):
            ec = self.config.embedder
            opts = dict(ec.options)
            if ec.kind in ("minilm", "onnx"):
                opts.setdefault("threads", s.embed_threads)
            self._embedder = await asyncio.to_thread(make_embedder, ec.kind, **opts)
            if self.config.embedder_from:
                log.info("embedder %s: the one %s was trained with (the config names none)",
                         ec.kind, self.config.embedder_from)
        self.embedder = self._embedder
        self.policy_set = await asyncio.to_thread(build_policy_set, self.config, self.embedder)
        self._restore_reverts(self.policy_set)
        self.auth.set_reach(reachable_experts(self.policy_set.policies))
        if s.redis_url:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError

            # After Redis restarts, every pooled connection to the old server is dead: a
            # connection error is retried once, at once, on a fresh connection, so each dead
            # connection does not fail a command (and flip rate limits to local) on its way
            # out. A timeout is not retried: a hung Redis would cost twice the timeout.
            self.redis = aioredis.Redis.from_url(
                s.redis_url, socket_timeout=s.redis_timeout_s,
                socket_connect_timeout=s.redis_timeout_s, health_check_interval=5,
                retry_on_timeout=False,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
            self.cache = RedisDecisionCache(self.redis, retry_s=s.redis_retry_s)
            self.auth.redis = self.redis
            self.auth.retry_s = s.redis_retry_s
            self.auth.start()
            first = self.reshare_s
            try:  # every gateway on this Redis issues and verifies the same ids
                await self.request_ids.share_through(self.redis)
            except Exception as e:  # Redis down at start: keep trying in the background
                # the first Redis call of a start: the one line that names it and says what
                # this gateway does meanwhile (each part says when it recovers)
                log.warning("Redis %s is unavailable at start-up (%s: %s); serving without it "
                            "and retrying in the background: decision cache skipped, rate "
                            "limits per process, API keys kept in Redis refused (503 "
                            "key_store_unavailable), routing log buffered in memory (up to %d "
                            "records), canaries tested on this process's counts, request ids "
                            "verified by this gateway only", redact(s.redis_url),
                            type(e).__name__, redact(str(e)), s.log_queue_size)
                first = 0.5
            self._rid_task = asyncio.get_running_loop().create_task(
                self._share_request_ids(first), name="request-id-secret")
            # the registry already holds the in-process limiter's metrics: swap the backend only
            self.ratelimiter.attach_redis(self.redis)
            self._canary_sync = CanarySync(self.redis)
            sink: Any = RedisStreamSink(self.redis)
        else:
            sink = JsonlSink(s.log_path, s.feedback_file)
            self.request_ids = RequestIds.from_file(
                s.log_path.with_name(s.log_path.stem + ".request-ids.key"))
        self.routing_log = RoutingLog(sink, self.metrics, max_queue=s.log_queue_size)
        self.routing_log.start()
        embed_fn = None
        if self.embedder is not None and self.config.embedder.micro_batch:
            embed_fn = self._make_batcher()
        self.pipeline = Pipeline(self.policy_set, self.embedder, self.cache, self.metrics,
                                 embed_fn)
        self.pipeline.on_shadow = self._log_shadow
        self._canary_gauges(self.policy_set)
        if self._canary_sync is not None or s.workers > 1:
            # before serving: a canary another process reverted must not serve here
            await self._canary_exchange()
            self._canary_task = asyncio.get_running_loop().create_task(
                self._sync_canaries(), name="canary-sync")
        await self.dispatcher.start()
        if s.warm_up:
            failed = await self.pipeline.warm()
            if failed:
                await self.close()  # what was started (the log's writer, the pools)
                _refuse_failed(failed, "start")
        self.ready = True
        if s.gc_freeze:
            # start-up objects (model weights, configs) never become garbage: keep them out
            # of every future cyclic-GC pass so collections stay short and rare.
            gc.collect()
            gc.freeze()

    #: seconds between two checks of the shared request-id secret once it is shared
    reshare_s = 30.0

    async def _share_request_ids(self, delay: float) -> None:
        """Adopt the request-id secret kept in Redis; until Redis answers, ids are issued
        under this process's own secret (they verify here, not on the other gateways).
        Then check it every :attr:`reshare_s`: a Redis that lost its data (restarted
        without persistence) gets it back, and a secret another gateway wrote meanwhile is
        adopted, so the replicas converge on one again (ids issued before still verify
        where they were known). ``delay``: seconds to the first check."""
        while True:
            await asyncio.sleep(delay)
            try:
                before = self.request_ids.secret
                await self.request_ids.share_through(self.redis)
                if self.request_ids.secret != before:
                    log.info("request ids: adopted the secret shared in Redis")
                delay = self.reshare_s
            except Exception as e:  # any Redis failure: keep the secret in use, retry
                delay = min(delay * 2, 10.0)
                log.debug("request ids: Redis unavailable (%s)", type(e).__name__)

    def _make_batcher(self) -> Any:
        from routers.batching import MicroBatcher

        assert self.embedder is not None
        self._batcher = MicroBatcher(self.embedder.embed,
                                     max_batch=self.config.embedder.max_batch)
        batcher = self._batcher

        async def embed_one(text: str) -> Any:
            return await batcher.embed(text)

        return embed_one

    async def close(self) -> None:
        self.ready = False
        await self.ratelimiter.drain()
        await self.auth.close()
        await stop_task(self._rid_task)
        await stop_task(self._canary_task)
        await stop_task(self._ended_reload)
        if self._canary_task is not None:  # what this process counted since the last one
            await self._canary_exchange()
        await self.pipeline.finish_shadow()  # their records, before the log closes
        if self.routing_log is not None:
            await self.routing_log.close()
        await self.dispatcher.close()
        if self._batcher is not None:
            res = self._batcher.close()
            if asyncio.iscoroutine(res):
                await res
        self.pipeline.close()
        await self.cache.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def reload(self, config_path: Path | None = None) -> dict[str, Any]:
        """Rebuild policies (and experts) from the config file and swap them atomically.

        In-flight requests finish with the PolicySet they started with. A bad file leaves
        the running configuration untouched and raises ConfigError; any other exception
        (a bug) is raised as it is, for the callers to answer and log (``POST
        /admin/reload``, SIGHUP). Either way the failure is counted
        (``expertgate_config_reloads{result="failed"}``).
        """
        try:
            out = await self._reload(config_path)
        except BaseException:
            self.metrics.child(self.metrics.reloads, "failed").inc()
            raise
        self.metrics.child(self.metrics.reloads, "ok").inc()
        return out

    async def _reload(self, config_path: Path | None) -> dict[str, Any]:
        path = config_path or self.settings.config
        async with self._reload_lock:
            if path is None:
                cfg = self.config
            else:
                cfg = await asyncio.to_thread(load_config, path)
            # the checks of `expertgate serve` before it starts: a config nobody could call
            # is refused (here it would also lock out the admin key that could reload it
            # back); an unset api_key_env is a warning there, so it is one here, in the answer
            problem = auth_problem(cfg, self.settings.redis_url)
            if problem:
                raise ConfigError(problem)
            warnings = missing_credentials(cfg) + open_to_network(
                cfg, self.settings.host, self.settings.port) + self.auth.unchecked(cfg)
            for line in warnings:
                log.warning("reload: %s", line)
            if cfg.embedder.model_dump() != self.config.embedder.model_dump():
                # loaded once per process (and every artifact was checked against it): a
                # reload that changed it would serve on with the old one, silently
                raise ConfigError(f"{path}: the embedder changed ({self.config.embedder.kind}"
                                  f" -> {cfg.embedder.kind}); it is loaded once per process: "
                                  "restart the gateway to change it")
            pset = await asyncio.to_thread(build_policy_set, cfg, self.embedder)
            if self.settings.warm_up:  # before it serves, as at start-up
                _refuse_failed(await self.pipeline.warm(pset), "reload")
            old = self.policy_set
            if [(e.model_dump(), e.credentials_digest) for e in cfg.experts] != [
                    (e.model_dump(), e.credentials_digest) for e in self.config.experts]:
                new_disp = Dispatcher(cfg, self.metrics)
                await new_disp.start()
                old_disp = self.dispatcher
                # the calls in flight there keep their experts' slots: the new pool's limit
                # counts them (it admitted a full max_concurrency of its own beside them)
                new_disp.keep_slots(old_disp)
                # ... and its replicas their in-flight counts (the replica choice sees the
                # streams running there) and their breakers (an open circuit stays open)
                new_disp.keep_replicas(old_disp)
                self.dispatcher = new_disp
                # let in-flight calls on the old pool finish before closing its session
                asyncio.get_running_loop().call_later(
                    self.settings.request_deadline_s,
                    lambda: asyncio.ensure_future(old_disp.close()))
            self.config = cfg
            self.feed.reconfigure(cfg)
            # in place, between two awaits: the Redis keys it knows stay known
            self.auth.configure(cfg, reachable_experts(pset.policies))
            carry_canary_state(old, pset)
            self._restore_reverts(pset)
            self._drop_ended(pset, reloaded=True)
            self.policy_set = pset
            self.pipeline.policies = pset
            self._canary_gauges(pset)
            self._canary_wake.set()  # a new canary reads the shared state at once
            changed = {n: rt.version for n, rt in pset.policies.items()
                       if n not in old.policies or old.policies[n].version != rt.version}
            log.info("reloaded configuration: %d policies, %d changed", len(pset.policies),
                     len(changed))
            return {"policies": {n: rt.version for n, rt in pset.policies.items()},
                    "changed": sorted(changed), "warnings": warnings}

    def begin_drain(self, grace_s: float = 0.0) -> None:
        """The server stopped accepting: not ready from now on; bodies still being read
        ``grace_s`` later are answered 503 then, so a slow client does not hold the
        shutdown (the grace lets a body already on its way arrive)."""
        self.draining = True
        if grace_s <= 0:
            self.body_reads.close()
        elif not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_later(grace_s, self.body_reads.close)

    # -- shadow and canary ---------------------------------------------------------------
    def _canary_gauges(self, pset: PolicySet) -> None:
        sync = self._canary_sync
        for name, rt in pset.policies.items():
            c = rt.candidate
            self.metrics.canary_active.labels(name).set(1 if c is not None and c.serving else 0)
            m = c.monitor if c is not None else None
            if m is not None:
                m.shared = sync is not None
                m.degraded = sync is not None and not sync.available
                self.metrics.canary_shared.labels(name).set(
                    1 if m.shared and not m.degraded else 0)

    def _canary_monitors(self) -> list[tuple[str, CanaryMonitor]]:
        return [(name, rt.candidate.monitor) for name, rt in self.policy_set.policies.items()
                if rt.candidate is not None and rt.candidate.monitor is not None]

    async def _sync_canaries(self) -> None:
        """Exchange canary counts and reverts with the other processes every
        ``canary_sync_s``, and at once after a revert here or a reload."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._canary_wake.wait(), self.settings.canary_sync_s)
            self._canary_wake.clear()
            await self._canary_exchange()

    async def _canary_exchange(self) -> None:
        sync = self._canary_sync
        if sync is not None:
            await self._check_ended()
        mons = self._canary_monitors()
        if sync is None:  # no Redis: the reverts other workers recorded in the file
            self._poll_reverts(mons)
            return
        if not mons and sync.idle:
            return
        try:
            results = await sync.flush([m for _, m in mons])
        except Exception as e:  # redis raises many types; any of them means "down"
            if sync.available:
                log.warning("canary monitoring: Redis unavailable (%s); each process tests "
                            "its canaries on the counts it last read plus its own since, "
                            "and a revert elsewhere reaches it only once Redis is back",
                            type(e).__name__)
            sync.available = False
            for name, m in mons:
                m.degraded = True
                self.metrics.canary_shared.labels(name).set(0)
                if m.reverted is not None and m.origin == "this process" and not m.logged:
                    # its record waits for Redis; the log says so now
                    self._log_revert(policy=name, signal_=str((m.record or {}).get("signal")),
                                     why=m.reverted, ts=time.time())
                    m.logged = True
            return
        if not sync.available:
            log.warning("canary monitoring: Redis is back; canaries are tested on the counts "
                        "of all processes again")
        sync.available = True
        for name, m in mons:
            m.degraded = False
            self.metrics.canary_shared.labels(name).set(1)
        names = {id(m): name for name, m in mons}
        for r in results:
            self._after_flush(names[id(r.monitor)], r)

    async def _check_ended(self) -> None:
        """Read the operator's end records of this process's candidates (``expertgate
        policy promote|revert`` on any gateway of this Redis); drop those ended and re-read
        the configuration file, which may hold the promotion."""
        pairs = [(name, rt.candidate.identity) for name, rt in self.policy_set.policies.items()
                 if rt.candidate is not None]
        try:
            got = await read_ended(self.redis, pairs)
        except Exception as e:  # Redis down: the canary exchange says so, once
            log.debug("candidate end records: Redis unavailable (%s)", type(e).__name__)
            return
        fresh = {k: v for k, v in got.items() if k not in self._ended}
        if not fresh:
            return
        self._ended.update(fresh)
        # at start-up the file was just read: nothing to read again
        self._drop_ended(self.policy_set, reloaded=not self.ready)
        if self.ready and self.settings.config is not None and (
                self._ended_reload is None or self._ended_reload.done()):
            self._ended_reload = asyncio.get_running_loop().create_task(
                self._reload_after_end(), name="reload-after-end")

    async def _reload_after_end(self) -> None:
        try:
            await self.reload()
        except Exception as e:  # a broken file: the candidate stays dropped all the same
            log.warning("re-reading %s after a candidate's end failed (%s); the ended "
                        "candidate stays off here", self.settings.config, e)

    def _drop_ended(self, pset: PolicySet, reloaded: bool) -> None:
        """Take out of ``pset`` every candidate an operator ended: it neither serves nor
        shadows here, whatever this process's configuration file says."""
        for name, rt in pset.policies.items():
            c = rt.candidate
            rec = self._ended.get((name, c.identity)) if c is not None else None
            if rec is None:
                continue
            rt.candidate = None
            self.metrics.canary_active.labels(name).set(0)
            action = str(rec.get("action", "end"))
            if not reloaded:
                log.warning("policy %s: its %s candidate was %s by `expertgate policy %s` "
                            "(recorded in Redis); it stops here, and the configuration file "
                            "is read again", name,
                            getattr(c, "mode", ""), "promoted" if action == "promote"
                            else "reverted", action)
            else:
                log.warning("policy %s: this gateway's configuration file (%s) still names "
                            "the candidate `expertgate policy %s` ended; it stays off here"
                            "%s; update the file", name, self.settings.config, action,
                            " and the policy's router serves, not the promoted one"
                            if action == "promote" else "")

    def _after_flush(self, policy: str, r: FlushResult) -> None:
        m, rec = r.monitor, r.record
        token = self._canary_sync.token if self._canary_sync is not None else None
        if rec is not None and rec.get("by") != token:  # decided elsewhere: its verdict
            if m.adopt(rec, "another process") or r.signal is not None:
                self._adopted(policy, m, rec)
            return
        if r.signal is not None:  # the totals of all processes revert it, here first
            self._reverted(policy, r.signal, m.reverted or "")
        elif rec is not None and not m.logged:  # recorded as decided here: the one event
            self._log_revert(policy, str(rec.get("signal", "")), str(rec.get("reason")),
                             float(rec.get("ts", time.time())))
            m.logged = True

    def _poll_reverts(self, mons: list[tuple[str, CanaryMonitor]]) -> None:
        """Without Redis, the workers of one ``serve --workers N`` share reverts through the
        reverts file (their counts stay their own)."""
        try:
            mtime = self._reverts_path.stat().st_mtime
        except OSError:
            return
        if mtime == self._reverts_seen:
            return
        self._reverts_seen = mtime
        got = read_reverts(self._reverts_path)
        for name, rt in self.policy_set.policies.items():
            c = rt.candidate
            m = c.monitor if c is not None else None
            rec = got.get(c.identity) if c is not None else None
            if m is not None and rec is not None and m.reverted is None:
                m.adopt(rec, "another process")
                self._adopted(name, m, rec)

    def _adopted(self, policy: str, m: CanaryMonitor, rec: dict[str, Any]) -> None:
        """A revert another process decided, honoured here: said as a local one is (the
        routing-log event is the deciding process's)."""
        signal_ = str(rec.get("signal") or "unknown")
        log.warning("canary of policy %s reverted by another gateway process: %s", policy,
                    rec.get("reason"))
        self.metrics.canary_reverts.labels(policy, signal_).inc()
        self.metrics.canary_active.labels(policy).set(0)
        self._record_revert_file(policy, signal_, str(rec.get("reason", "")))

    def _log_shadow(self, crt: Any, d: Any, served: Any, of: dict[str, Any]) -> None:
        """A shadow candidate's decision: logged and counted, never served; its record names
        the request it shadows (``of``: request_id, tenant, text_hash)."""
        agrees = d.expert == served.expert
        self.metrics.child(self.metrics.shadow, crt.config.name,
                           "agree" if agrees else "disagree").inc()
        if self.routing_log is not None:
            shadow: ShadowRecord = {
                "request_id": of.get("request_id"), "tenant": of.get("tenant"),
                "text_hash": of.get("text_hash"),
                "ts": time.time(), "endpoint": "shadow", "policy": crt.config.name,
                "router_version": crt.version, "mode": d.mode, "expert": d.expert,
                "served_expert": served.expert, "agrees": agrees, "reason": d.reason,
                "targets": [t.expert for t in d.targets], "cache": "hit" if d.cached else "miss",
                "decision_ms": d.timings_ms.get("total")}
            self.routing_log.record(shadow)

    def observe_arm(self, request_id: str, plan: Plan, status: int) -> None:
        """Count a request beside a canary; revert the canary when the test says so."""
        rt = plan.rt
        cand = rt.candidate if rt is not None else None
        if rt is None or cand is None or cand.monitor is None or plan.arm is None:
            return
        self._arms[request_id] = [rt.config.name, plan.arm, None]
        while len(self._arms) > 100_000:
            self._arms.popitem(last=False)
        if self._canary_sync is not None and cand.monitor.shared:
            self._canary_sync.note_request(cand.monitor, request_id, plan.arm)
        signal_ = cand.monitor.observe_request(plan.arm, status >= 500)
        if signal_ is not None:
            self._reverted(rt.config.name, signal_, cand.monitor.reverted or "")

    def remember_online(self, request_id: str, plan: Plan, expert: str, status: int) -> None:
        """Keep (policy, text, served expert) of an online policy's answered request in a
        bounded memory so that its feedback can update the router."""
        if plan.text is None or not expert or status >= 400:
            return
        self._online[request_id] = (plan.policy, plan.text, expert)
        while len(self._online) > 100_000:
            self._online.popitem(last=False)

    async def on_feedback(self, request_id: str, score: float) -> None:
        """Feedback beyond the log: the canary monitor, and online learning."""
        self.observe_feedback(request_id, score)
        got = self._online.pop(request_id, None)
        if got is None:
            return
        policy, text, expert = got
        rt = self.policy_set.policies.get(policy)
        if rt is None or not rt.config.online or expert not in getattr(rt.router, "experts_",
                                                                      ()):
            return
        from routers.base import RouterError

        try:
            x = await self.pipeline.embed(text)
            rt.router.partial_fit(x.reshape(1, -1), [expert], [score])
        except (RouterError, RuntimeError) as e:
            log.warning("online update of policy %s failed: %s", policy, e)
            return
        rt.updates += 1
        self.metrics.child(self.metrics.online_updates, policy).inc()

    def observe_feedback(self, request_id: str, score: float) -> None:
        if self._canary_sync is not None and self._canary_task is not None and \
                self._canary_monitors():
            # the request may have been answered by another process: Redis knows its arm
            # and earlier rating (its count there is exact, at the next exchange)
            self._canary_sync.note_feedback(request_id, score)
        got = self._arms.get(request_id)
        if got is None:
            return
        rt = self.policy_set.policies.get(got[0])
        cand = rt.candidate if rt is not None else None
        if cand is None or cand.monitor is None:
            return
        # a request counts once: a new rating replaces its earlier one (as logs export
        # keeps the latest), so rating one request over and over cannot move the canary
        previous, got[2] = got[2], float(score)
        signal_ = cand.monitor.observe_feedback(got[1], score, previous)
        if signal_ is not None:
            self._reverted(got[0], signal_, cand.monitor.reverted or "")

    def _reverted(self, policy: str, signal_: str, why: str) -> None:
        """This process's test reverted the canary: it stops serving here at once; with
        Redis, the revert is recorded for every process at the next exchange (woken now),
        and its routing-log event is written by the process whose record stands."""
        log.warning("canary of policy %s reverted automatically: %s", policy, why)
        self.metrics.canary_reverts.labels(policy, signal_).inc()
        self.metrics.canary_active.labels(policy).set(0)
        rt = self.policy_set.policies.get(policy)
        m = rt.candidate.monitor if rt is not None and rt.candidate is not None else None
        if m is not None and m.shared and not m.degraded:
            self._canary_wake.set()
        else:
            self._log_revert(policy, signal_, why, time.time())
            if m is not None:
                m.logged = True
        self._record_revert_file(policy, signal_, f"{signal_}: {why}")

    def _log_revert(self, policy: str, signal_: str, why: str, ts: float) -> None:
        if self.routing_log is not None:
            reason = why if why.startswith(f"{signal_}: ") else f"{signal_}: {why}"
            event: CanaryEvent = {"ts": ts, "endpoint": "canary", "policy": policy,
                                  "status": "reverted", "reason": reason}
            self.routing_log.record(event)

    def _record_revert_file(self, policy: str, signal_: str, reason: str) -> None:
        rt = self.policy_set.policies.get(policy)
        if rt is not None and rt.candidate is not None:
            try:
                record_revert(self._reverts_path, rt.candidate.identity, policy, reason,
                              signal_)
            except OSError as e:
                log.warning("canary of policy %s: the revert could not be recorded in %s "
                            "(%s); a restart would serve the canary again", policy,
                            self._reverts_path, e)

    @property
    def _reverts_path(self) -> Path:
        """Where reverted canaries are recorded, beside the routing log: the workers of one
        ``serve --workers N`` (replaced on every reload) and a restarted process read it."""
        p = self.settings.log_path
        return p.with_name(p.stem + ".canary-reverts.json")

    def _restore_reverts(self, pset: PolicySet) -> None:
        """Canaries recorded as reverted (by this process before a restart, or by any worker)
        start reverted: the candidate is the same (its identity), its verdict stands."""
        got = read_reverts(self._reverts_path)
        for name, rt in pset.policies.items():
            cand = rt.candidate
            if cand is None or cand.monitor is None or cand.monitor.reverted is not None:
                continue
            rec = got.get(cand.identity)
            if rec is not None:
                cand.monitor.adopt({**rec, "reason": f"{rec.get('reason', '')} (recorded "
                                    "earlier)", "by": "file"}, "recorded earlier")
                log.info("canary of policy %s stays reverted (recorded in %s)", name,
                         self._reverts_path)


def read_reverts(path: Path) -> dict[str, dict[str, Any]]:
    """Recorded canary reverts: candidate identity -> {policy, reason, ts}; {} when none."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def record_revert(path: Path, identity: str, policy: str, reason: str,
                  signal_: str | None = None) -> None:
    """Add a revert to the record, under a lock (several workers may write it), atomically
    (a reader never sees half a file)."""
    import fcntl
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_reverts(path)
        if identity in data:  # recorded once: the first verdict and its time stand
            return
        data[identity] = {"policy": policy, "signal": signal_, "reason": reason,
                          "ts": time.time()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data))
        os.replace(tmp, path)


def _refuse_failed(failed: dict[str, str], when: str) -> None:
    """A policy whose first decision (the warm-up's) fails would fail every request (a 500
    each, a canary that never counts its errors): the configuration is refused instead (a
    reload keeps the running one; a start fails)."""
    if failed:
        raise ConfigError(f"cannot {when}: " + "; ".join(
            f"policy {name!r} fails its first decision ({err})"
            for name, err in sorted(failed.items())))


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None,
               *, embedder: Embedder | None = None) -> Any:
    """Build the ASGI app. ``config`` defaults to the file named by ``settings.config``."""
    settings = settings or Settings()
    if config is None:
        if settings.config is None:
            raise ConfigError("no configuration: pass --config FILE or set EXPERTGATE_CONFIG")
        config = load_config(settings.config)
    gw = Gateway(settings, config, embedder)
    from gateway.api import build_api

    api = build_api(gw)
    _document_errors(api)

    async def lifespan(scope_state: Scope, receive: Receive, send: Send) -> None:
        msg = await receive()
        assert msg["type"] == "lifespan.startup"
        try:
            await gw.start()
        except (ConfigError, Exception) as e:  # report any start-up failure to the server
            log.error("start-up failed: %s", e)
            await send({"type": "lifespan.startup.failed", "message": str(e)})
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(
                _reload_logged(gw)))
        # the server's connections find the gateway here when it shuts down (begin_drain)
        state = scope_state.get("state")
        if isinstance(state, dict):
            state["expertgate"] = gw
        await send({"type": "lifespan.startup.complete"})
        msg = await receive()
        gw.draining = True
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGHUP)
        await gw.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        t = scope["type"]
        if t == "http":
            path = scope["path"]
            if gw.host_check and not gw.auth.required and \
                    not gw.auth.host_named(scope, gw.settings.allowed_hosts):
                await _untrusted_host(gw, scope, send, path)
                return
            ep = ENDPOINTS.get(path)
            post = scope["method"] == "POST"
            if ep is not None and post:
                await handle(gw, scope, receive, send, ep)
                return
            # the aliases, looked up only once the /v1 paths missed (nothing more on those)
            deployed = True
            if "//" in path:
                # a client's trailing-slash base URL + "/v1/...": merged as nginx does by
                # default (merge_slashes), before the gated paths are looked up
                deployed = _NO_DEPLOYMENT.search(path) is None
                path = scope["path"] = _SLASHES.sub("/", path)
            if post:
                ep = ENDPOINTS.get(path.rstrip("/"))  # POST /v1/chat/completions/
                if ep is not None:
                    await handle(gw, scope, receive, send, ep)
                    return
                azure = azure_route(path) if deployed else None
                if azure is not None:  # /openai/deployments/{model}/chat/completions
                    await handle(gw, scope, receive, send, *azure)
                    return
            elif ENDPOINTS.get(path.rstrip("/")) is not None or (
                    deployed and azure_route(path) is not None):
                # a POST endpoint the FastAPI part does not declare (/chat/completions, the
                # Azure paths): a 405 saying so, as GET /v1/chat/completions gets, not a 404
                # naming these very paths among those served
                await _method_not_allowed(gw, scope, send, path)
                return
            gate = _GATED.get(path)
            if gate is not None and not await _gate_passed(gw, scope, send,
                                                           getattr(settings, gate)):
                return
            s = gw.settings
            try:
                raw = await read_other(receive, scope.get("headers", ()), s.max_body_bytes,
                                       s.body_timeout_s, gw.body_reads)
            except ClientDisconnected:
                return  # nobody left to answer
            except GatewayError as e:
                await _send_error(gw, scope, send, e)
                return
            await api(scope, _replay(raw, receive), send)
            return
        if t == "lifespan":
            await lifespan(scope, receive, send)
            return
        await api(scope, receive, send)

    app.gateway = gw  # type: ignore[attr-defined]
    app.api = api  # type: ignore[attr-defined]
    return app


async def _untrusted_host(gw: Gateway, scope: Scope, send: Send, path: str) -> None:
    host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
    err = PermissionDenied(
        f"the Host header {host.strip()[:64]!r} does not name this machine: a gateway with no "
        "API keys listening on loopback answers only requests to a loopback name or address "
        "(a DNS-rebinding guard); add the name to EXPERTGATE_ALLOWED_HOSTS (a reverse "
        "proxy's) or configure API keys", code="untrusted_host")
    extra = None if ENDPOINTS.get(path.rstrip("/")) is None else [
        *_NOT_ROUTED[:-1], (b"x-expertgate-reason", b"untrusted host")]
    await _send_error(gw, scope, send, err, extra)


async def _method_not_allowed(gw: Gateway, scope: Scope, send: Send, path: str) -> None:
    err = GatewayError(no_route(scope["method"], path, 405, "POST"),
                       code="method_not_allowed", headers={"allow": "POST"})
    err.status, err.type = 405, "invalid_request_error"
    # an answer of a request-path endpoint: its x-expertgate-* set, as an error before
    # routing gives it (feedback's answers carry none)
    feedback = ENDPOINTS.get(path.rstrip("/")) == "feedback"
    await _send_error(gw, scope, send, err, None if feedback else _NOT_ROUTED)


#: the x-expertgate-* set of an answer given before any routing
_NOT_ROUTED = [(b"x-expertgate-policy", b"none"), (b"x-expertgate-expert", b"none"),
               (b"x-expertgate-cache", b"none"), (b"x-expertgate-decision-ms", b"0.000"),
               (b"x-expertgate-reason", b"method not allowed")]


async def _send_error(gw: Gateway, scope: Scope, send: Send, err: GatewayError,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """``err`` answered by this front itself (before FastAPI or the request path), with the
    x-request-id every response carries (and the client's own as x-client-request-id), as
    :class:`gateway.api.RequestIdMiddleware` gives FastAPI's answers."""
    ids = gw.request_ids
    headers = [(b"content-type", b"application/json"),
               (b"x-request-id", ids.request_id(ids.nonce(), None).encode())]
    client_rid = client_request_id(scope)
    if client_rid is not None:
        headers.append((b"x-client-request-id", client_rid.encode()))
    headers += extra or []
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": err.body()})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the body already read to the app, then the client's events."""
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


_ERROR_STATUSES = ("400", "401", "403", "404", "408", "413", "429", "502", "503", "504")
_STREAMED = ("/v1/chat/completions", "/v1/completions")


def _document_errors(api: Any) -> None:
    """Make GET /openapi.json say what the gateway really answers.

    Every operation can answer the OpenAI-shaped errors of gateway.errors (auth is checked on
    all of them; a body that fails validation is a 400, never FastAPI's 422), and the two hot
    endpoints stream ``text/event-stream`` when asked. Clients and schemathesis read this.
    """
    from gateway.api.protocol import ErrorResponse

    generate = api.openapi

    def openapi() -> dict[str, Any]:
        doc: dict[str, Any] = generate()
        if doc.get("x-expertgate-errors"):
            return doc
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for name, sch in ErrorResponse.model_json_schema(
                ref_template="#/components/schemas/{model}").get("$defs", {}).items():
            schemas.setdefault(name, sch)
        schemas.setdefault("ErrorResponse", {k: v for k, v in ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}").items() if k != "$defs"})
        err = {"description": "OpenAI-shaped error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path, ops in doc.get("paths", {}).items():
            for op in ops.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                for code in _ERROR_STATUSES:
                    responses.setdefault(code, err)
                if path == "/metrics" and "200" in responses:
                    responses["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
                if path in _STREAMED and "200" in responses:
                    responses["200"].setdefault("content", {})["text/event-stream"] = {
                        "schema": {"type": "string"}}
        doc["x-expertgate-errors"] = True
        return doc

    api.openapi = openapi


async def _gate_passed(gw: Gateway, scope: Scope, send: Send, level: str) -> bool:
    """Whether the caller may read a gated path; answers the 401/403 itself when not."""
    try:
        if await gw.auth.allowed(scope, level):
            return True
        err: GatewayError = PermissionDenied(
            f"{scope['path']} needs an admin key" + ("" if gw.auth.required else
                                                     " (or, with no keys configured, a "
                                                     "loopback client)"),
            code="admin_required")
    except GatewayError as e:
        err = e
    await _send_error(gw, scope, send, err)
    return False


async def _reload_logged(gw: Gateway) -> None:
    """The reload of SIGHUP: its task's only reader, so every failure is logged here (never
    asyncio's "Task exception was never retrieved")."""
    try:
        await gw.reload()
    except (ConfigError, GatewayError) as e:
        log.error("reload on SIGHUP failed, keeping the running configuration: %s", e)
    except Exception as e:  # a bug, or a failure no check foresaw: the same line, and why
        log.error("reload on SIGHUP of %s failed, keeping the running configuration: %s: %s",
                  gw.settings.config, type(e).__name__, e, exc_info=True)

