"""Upstream pool: replica choice, circuit breakers, timeouts, fallbacks and fan-out.

Replica choice: two hash choices on the prompt prefix (the caller's affinity key: the start
of the conversation, system prompt first, so requests sharing a long prefix tend to land
where their KV cache is warm), then the less loaded of the two (power of two choices); with
no key, two random choices;
replicas whose circuit is open are skipped; for a LoRA adapter, replicas where the adapter is
resident are preferred.

A call walks the decision's chain of experts: a failure before the first byte (connect error,
timeout, 5xx, 429) is retried on the same expert (another replica when there is one, else the
same; after a protocol failure, a 401/403 or a 404 only another replica) after a jittered
backoff, within a bounded budget (:class:`RetryPolicy`: attempts per expert, and no retry
once ``budget_s`` of the request has gone), then moves to the next expert of the chain — all
within the request's deadline. A failure after the first byte is never retried (the upstream
may already have billed); the caller ends the stream with an error event.

A failure the request itself caused is the client's answer, not the replica's health: it is
never retried, never sent to another expert and never counted by a circuit breaker; the
upstream's own status and error body go back to the client (in OpenAI's shape). A 4xx is
the request's by definition. A 500 is ambiguous (llama.cpp answers 500 to a
``json_schema`` response format, image parts, ``content: null``, a prompt list, deeply
nested JSON): the dispatcher then sends the replica a minimal request of the same kind
(``max_tokens: 1``); if that succeeds, the 500 was the request's. One probe runs per replica
and path at a time, and a success stands for ``REQUEST_FAULT_TTL_S``, so a stream of bad
requests costs at most one probe per replica every two seconds. 502/503/504, 429, timeouts,
connection errors and a failed probe are the replica's: retried, counted, failed over.
A 401/403 is the upstream refusing the gateway's own credentials (``kind`` ``auth``): the
expert's failure, counted and failed over, never retried on the same replica, and answered
``502 upstream_auth_failed`` when nothing else answers (never as the client's 401).

A call holds its replica (the in-flight count the choice above reads) and one of its expert's
``max_concurrency`` slots (:class:`Lease`) until its answer ends: a non-streamed call until
it returns, a stream until its reader releases it, whatever ended it (``[DONE]``, a cut, an
error event, the client leaving, the writer failing, the shutdown). A request that finds
every slot taken waits for one, within its deadline. A LoRA adapter served by its parent's
server takes one of the parent's slots (the server's capacity is the parent's: its limit
holds across the adapters and the base model together), and one of its own as well when
its ``max_concurrency`` is set explicitly. The wait for a slot is the gateway's queueing,
not upstream time: an :class:`Attempt`'s ``ms`` starts once the slots are held, and the
wait is its ``queue_ms``. The slots (:class:`Slots`) outlive a reload for an expert it keeps
(same name, same server): the calls still in flight on the replaced pool count against the
new pool's limit, so a reload never lets an expert see more than its ``max_concurrency``.
A replica the reload keeps (same expert, same URL) is the same :class:`Replica`, in-flight
count and circuit breaker included (:meth:`Dispatcher.keep_replicas`).

Circuit breakers count only the replica's failures, and a half-open probe that never
finishes (the client went away, the task was cancelled) releases its slot, so an expert that
comes back is always used again by itself (the trap of Bifrost #5743: a fast path that
stays degraded after one timeout).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.config import ExpertConfig, GatewayConfig
from gateway.errors import UnsupportedByExpert, UpstreamTimeout, UpstreamUnavailable
from gateway.metrics import Metrics
from gateway.upstream_http import UpstreamHTTP
from gateway.upstreams import (
    UpstreamFailure,
    UpstreamReply,
    call_litellm,
    call_openai,
    credentials,
    error_body,
)

__all__ = ["Attempt", "CircuitBreaker", "DispatchResult", "Dispatcher", "Lease", "Replica",
           "RetryPolicy", "Slots"]

log = logging.getLogger("expertgate.dispatch")

#: how long a successful probe vouches for a replica (a 500 in that time is the request's)
REQUEST_FAULT_TTL_S = 2.0
_PROBE_BODIES: dict[str, dict[str, Any]] = {
    "/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    "/completions": {"prompt": "hi", "max_tokens": 1},
    "/embeddings": {"input": "hi"},
}


class CircuitBreaker:
    """Closed -> open after ``threshold`` consecutive failures; after ``cooldown_s`` one
    half-open probe is let through; its success closes the circuit, its failure re-opens it
    with a doubled cooldown (capped)."""

    def __init__(self, threshold: int = 3, cooldown_s: float = 2.0, max_cooldown_s: float = 30.0,
                 probe_timeout_s: float = 120.0) -> None:
        self.threshold = threshold
        self.base_cooldown = cooldown_s
        self.cooldown = cooldown_s
        self.max_cooldown = max_cooldown_s
        self.failures = 0
        self.open_until = 0.0
        self.probing = False
        self.probe_started = 0.0
        self.probe_timeout = probe_timeout_s

    @property
    def state(self) -> str:
        if self.failures < self.threshold:
            return "closed"
        return "half-open" if time.monotonic() >= self.open_until else "open"

    def allow(self) -> bool:
        st = self.state
        if st == "closed":
            return True
        if st == "half-open" and (not self.probing or
                                  time.monotonic() - self.probe_started > self.probe_timeout):
            # a probe that outlived its timeout is presumed lost: let another one through
            self.probing = True
            self.probe_started = time.monotonic()
            return True
        return False

    def abandon(self) -> None:
        """The call ended without a verdict (cancelled): free the half-open probe slot."""
        self.probing = False

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        self.cooldown = self.base_cooldown

    def failure(self) -> None:
        was_probe = self.probing
        self.probing = False
        self.failures += 1
        if self.failures >= self.threshold:
            if was_probe:
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.open_until = time.monotonic() + self.cooldown


@dataclass(frozen=True)
class RetryPolicy:
    """How failures before the first byte are retried on the same expert.

    At most ``attempts_per_expert`` tries of one expert, spread over its replicas. A replica
    already tried is tried again only for the last expert of the chain (nothing else left) or
    after a 429/503 (the replica asked for a retry; with a ``retry-after`` it is waited, and
    one longer than ``max_backoff_s`` is no retry here), never after it refused the gateway's
    credentials, lacked the model or broke the protocol, after a full-jitter backoff of up to
    ``min(max_backoff_s, backoff_s * 2**n)``, and never once ``budget_s`` has passed since the
    request's first attempt. The fallback chain is walked either way, within the request's
    deadline.
    """

    attempts_per_expert: int = 2
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    budget_s: float = 10.0

    def backoff(self, n: int) -> float:
        return random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * (2 ** n)))


def retry_after_s(value: str | None) -> float:
    """The seconds of a ``retry-after`` header (0 when absent or not a number of seconds:
    an HTTP date is rare from model servers, and read as no wait, as before)."""
    if not value:
        return 0.0
    try:
        s = float(value)
    except ValueError:
        return 0.0
    return s if math.isfinite(s) and s > 0 else 0.0


@dataclass
class Replica:
    base: str
    inflight: int = 0
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    #: path -> when a minimal request last succeeded there
    healthy_at: dict[str, float] = field(default_factory=dict)
    #: path -> the probe in flight (one at a time per replica and path)
    probes: dict[str, asyncio.Future[bool]] = field(default_factory=dict)


@dataclass
class Attempt:
    expert: str
    replica: str
    # ok | connect | timeout | status | protocol | circuit_open | client_error | request_error
    # | unsupported (the expert's dialect cannot carry the request: not sent)
    outcome: str
    #: upstream time: from the call's start, once its concurrency slots were held
    ms: float
    status: int | None = None
    #: the wait for a concurrency slot before the call (the gateway's queueing)
    queue_ms: float = 0.0


@dataclass
class DispatchResult:
    expert: ExpertConfig
    replica: str
    reply: UpstreamReply
    attempts: list[Attempt]

    @property
    def fallback(self) -> bool:
        return len({a.expert for a in self.attempts}) > 1


class Slots:
    """An expert's ``max_concurrency`` slots: a first-come-first-served semaphore whose
    limit can change. One expert's slots are shared by the pools of successive
    configurations while a reload keeps the expert (same name, same server,
    :meth:`Dispatcher.keep_slots`): the calls still in flight on a replaced pool (it drains
    until the request deadline) hold their slots here, so they count against the new pool's
    limit. A lowered limit admits no new call until fewer calls than it hold a slot."""

    __slots__ = ("_waiters", "busy", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: slots held (on a parent's, its adapters' calls as well)
        self.used = 0
        #: this expert's own calls holding their slots: in progress, streams until their end
        self.busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        """Whether an acquire would wait (a free slot goes to the calls already waiting)."""
        return self.used >= self.limit or bool(self._waiters)

    async def acquire(self) -> None:
        if not self.locked():
            self.used += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # given a slot as it was cancelled: the next waiter's
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
                self._wake()
            raise

    def release(self) -> None:
        self.used -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        """A new ``max_concurrency``: it applies to the next admissions, the slots held
        count against it."""
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.used < self.limit:
            fut = waiters.popleft()
            if not fut.done():
                self.used += 1
                fut.set_result(None)


class ExpertPool:
    def __init__(self, expert: ExpertConfig, bases: list[str]) -> None:
        self.expert = expert
        self.replicas = [Replica(b) for b in bases]
        #: its ``max_concurrency`` slots, kept across reloads (:meth:`Dispatcher.keep_slots`)
        self.slots = Slots(expert.max_concurrency)
        #: the pools whose slots a call takes, in order: its own; for a LoRA adapter on its
        #: parent's server, its parent's (the server's limit), after its own only where its
        #: ``max_concurrency`` was set explicitly (set by the Dispatcher)
        self.gates: list[ExpertPool] = [self]
        #: replica base -> LoRA adapters resident there (configured on the base expert)
        self.resident: dict[str, set[str]] = {b.rstrip("/"): set(a) for b, a in
                                              expert.resident_adapters.items()}
        #: the expert whose server the replicas are, and so whose credentials every call
        #: carries: the expert itself, or a LoRA adapter's parent (set by the Dispatcher)
        self.server = expert
        #: replica base -> the call's headers, built once (a key named by ``api_key_env`` is
        #: read at each call instead: the environment may change)
        self._headers: dict[str, dict[str, str]] = {}

    @property
    def busy(self) -> int:
        """Calls to this expert holding their slots: in progress, streams until their end."""
        return self.slots.busy

    def headers(self, base: str) -> dict[str, str]:
        h = self._headers.get(base)
        if h is None:
            h = self.server.upstream_headers(base)
            if not self.server.api_key_env:
                self._headers[base] = h
        return h

    def order(self, key: bytes, adapter: str | None = None) -> list[Replica]:
        """Replicas in the order to try them: affinity + power of two choices first."""
        reps = self.replicas
        if len(reps) == 1:
            return list(reps)
        if adapter is not None:
            preferred = [r for r in reps if adapter in self.resident.get(r.base, ())]
            if preferred:
                rest = [r for r in reps if r not in preferred]
                return self._p2c(preferred, key) + rest
        return self._p2c(reps, key)

    @staticmethod
    def _p2c(reps: list[Replica], key: bytes) -> list[Replica]:
        if len(reps) == 1:
            return list(reps)
        # no key: two random choices (a constant key would send everything to one pair)
        d = hashlib.blake2b(key, digest_size=8).digest() if key else random.randbytes(8)
        i = int.from_bytes(d[:4], "little") % len(reps)
        j = int.from_bytes(d[4:], "little") % (len(reps) - 1)
        j = j if j < i else j + 1
        a, b = reps[i], reps[j]
        first, second = (a, b) if a.inflight <= b.inflight else (b, a)
        rest = [r for r in reps if r is not first and r is not second]
        random.shuffle(rest)
        return [first, second, *rest]


class Lease:
    """One call's hold on its replica (``inflight``, which the replica choice reads) and on
    one of its expert's ``max_concurrency`` slots, from before the call until its answer
    ends. A non-streamed call's is released when the call returns; a stream's goes with its
    :class:`UpstreamReply` and is released by the reader (``reply.ended()`` at ``[DONE]``,
    ``reply.release()`` in the response writer's ``finally``), so a stream counts for as
    long as the upstream works on it. :meth:`release` is idempotent; a lease dropped
    unreleased (a reader that never released its reply: a bug) is released when collected,
    with a warning, so that a slot can never stay taken for ever."""

    __slots__ = ("held", "loop", "pool", "rep")

    def __init__(self, pool: ExpertPool, rep: Replica, loop: asyncio.AbstractEventLoop
                 ) -> None:
        self.pool = pool
        self.rep: Replica | None = rep
        self.loop = loop
        #: the slots (of ``pool.gates``) one of which this call holds
        self.held: tuple[Slots, ...] = ()
        rep.inflight += 1

    async def acquire(self, deadline: float) -> bool:
        """Take a slot of each of ``pool.gates`` (the expert's; an adapter's parent's),
        waiting until ``deadline`` (time.monotonic()) when all are taken; True when it
        waited. On a timeout or a cancellation no slot stays taken."""
        waited = False
        try:
            for gate in self.pool.gates:
                slots = gate.slots
                if slots.locked():
                    waited = True
                    try:
                        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                            await slots.acquire()
                    except TimeoutError:
                        raise UpstreamTimeout(
                            f"request deadline exceeded while waiting for one of "
                            f"{gate.expert.name}'s {slots.limit} concurrency "
                            "slots", code="deadline_exceeded") from None
                else:
                    await slots.acquire()  # a free slot: taken without suspending
                self.held = (*self.held, slots)
        except BaseException:
            held, self.held = self.held, ()
            for slots in held:
                slots.release()
            raise
        self.pool.slots.busy += 1
        return waited

    def free_slot(self) -> None:
        held = self.held
        if held:
            self.held = ()
            self.pool.slots.busy -= 1
            for slots in held:
                slots.release()

    def release(self) -> None:
        rep = self.rep
        if rep is not None:
            self.rep = None
            self.free_slot()
            rep.inflight -= 1

    def __del__(self) -> None:
        if self.rep is None:
            return
        log.warning("a call to %s at %s was released by no reader: giving its slot back",
                    self.pool.expert.name, self.rep.base)
        # at the loop's next turn, not inside whatever the collector interrupted (possibly
        # the semaphore's own bookkeeping, possibly on another thread)
        pool, rep, held = self.pool, self.rep, self.held
        self.rep = None
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(_give_back, pool, rep, held)


def _give_back(pool: ExpertPool, rep: Replica, held: tuple[Slots, ...]) -> None:
    rep.inflight -= 1
    if held:
        pool.slots.busy -= 1
        for slots in held:
            slots.release()


class Dispatcher:
    def __init__(self, config: GatewayConfig, metrics: Metrics,
                 retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.retry = retry or RetryPolicy()
        self.http: UpstreamHTTP | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pools: dict[str, ExpertPool] = {}
        #: (expert, replica) -> the circuit gauge's last value: set only when it changes
        self._circuit: dict[tuple[str, str], float] = {}
        for e in config.experts:
            bases = e.bases
            if not bases and e.parent is not None:
                parent = config.expert(e.parent)
                bases = parent.bases if parent is not None else []
            self.pools[e.name] = ExpertPool(e, bases)
        # adapters share their parent's replicas and breakers: one server, one health state
        for e in config.experts:
            if e.parent is not None and not e.bases and e.parent in self.pools:
                self.pools[e.name].replicas = self.pools[e.parent].replicas
                # ... and its credentials (api_key_env, URL user:password): vLLM started with
                # --api-key refuses an adapter's call that lacks them (401)
                self.pools[e.name].server = self.pools[e.parent].server
                merged = dict(self.pools[e.parent].resident)
                for b, names in self.pools[e.name].resident.items():
                    merged[b] = merged.get(b, set()) | names
                self.pools[e.name].resident = merged
                # ... and its capacity: the parent's slots bound the server's calls, the
                # adapter's own only where it set max_concurrency itself (not the default)
                own = "max_concurrency" in e.model_fields_set
                self.pools[e.name].gates = [*([self.pools[e.name]] if own else []),
                                            self.pools[e.parent]]

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.http = UpstreamHTTP(self.loop, keepalive_s=30.0)
        # started when it goes into service (at start-up, or a reload's new pool): /metrics
        # reads the running pool's slots
        self.metrics.upstream_inflight_source = self.slots_in_use

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None

    def keep_slots(self, old: Dispatcher) -> None:
        """Take over the concurrency slots of the experts that ``old`` (the pool a reload
        replaces) also has on the same servers (name and replica URLs, in any order), each
        with this configuration's ``max_concurrency``: the calls in flight there keep
        counting against the limit, instead of the new pool admitting a full limit of its
        own beside them (twice the limit at the server until the old pool drained). A LoRA
        adapter's calls take its parent's slots, so they are kept with the parent's. Call it
        once this pool is started, just before it goes into service: from then the old
        pool's waiters are admitted under the new limit too."""
        for name, pool in self.pools.items():
            was = old.pools.get(name)
            # the same servers, in whatever order the file now lists them
            if was is not None and sorted(r.base for r in was.replicas) == sorted(
                    r.base for r in pool.replicas):
                was.slots.resize(pool.expert.max_concurrency)
                pool.slots = was.slots

    def keep_replicas(self, old: Dispatcher) -> None:
        """Take over the replicas that ``old`` (the pool a reload replaces) has for the same
        expert at the same URL, the objects themselves: their in-flight counts, which the
        calls and streams still running on the old pool give back, so that the replica
        choice sees them, and their circuit breakers (an open circuit stays open, a
        half-open one keeps its probe, whose verdict lands here). A replica that is new, or
        an expert's moved to another URL, starts fresh. A LoRA adapter on its parent's
        replicas keeps them with the parent's. Call it before this pool goes into
        service; the calls it then makes cost no more than before."""
        pools = self.pools
        for name, pool in pools.items():
            parent = pool.expert.parent
            if parent is not None and parent in pools and pool.replicas is pools[parent].replicas:
                continue  # kept with its parent's (the list is the parent's)
            was = old.pools.get(name)
            if was is None:
                continue
            kept = {r.base: r for r in was.replicas}
            # in place: the adapters' pools share this list
            pool.replicas[:] = [kept.pop(r.base, r) for r in pool.replicas]

    def balances(self, chain: Sequence[str]) -> bool:
        """Whether an expert of ``chain`` has replicas to choose between (by affinity)."""
        pools = self.pools
        return any(len(pools[n].replicas) > 1 for n in chain if n in pools)

    def slots_in_use(self) -> list[tuple[str, int]]:
        """(expert, calls holding one of its ``max_concurrency`` slots) for each expert."""
        return [(name, pool.busy) for name, pool in self.pools.items()]

    def replica_states(self) -> dict[str, list[dict[str, Any]]]:
        return {name: [{"base": r.base, "inflight": r.inflight, "circuit": r.breaker.state}
                       for r in pool.replicas] for name, pool in self.pools.items()}

    async def call(self, chain: Sequence[str], path: str, payload: dict[str, Any],
                   body_for: Any, *, stream: bool, affinity: bytes, deadline: float,
                   on_try: Callable[[str, str], None] | None = None,
                   parents: bool = False) -> DispatchResult:
        """Try the experts of ``chain`` in order; return the first reply that started.

        ``body_for(expert)`` returns the request bytes for that expert (model name rewritten);
        ``on_try(expert, replica)``, when given, is told of each attempt as it starts (what a
        request cancelled mid-call was waiting for). ``parents`` (a routed request): a LoRA
        adapter that no replica has loaded (404) is followed by its base model, before the
        rest of the chain, whose next target may be an adapter for another task.
        Raises UpstreamError subclasses when every target failed, or passes a 4xx through.
        """
        assert self.http is not None and self.loop is not None, "dispatcher not started"
        loop = self.loop
        attempts: list[Attempt] = []
        last: UpstreamFailure | None = None
        #: the expert and replica of the last 404: its answer, when nothing else answers
        missing: tuple[ExpertConfig, str] | None = None
        #: the first expert's refusal of what its dialect cannot carry (an image part to a
        #: llama.cpp server): the answer when no later expert of the chain can serve it
        unsupported: UnsupportedByExpert | None = None
        retry = self.retry
        t_first = time.monotonic()
        todo = list(chain)  # the experts to try, in order (``parents``: with a base model)
        for k, name in enumerate(todo):  # (todo grows only after position k)
            pool = self.pools[name]
            expert = pool.expert
            adapter = expert.name if expert.parent is not None else None
            body: bytes | None = None
            order = pool.order(affinity, adapter)
            is_last = k == len(todo) - 1
            tried = 0
            i = 0
            while tried < retry.attempts_per_expert and i < len(order) * retry.attempts_per_expert:
                rep = order[i % len(order)]
                again = i >= len(order)  # every replica had its turn: this retries one
                i += 1
                wait_asked = 0.0  # the seconds the replica asked to wait (its retry-after)
                if again:
                    # Retry a replica already tried only when nothing else is left to try, or
                    # when it asked for it (429/503): otherwise the fallback is the faster way
                    # to an answer.
                    asked = last is not None and last.status in (429, 503)
                    # a replica that refused the gateway's credentials refuses them again,
                    # one without the model (404) still lacks it, and one that answered
                    # what the protocol does not allow (no event stream, not JSON, an error
                    # event) received the request, may have billed it and answers it alike
                    if last is None or last.kind in ("auth", "not_found", "protocol",
                                                     "too_large") or not (is_last or asked):
                        break
                    wait_asked = retry_after_s(last.retry_after) if asked else 0.0
                    if wait_asked > retry.max_backoff_s:
                        # it asked for more time than a retry here waits: a retry at once
                        # is refused again (one more call against its limit); the fallback,
                        # or its own answer and retry-after, goes to the client now
                        break
                    if time.monotonic() - t_first > retry.budget_s:
                        break  # retry budget spent
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout("request deadline exceeded", code="deadline_exceeded")
                if tried > 0 and again:
                    await asyncio.sleep(min(max(retry.backoff(tried - 1), wait_asked),
                                            max(remaining / 2, 0.0)))
                    remaining = deadline - time.monotonic()
                if body is None and expert.kind == "openai":
                    # before the breaker is asked: a request that cannot be serialised (too
                    # deeply nested) fails here without taking a half-open probe slot
                    try:
                        body = body_for(expert)
                    except UnsupportedByExpert as e:
                        # this expert's server cannot read it; the chain's next may (a
                        # fallback serving images): a fallback, nothing sent, no breaker
                        attempts.append(Attempt(name, "", "unsupported", 0.0, 400))
                        unsupported = unsupported or e
                        break
                if not rep.breaker.allow():
                    if not again:
                        attempts.append(Attempt(name, rep.base, "circuit_open", 0.0))
                    continue
                probe = rep.breaker.probing
                tried += 1
                if on_try is not None:
                    on_try(name, rep.base)
                t0 = time.perf_counter()
                queue_ms = 0.0
                lease = Lease(pool, rep, loop)
                kept = False
                try:
                    if await lease.acquire(deadline):
                        remaining = deadline - time.monotonic()
                        t1 = time.perf_counter()  # the wait for a slot is not upstream time
                        queue_ms, t0 = (t1 - t0) * 1000, t1
                    if expert.kind == "openai":
                        assert body is not None
                        reply = await call_openai(self.http, expert, rep.base, path,
                                                  body, stream=stream,
                                                  timeout_s=min(expert.timeout_s, remaining),
                                                  headers=pool.headers(rep.base),
                                                  loop=self.loop)
                    else:
                        reply = await call_litellm(expert, rep.base, payload, stream=stream,
                                                   timeout_s=min(expert.timeout_s, remaining),
                                                   path=path, loop=loop)
                    if reply.stream:
                        # the stream's reader holds it from here on, to the stream's end
                        reply.hold(lease)
                        kept = True
                except UpstreamFailure as f:
                    lease.free_slot()  # the replica stays counted while a probe asks it
                    ms = (time.perf_counter() - t0) * 1000
                    if f.retryable and f.status == 500 and expert.kind == "openai":
                        try:
                            healthy = await self._replica_healthy(pool, rep, path, deadline)
                        except asyncio.CancelledError:
                            if probe:
                                rep.breaker.abandon()
                            raise
                        if healthy:
                            f.retryable = False
                            f.kind = "request_error"
                    self.metrics.upstream_errors.labels(name, f.kind).inc()
                    attempts.append(Attempt(name, rep.base, f.kind, ms, f.status, queue_ms))
                    if f.kind == "not_found":
                        # the replica answered: it is up, it lacks this model (an adapter
                        # not loaded there). Never a breaker failure: adapters share their
                        # parent's breaker, and one missing adapter must not cut the others
                        log.warning("upstream %s at %s: model %s not found there", name,
                                    rep.base, expert.upstream_model)
                        rep.breaker.success()
                        self._breaker_metric(name, rep)
                        last, missing = f, (expert, rep.base)
                        continue
                    if not f.retryable:
                        # the client's error: says nothing about the replica's health
                        log.info("upstream %s at %s rejected the request: %s", name, rep.base, f)
                        rep.breaker.success()
                        return DispatchResult(expert, rep.base, UpstreamReply(
                            f.status or 502, "application/json",
                            error_body(f.body or b"", f.status, expert.name, rep.base,
                                       credentials(pool.headers(rep.base)))),
                            attempts)
                    log.warning("upstream %s at %s failed: %s", name, rep.base, f)
                    rep.breaker.failure()
                    self._breaker_metric(name, rep)
                    last = f
                    continue
                except BaseException:
                    # cancelled (client gone) or a bug: no verdict on the replica's health
                    if probe:
                        rep.breaker.abandon()
                    raise
                finally:
                    if not kept:
                        lease.release()
                ms = (time.perf_counter() - t0) * 1000
                rep.breaker.success()
                self._breaker_metric(name, rep)
                outcome = "ok" if reply.status < 400 else "client_error"
                attempts.append(Attempt(name, rep.base, outcome, ms, reply.status, queue_ms))
                return DispatchResult(expert, rep.base, reply, attempts)
            parent = expert.parent
            if parents and parent is not None and missing is not None and missing[0] is expert and \
                    parent in self.pools and parent not in todo[:k + 1]:
                if parent in todo:
                    todo.remove(parent)
                todo.insert(k + 1, parent)
        if last is None and unsupported is not None and all(
                a.outcome == "unsupported" for a in attempts):
            raise unsupported
        if last is None:
            # the client's SDK honours retry-after: the wait until the first circuit of the
            # chain lets a probe through, not an immediate retry into open circuits
            now = time.monotonic()
            wait = min((rep.breaker.open_until - now for name in chain
                        for rep in self.pools[name].replicas), default=0.0)
            raise UpstreamUnavailable(
                "no upstream available: every replica of " + ", ".join(chain) +
                " has an open circuit", code="circuit_open",
                headers={"retry-after": str(max(1, math.ceil(wait)))})
        if last.kind == "not_found" and missing is not None:
            # the last expert tried lacks its model: its own 404 answer, as an expert named
            # by the client that is not on its server always answered (nothing retried it)
            return DispatchResult(missing[0], missing[1], UpstreamReply(
                404, "application/json", last.body or b""), attempts)
        # expert names and outcomes only: replica addresses are in the log, never in replies
        summary = "; ".join(f"{a.expert} {a.outcome}" + (f" {a.status}" if a.status else "")
                            for a in attempts)
        msg = (f"all upstreams failed ({len(attempts)} attempt(s): {summary}); last: "
               f"{attempts[-1].expert if attempts else chain[-1]} {last.public}")
        if last.kind == "timeout":
            raise UpstreamTimeout(msg)
        if last.kind in ("protocol", "too_large"):
            raise UpstreamUnavailable(msg, code="upstream_protocol_error")
        if last.kind == "auth":  # the gateway's credentials, not the client's key
            # which no retry mends: the OpenAI SDK is told not to send it again
            raise UpstreamUnavailable(msg, code="upstream_auth_failed",
                                      headers={"x-should-retry": "false"})
        if last.status == 429:
            # the last expert asked for time: the client gets the same answer and the same
            # wait (its SDK honours retry-after), not a 502 it retries at once
            err = UpstreamUnavailable(msg, code="upstream_rate_limited", headers={
                "retry-after": last.retry_after} if last.retry_after else None)
            err.status = 429
            raise err
        # a 503 that said how long (a server loading its model): the SDK waits that long
        # before it retries the 502, instead of its own half second
        raise UpstreamUnavailable(msg, headers={"retry-after": last.retry_after}
                                  if last.status == 503 and last.retry_after else None)

    async def _replica_healthy(self, pool: ExpertPool, rep: Replica, path: str,
                               deadline: float) -> bool:
        """After a 500: does a minimal request of the same kind succeed on this replica?"""
        if time.monotonic() - rep.healthy_at.get(path, -1e9) < REQUEST_FAULT_TTL_S:
            return True
        fut = rep.probes.get(path)
        if fut is None:
            fut = asyncio.ensure_future(self._probe(pool, rep, path, deadline))
            rep.probes[path] = fut
            fut.add_done_callback(lambda _f: rep.probes.pop(path, None))
        return await asyncio.shield(fut)

    async def _probe(self, pool: ExpertPool, rep: Replica, path: str, deadline: float
                     ) -> bool:
        assert self.http is not None
        expert = pool.expert
        body = orjson.dumps({"model": expert.upstream_model,
                             **_PROBE_BODIES.get(path, _PROBE_BODIES["/chat/completions"])})
        timeout = max(min(expert.timeout_s, 10.0, deadline - time.monotonic()), 0.1)
        try:
            await call_openai(self.http, expert, rep.base, path, body, stream=False,
                              timeout_s=timeout, headers=pool.headers(rep.base))
        except UpstreamFailure as f:
            log.warning("upstream %s at %s: the health probe after a 500 failed too (%s): "
                        "counting it as the replica's failure", expert.name, rep.base, f)
            return False
        rep.healthy_at[path] = time.monotonic()
        return True

    def _breaker_metric(self, name: str, rep: Replica) -> None:
        v = 1.0 if rep.breaker.state == "open" else 0.0
        key = (name, rep.base)
        if self._circuit.get(key) != v:
            self._circuit[key] = v
            self.metrics.child(self.metrics.circuit_open, name, rep.base).set(v)
