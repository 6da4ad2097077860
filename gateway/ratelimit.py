"""Per-key rate limits: requests per minute and tokens per minute, shared by all replicas.

Algorithm: a sliding window of 60 one-second buckets per key and dimension. A request is
admitted when, for both dimensions, the sum over the last 60 seconds plus its cost stays
within the limit; then its cost is added to the current second's bucket. Unlike a token
bucket that starts full and refills, this never admits more than the limit in any 60-second
window (to one-second granularity), so N replicas on one Redis admit exactly one budget
(LiteLLM #27736: limits that multiply with the number of replicas).

With Redis, one Lua script reads, checks and increments both dimensions atomically using the
Redis server's clock (replicas' clocks do not matter). Key layout, one hash per key and
dimension, fields = epoch second, values = count::

    eg:rl:{<id>}:r   requests    eg:rl:{<id>}:t   tokens        (<id> = sha256[:16] of the key)

The ``{...}`` hash tag keeps both on one Redis Cluster slot. Each hash expires 61 s after its
last write, so idle keys cost nothing.

Tokens are charged up front from an estimate (prompt characters / 4 + ``max_tokens`` per
completion asked for: ``n``, ``best_of``, each prompt of a batch) and
reconciled after the response with the upstream's ``usage`` (the difference is added to the
same one-second bucket, so the window stays consistent).

Without Redis, or while Redis is down, the same algorithm runs in process: each replica then
enforces the whole budget on its own. The response header ``x-expertgate-ratelimit`` says
which (``redis`` or ``local``), as do the metric ``expertgate_ratelimit_decisions`` and a
warning in the log when Redis goes away and when it comes back. Redis is retried after
``retry_s``, so recovery needs no restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from gateway.cache import redis_error
from gateway.errors import RateLimited
from gateway.messages import MessageTexts, message_texts

__all__ = [
    "DEFAULT_COMPLETION_ESTIMATE",
    "Limits",
    "RateDecision",
    "RateLimiter",
    "estimate_prompt_tokens",
    "estimate_tokens",
]

log = logging.getLogger("expertgate.ratelimit")

WINDOW_S = 60
#: tokens assumed for the completion when the request names no max_tokens (reconciled later)
DEFAULT_COMPLETION_ESTIMATE = 256

# KEYS: requests hash, tokens hash. ARGV: rpm, tpm, token cost, window seconds (limits <= 0
# mean "no limit on this dimension"). Returns: allowed (0/1), failed dimension (0 none,
# 1 requests, 2 tokens), requests used, tokens used (after this request when allowed),
# retry-after ms, reset-requests ms, reset-tokens ms, the bucket second.
_ACQUIRE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[4])
local oldest = sec - window + 1
local function load(key, limit)
  local sum = 0
  local buckets = {}
  if limit <= 0 then return sum, buckets end
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local s = tonumber(flat[i])
    local v = tonumber(flat[i + 1])
    if s < oldest then
      redis.call('HDEL', key, flat[i])
    else
      sum = sum + v
      buckets[#buckets + 1] = {s, v}
    end
  end
  table.sort(buckets, function(a, b) return a[1] < b[1] end)
  return sum, buckets
end
local function wait_ms(buckets, sum, cost, limit)
  local need = sum + cost - limit
  if need <= 0 then return 0 end
  if cost > limit then return window * 1000 end
  for _, b in ipairs(buckets) do
    need = need - b[2]
    if need <= 0 then return math.ceil((b[1] + window - now) * 1000) end
  end
  return window * 1000
end
local function reset_ms(buckets)
  if #buckets == 0 then return 0 end
  return math.ceil((buckets[1][1] + window - now) * 1000)
end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local rsum, rb = load(KEYS[1], rpm)
local tsum, tb = load(KEYS[2], tpm)
local rwait = 0
local twait = 0
if rpm > 0 then rwait = wait_ms(rb, rsum, 1, rpm) end
if tpm > 0 then twait = wait_ms(tb, tsum, cost, tpm) end
if rwait > 0 or twait > 0 then
  local failed = 1
  if rwait <= 0 then failed = 2 end
  return {0, failed, rsum, tsum, math.max(rwait, twait), reset_ms(rb), reset_ms(tb), sec}
end
if rpm > 0 then
  redis.call('HINCRBY', KEYS[1], tostring(sec), 1)
  redis.call('PEXPIRE', KEYS[1], (window + 1) * 1000)
  rsum = rsum + 1
  if #rb == 0 then rb = {{sec, 1}} end
end
if tpm > 0 and cost > 0 then
  redis.call('HINCRBY', KEYS[2], tostring(sec), cost)
  redis.call('PEXPIRE', KEYS[2], (window + 1) * 1000)
  tsum = tsum + cost
  if #tb == 0 then tb = {{sec, cost}} end
end
return {1, 0, rsum, tsum, 0, reset_ms(rb), reset_ms(tb), sec}
"""

# KEYS: tokens hash. ARGV: bucket second, delta, window. Adds the correction to the bucket
# the estimate went to, unless that bucket already left the window.
_RECONCILE = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local b = tonumber(ARGV[1])
if b < sec - tonumber(ARGV[3]) + 1 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], (tonumber(ARGV[3]) + 1) * 1000)
return 1
"""


@dataclass(frozen=True)
class Limits:
    """A key's budget per minute; ``None`` means unlimited on that dimension."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


@dataclass
class RateDecision:
    allowed: bool
    backend: str
    limits: Limits
    requests_used: int
    tokens_used: int
    retry_after_s: float
    reset_requests_s: float
    reset_tokens_s: float
    bucket: int
    cost: int
    failed: str = ""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI-style ``x-ratelimit-*`` headers (plus which backend decided)."""
        h = [(b"x-expertgate-ratelimit", self.backend.encode())]
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        if rpm is not None:
            h += [(b"x-ratelimit-limit-requests", str(rpm).encode()),
                  (b"x-ratelimit-remaining-requests",
                   str(max(rpm - self.requests_used, 0)).encode()),
                  (b"x-ratelimit-reset-requests", f"{self.reset_requests_s:.3f}s".encode())]
        if tpm is not None:
            h += [(b"x-ratelimit-limit-tokens", str(tpm).encode()),
                  (b"x-ratelimit-remaining-tokens",
                   str(max(tpm - self.tokens_used, 0)).encode()),
                  (b"x-ratelimit-reset-tokens", f"{self.reset_tokens_s:.3f}s".encode())]
        return h

    def error(self, prompt_tokens: int | None = None) -> RateLimited:
        """The refusal. ``prompt_tokens``: the prompt's part of the request's estimate, to say
        which part is too large when no wait can admit the request."""
        retry = max(1, math.ceil(self.retry_after_s))
        tpm = self.limits.tokens_per_minute
        never = self.failed == "tokens" and tpm is not None and self.cost > tpm
        if never and tpm is not None:
            # OpenAI's words for a request larger than the TPM limit (also a 429 there), then
            # which part of it is: retrying or waiting cannot help
            msg = (f"Request too large for this key on tokens per min (TPM): Limit {tpm}, "
                   f"Requested {self.cost}. ")
            if prompt_tokens is not None and prompt_tokens > tpm:
                msg += (f"The request's prompt alone (estimated {prompt_tokens} tokens) "
                        f"exceeds the key's per-minute token limit of {tpm}, so it can never "
                        "be admitted: shorten the prompt.")
            else:
                msg += ("The prompt's estimate plus the completion budget exceed the key's "
                        f"per-minute token limit of {tpm}, so the request can never be "
                        "admitted as it is: lower max_tokens (when the request sends none, "
                        f"{DEFAULT_COMPLETION_ESTIMATE} are counted; it counts once per "
                        "completion: n, best_of, each prompt of a batch).")
        elif self.failed == "tokens":
            msg = (f"rate limit reached: {tpm} tokens per minute; retry after {retry}s")
        else:
            msg = (f"rate limit reached: {self.limits.requests_per_minute} requests per "
                   f"minute; retry after {retry}s")
        # a request no wait admits: no retry-after, and x-should-retry: false, which the
        # OpenAI SDKs obey before their own rule (they retry every 429, with or without a
        # retry-after)
        headers = {"x-should-retry": "false"} if never else {"retry-after": str(retry)}
        for k, v in self.headers():
            headers[k.decode()] = v.decode()
        return RateLimited(msg, code=f"rate_limit_{self.failed or 'requests'}",
                           headers=headers)


def estimate_prompt_tokens(payload: dict[str, Any], texts: MessageTexts | None = None) -> int:
    """The prompt's part of :func:`estimate_tokens` (an embedding request's whole estimate)."""
    if texts is None:
        msgs = payload.get("messages")
        texts = message_texts(msgs) if isinstance(msgs, list) else []
    chars = sum(len(t) for _, t in texts)
    tokens = 0  # a prompt of token ids counts itself
    p = payload.get("prompt")
    if isinstance(p, str):
        chars += len(p)
    elif isinstance(p, list):
        for x in p:
            if isinstance(x, str):
                chars += len(x)
            else:
                tokens += len(x) if isinstance(x, list) else 1
    inp = payload.get("input")  # embeddings: no completion
    if isinstance(inp, str):
        return len(inp) // 4 + 1
    if isinstance(inp, list):
        return sum(len(x) // 4 if isinstance(x, str) else
                   len(x) if isinstance(x, list) else 1 for x in inp) + 1
    return chars // 4 + tokens + 1


def estimate_tokens(payload: dict[str, Any], cap: int | None = None,
                    texts: MessageTexts | None = None) -> int:
    """An up-front token estimate: prompt characters / 4 plus the completion budget.
    ``texts``: the messages' :func:`~gateway.messages.message_texts` when the caller holds
    them (else they are extracted here)."""
    prompt = estimate_prompt_tokens(payload, texts)
    if "input" in payload and isinstance(payload["input"], (str, list)):
        return prompt  # embeddings: no completion
    out = payload.get("max_completion_tokens") or payload.get("max_tokens")
    if not isinstance(out, int) or isinstance(out, bool) or out < 1:
        out = DEFAULT_COMPLETION_ESTIMATE
    if cap is not None:
        out = min(out, cap)
    return prompt + out * _completions(payload)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _completions(payload: dict[str, Any]) -> int:
    """How many completions the request asks for, each up to its completion budget, as
    OpenAI counts them: ``n`` (``best_of`` when larger: a completion generates that many)
    per prompt of a batch (a list of texts or of token-id lists; one list of token ids is
    one prompt). ``n: 100`` was charged as one completion: a key's TPM bought 100 times it."""
    n = max(_count(payload.get("n")), _count(payload.get("best_of")))
    p = payload.get("prompt")
    if isinstance(p, list) and p and isinstance(p[0], (str, list)):
        n *= len(p)
    return n


class _LocalWindow:
    """The same sliding window in process: second -> count, oldest first."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: OrderedDict[int, int] = OrderedDict()

    def load(self, oldest: int) -> int:
        b = self.buckets
        while b and next(iter(b)) < oldest:
            b.popitem(last=False)
        return sum(b.values())

    def wait(self, used: int, cost: int, limit: int, now: float) -> float:
        need = used + cost - limit
        if need <= 0:
            return 0.0
        if cost > limit:
            return float(WINDOW_S)
        for s, v in self.buckets.items():
            need -= v
            if need <= 0:
                return s + WINDOW_S - now
        return float(WINDOW_S)

    def reset(self, now: float) -> float:
        if not self.buckets:
            return 0.0
        return next(iter(self.buckets)) + WINDOW_S - now

    def add(self, sec: int, n: int) -> None:
        self.buckets[sec] = self.buckets.get(sec, 0) + n


class RateLimiter:
    """Checks and charges a key's budget; Redis when given and up, in process otherwise."""

    def __init__(self, redis: Any = None, registry: Any = None, *, retry_s: float = 1.0,
                 max_local_keys: int = 100_000) -> None:
        self.redis = redis
        self.retry_s = retry_s
        self.max_local_keys = max_local_keys
        self._down_until = 0.0
        self._redis_ok = True
        self._local: OrderedDict[str, tuple[_LocalWindow, _LocalWindow]] = OrderedDict()
        self._acquire: Any = None
        self._reconcile: Any = None
        self._decisions: Any = None
        self._redis_up: Any = None
        self._pending: set[asyncio.Task[None]] = set()
        if registry is not None:
            self._decisions = Counter("expertgate_ratelimit_decisions",
                                      "Rate-limit checks by backend and result",
                                      ["backend", "result"], registry=registry)
            self._redis_up = Gauge("expertgate_ratelimit_shared",
                                   "1 while rate limits are shared through Redis, 0 while "
                                   "each replica limits on its own", registry=registry,
                                   # with serve --workers N: each worker's, with its pid
                                   multiprocess_mode="liveall")
        self.attach_redis(redis)

    def attach_redis(self, redis: Any) -> None:
        """Share limits through ``redis`` from now on (``None``: in process only)."""
        self.redis = redis
        if redis is not None:
            # Script objects run EVALSHA and reload the script after a Redis restart
            self._acquire = redis.register_script(_ACQUIRE)
            self._reconcile = redis.register_script(_RECONCILE)
        if self._redis_up is not None:
            self._redis_up.set(1.0 if redis is not None else 0.0)

    @property
    def backend(self) -> str:
        if self.redis is None or time.monotonic() < self._down_until:
            return "local"
        return "redis"

    def _redis_failed(self, e: Exception) -> None:
        if self._redis_ok:
            log.warning("rate limits: Redis unavailable (%s); limiting in process (per "
                        "replica) and retrying Redis every %.1fs", redis_error(e),
                        self.retry_s)
        self._redis_ok = False
        self._down_until = time.monotonic() + self.retry_s
        if self._redis_up is not None:
            self._redis_up.set(0.0)

    def _redis_back(self) -> None:
        # Redis answered: shared limits from now on, whatever a check in flight beside this
        # one met (a burst's connect timeout); not per process until retry_s ran out
        self._down_until = 0.0
        if not self._redis_ok:
            log.warning("rate limits: Redis is back; limits are shared again")
        self._redis_ok = True
        if self._redis_up is not None:
            self._redis_up.set(1.0)

    async def acquire(self, ident: str, limits: Limits, tokens: int) -> RateDecision:
        """Admit and charge one request of ``tokens`` estimated tokens, or refuse it."""
        tokens = max(int(tokens), 0)
        d: RateDecision | None = None
        if self.backend == "redis":
            try:
                d = await self._acquire_redis(ident, limits, tokens)
            except Exception as e:  # redis raises many types; any of them means "down"
                self._redis_failed(e)
            else:
                self._redis_back()
        if d is None:
            d = self._acquire_local(ident, limits, tokens)
        if self._decisions is not None:
            self._decisions.labels(d.backend, "allowed" if d.allowed else "limited").inc()
        return d

    async def _acquire_redis(self, ident: str, limits: Limits, tokens: int) -> RateDecision:
        keys = [f"eg:rl:{{{ident}}}:r", f"eg:rl:{{{ident}}}:t"]
        res = await self._acquire(keys=keys, args=[limits.requests_per_minute or 0,
                                                   limits.tokens_per_minute or 0, tokens,
                                                   WINDOW_S])
        ok, failed, rused, tused, wait, rreset, treset, sec = (int(x) for x in res)
        return RateDecision(bool(ok), "redis", limits, rused, tused, wait / 1000,
                            rreset / 1000, treset / 1000, sec, tokens,
                            {0: "", 1: "requests", 2: "tokens"}[failed])

    def _acquire_local(self, ident: str, limits: Limits, tokens: int) -> RateDecision:
        wins = self._local.get(ident)
        if wins is None:
            wins = (_LocalWindow(), _LocalWindow())
            self._local[ident] = wins
            while len(self._local) > self.max_local_keys:
                self._local.popitem(last=False)
        else:
            self._local.move_to_end(ident)
        rw, tw = wins
        now = time.time()
        sec = int(now)
        oldest = sec - WINDOW_S + 1
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        rused = rw.load(oldest) if rpm else 0
        tused = tw.load(oldest) if tpm else 0
        rwait = rw.wait(rused, 1, rpm, now) if rpm else 0.0
        twait = tw.wait(tused, tokens, tpm, now) if tpm else 0.0
        if rwait > 0 or twait > 0:
            return RateDecision(False, "local", limits, rused, tused, max(rwait, twait),
                                rw.reset(now), tw.reset(now), sec, tokens,
                                "requests" if rwait > 0 else "tokens")
        if rpm:
            rw.add(sec, 1)
            rused += 1
        if tpm and tokens:
            tw.add(sec, tokens)
            tused += tokens
        return RateDecision(True, "local", limits, rused, tused, 0.0, rw.reset(now),
                            tw.reset(now), sec, tokens)

    async def reconcile(self, ident: str, decision: RateDecision, actual_tokens: int) -> None:
        """Correct the up-front token charge with what the upstream reported."""
        delta = int(actual_tokens) - decision.cost
        if decision.allowed and delta and decision.limits.tokens_per_minute:
            await self._adjust(ident, decision, 1, delta)

    async def refund(self, ident: str, decision: RateDecision) -> None:
        """Give back the request an admitted ``decision`` charged: the request was refused
        afterwards on its token budget (checked once its body is read) and never served."""
        if decision.allowed and decision.limits.requests_per_minute:
            await self._adjust(ident, decision, 0, -1)

    async def _adjust(self, ident: str, decision: RateDecision, window: int, delta: int
                      ) -> None:
        """Add ``delta`` to the bucket ``decision`` charged in window ``window`` (0 requests,
        1 tokens), where the charge was made: Redis or this process."""
        if decision.backend == "redis":
            if self.backend != "redis":
                return  # the charge is in Redis, which is down: it expires there by itself
            try:
                await self._reconcile(keys=[f"eg:rl:{{{ident}}}:{'rt'[window]}"],
                                      args=[decision.bucket, delta, WINDOW_S])
            except Exception as e:  # same as acquire: Redis down is not the request's fault
                self._redis_failed(e)
            return
        wins = self._local.get(ident)
        if wins is not None and decision.bucket in wins[window].buckets:
            wins[window].add(decision.bucket, delta)

    def reconcile_soon(self, ident: str, decision: RateDecision, actual_tokens: int) -> None:
        """:meth:`reconcile` in a background task, off the response path."""
        task = asyncio.get_running_loop().create_task(
            self.reconcile(ident, decision, actual_tokens))
        # keep a reference until done, or the task may be garbage-collected mid-flight
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for pending reconciliations (at shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
