"""One canary test for the whole deployment: per-arm counts and the revert shared in Redis.

Every process (``serve --workers N`` workers, gateway replicas on one Redis) counts its own
requests and ratings in its :class:`~gateway.canary.CanaryMonitor` and, every
``canary_sync_s`` (at once after a revert), sends what it observed since and reads back the
totals in one script call (:meth:`CanarySync.flush`): no Redis round trip on the request
path. The test then runs on the totals plus what the process observed since, so a canary
reverts on the evidence of all processes, and a revert decided anywhere is recorded once
(``SET NX``: its reason, signal, time and the process that decided it) and honoured by every
process at its next flush. Key layout (one ``{canary}`` hash tag: one Redis Cluster slot, so
one script may touch them all)::

    eg:{canary}:<key>:counts     hash: i:n i:e i:fn i:fs c:n c:e c:fn c:fs
                                 (arm: requests, errors, ratings, sum of ratings)
    eg:{canary}:<key>:reverted   the revert record (JSON)
    eg:{canary}:req:<bucket>     request id -> "<key>|<arm>[|<rating>|<its time>]", one hash per
                                 BUCKET_S of arrival, kept FEEDBACK_WINDOW_S

``<key>`` names the policy and the candidate's identity (artifact, family, parameters,
revert settings): a reload that changes the candidate starts fresh counts. A rating may
reach another process than the one that answered: the script finds the request's canary and
arm in the request buckets, and a request counts once however often (and wherever) it is
rated. A rating whose request is not there yet (its process has not flushed) is tried again
at the next few flushes.

Redis unavailable: nothing is lost or blocks a request; the observations wait (bounded) and
the test runs on the totals last read plus this process's observations (``counts: local``
in ``/admin/state``, ``x-expertgate-degraded: canary-local``, ``expertgate_canary_shared``
0, a warning), until a flush succeeds again.

Redis lost the counts (restarted without persistence, flushed): each flush sends the totals
its process last read, and the script puts them back when the counts hash is missing, before
adding anything, so the first process to flush restores them (a warning says so) and the
others only add theirs: the test goes on with its evidence rather than starting over once per
restart (each fresh start is another chance at ``alpha`` of a false revert, and delays the
revert of a bad candidate by ``min_samples`` requests). What other processes had added after
that process's last read is lost (at most ``canary_sync_s`` of their traffic), as are the
request buckets: a rating of a request answered before the loss no longer counts.

An operator's end of a candidate (``expertgate policy promote|revert``, shadow or canary)
is recorded for every gateway too: ``eg:{canary}:ended:<key>`` (JSON: policy, action,
candidate identity, time), ``<key>`` as above but for any candidate, not only a canary with
``auto_revert``. Every process reads the records of its candidates at each exchange (one
``MGET`` per ``canary_sync_s``, none on the request path), drops a candidate so ended and
re-reads its configuration file (:meth:`gateway.app.Gateway._apply_ended`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.canary import CanaryMonitor, _Stats

__all__ = ["BUCKET_S", "FEEDBACK_WINDOW_S", "CanarySync", "FlushResult", "candidate_identity",
           "candidate_key", "counts_key", "ended_key", "read_ended", "record_end"]

log = logging.getLogger("expertgate.canary")

PREFIX = "eg:{canary}:"
#: arrival-time buckets of the request -> arm map
BUCKET_S = 600
#: how long after its answer a request's rating still counts for the canary
FEEDBACK_WINDOW_S = 3600
_BUCKETS = FEEDBACK_WINDOW_S // BUCKET_S + 1
#: counts and revert records expire this long after the last process that runs the canary
STATE_TTL_S = 30 * 86400
#: flushes a rating of a request that no process has shared yet is tried at
FEEDBACK_TRIES = 5
MAX_PENDING_REQUESTS = 100_000
MAX_PENDING_FEEDBACK = 10_000

_ARM_CODE = {"incumbent": "i", "canary": "c"}

# KEYS: the request buckets, newest first (ARGV[1] of them), then per canary its counts and
# revert keys. ARGV[2]: JSON {arms: [[rid, "key|a"]...], fb: [[rid, score]...],
# canaries: [[i_n, i_e, c_n, c_e, revert JSON or "", seed]...], bucket_ttl, state_ttl,
# prefix}; seed: the totals this process last read, as a flat HSET field/value list ([] when
# none), written only where the counts hash is missing (Redis lost it), before anything adds
# to it. A request's rating replaces an earlier one (by the time each was received,
# wherever). Returns: the ratings whose request is in no bucket, then per canary its counts
# (HGETALL), its revert record ("" when none) and 1 where this call restored its counts.
_FLUSH = """
local nb = tonumber(ARGV[1])
local p = cjson.decode(ARGV[2])
local restored = {}
for i, c in ipairs(p.canaries) do
  local ck = KEYS[nb + 2 * i - 1]
  restored[i] = 0
  if #c[6] > 0 and redis.call('EXISTS', ck) == 0 then
    redis.call('HSET', ck, unpack(c[6]))
    restored[i] = 1
  end
end
for _, a in ipairs(p.arms) do redis.call('HSET', KEYS[1], a[1], a[2]) end
if #p.arms > 0 then redis.call('PEXPIRE', KEYS[1], p.bucket_ttl) end
local unknown = {}
for _, f in ipairs(p.fb) do
  local rid, score = f[1], tonumber(f[2])
  local found = nil
  for b = 1, nb do
    local v = redis.call('HGET', KEYS[b], rid)
    if v then found = {b, v} break end
  end
  if found then
    local part = {}
    for x in string.gmatch(found[2], '[^|]+') do part[#part + 1] = x end
    local key, arm, prev, prev_ts = part[1], part[2], part[3], tonumber(part[4] or '0')
    local ck = p.prefix .. key .. ':counts'
    if prev == nil or prev_ts <= tonumber(f[3]) then
      redis.call('HSET', KEYS[found[1]], rid, key .. '|' .. arm .. '|' .. f[2] .. '|' .. f[3])
      if prev == nil then
        redis.call('HINCRBY', ck, arm .. ':fn', 1)
        redis.call('HINCRBYFLOAT', ck, arm .. ':fs', f[2])
      else
        redis.call('HINCRBYFLOAT', ck, arm .. ':fs', score - tonumber(prev))
      end
      redis.call('PEXPIRE', ck, p.state_ttl)
    end
  else
    unknown[#unknown + 1] = rid
  end
end
local counts = {}
local reverts = {}
for i, c in ipairs(p.canaries) do
  local ck, rk = KEYS[nb + 2 * i - 1], KEYS[nb + 2 * i]
  if c[1] ~= 0 then redis.call('HINCRBY', ck, 'i:n', c[1]) end
  if c[2] ~= 0 then redis.call('HINCRBY', ck, 'i:e', c[2]) end
  if c[3] ~= 0 then redis.call('HINCRBY', ck, 'c:n', c[3]) end
  if c[4] ~= 0 then redis.call('HINCRBY', ck, 'c:e', c[4]) end
  if c[5] ~= '' then redis.call('SET', rk, c[5], 'NX') end
  redis.call('PEXPIRE', ck, p.state_ttl)
  redis.call('PEXPIRE', rk, p.state_ttl)
  counts[i] = redis.call('HGETALL', ck)
  reverts[i] = redis.call('GET', rk) or ''
end
return {unknown, counts, reverts, restored}
"""


def counts_key(key: str) -> str:
    return f"{PREFIX}{key}:counts"


def candidate_identity(cand: Any, version: str) -> str:
    """A candidate's identity, from its configuration (``CandidateConfig``) and its
    artifact's version (:func:`routers.artifacts.artifact_version`): what the gateway
    (:func:`gateway.pipeline._candidate`) and ``expertgate policy`` (the record it leaves for
    every gateway) both name it by."""
    own = f"{version}:{cand.router}:".encode() + orjson.dumps(cand.params,
                                                              option=orjson.OPT_SORT_KEYS)
    ar = cand.auto_revert
    return hashlib.sha256(own + f":{cand.mode}:{ar.enabled}:{ar.margin}:{ar.alpha}:"
                          f"{ar.min_samples}".encode()).hexdigest()[:12]


def candidate_key(policy: str, identity: str) -> str:
    """The shared state's name for ``policy``'s candidate (a canary monitor's ``key``)."""
    return hashlib.sha256(f"{policy}\0{identity}".encode()).hexdigest()[:16]


def ended_key(policy: str, identity: str) -> str:
    return f"{PREFIX}ended:{candidate_key(policy, identity)}"


def record_end(redis: Any, policy: str, identity: str, action: str) -> dict[str, Any]:
    """Record (synchronous client) that an operator ended ``policy``'s candidate; returns
    the record."""
    rec = {"policy": policy, "identity": identity, "action": action, "ts": time.time(),
           "by": f"expertgate policy {action}"}
    redis.set(ended_key(policy, identity), orjson.dumps(rec), ex=STATE_TTL_S)
    return rec


async def read_ended(redis: Any, candidates: Sequence[tuple[str, str]]
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    """The end records of ``candidates`` ((policy, identity) pairs): one MGET; raises what
    Redis raised."""
    if not candidates:
        return {}
    raw = await redis.mget([ended_key(p, i) for p, i in candidates])
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for pair, v in zip(candidates, raw, strict=True):
        if not v:
            continue
        try:
            got = orjson.loads(v)
        except orjson.JSONDecodeError:
            got = None
        out[pair] = got if isinstance(got, dict) else {"policy": pair[0], "action": "end"}
    return out


def _totals(flat: Sequence[Any]) -> dict[str, _Stats]:
    """HGETALL of a counts hash -> per-arm totals."""
    got = {(k.decode() if isinstance(k, bytes) else str(k)): v
           for k, v in zip(flat[::2], flat[1::2], strict=True)}
    out: dict[str, _Stats] = {}
    for arm, a in _ARM_CODE.items():
        out[arm] = _Stats(int(got.get(f"{a}:n", 0)), int(got.get(f"{a}:e", 0)),
                          int(got.get(f"{a}:fn", 0)), float(got.get(f"{a}:fs", 0.0)))
    return out


def _seed(read: dict[str, _Stats]) -> list[str]:
    """Totals last read -> the HSET field/value list that puts them back ([] when none)."""
    if not any(s.n or s.fb_n for s in read.values()):
        return []
    out: list[str] = []
    for arm, a in _ARM_CODE.items():
        s = read[arm]
        out += [f"{a}:n", str(s.n), f"{a}:e", str(s.errors), f"{a}:fn", str(s.fb_n),
                f"{a}:fs", repr(s.fb_sum)]
    return out


@dataclass
class FlushResult:
    """One canary after a flush: ``signal`` when the shared totals revert it here,
    ``record`` the revert recorded in Redis (None when none), ``restored`` when Redis had
    lost its counts and this flush put back the totals this process last read."""

    monitor: CanaryMonitor
    signal: str | None
    record: dict[str, Any] | None
    restored: bool = False


class CanarySync:
    """What this process has to tell Redis about its canaries, and the call that does it."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        #: this process, in the revert records it writes
        self.token = os.urandom(8).hex()
        self.available = True
        self._script = redis.register_script(_FLUSH)
        self._requests: list[list[str]] = []
        #: (request id, rating, when it was received, flushes that did not find it)
        self._feedback: list[tuple[str, float, float, int]] = []
        #: observations dropped while Redis was unavailable (the bounds above)
        self.dropped = 0

    def note_request(self, monitor: CanaryMonitor, request_id: str, arm: str) -> None:
        """A request answered beside ``monitor``'s canary (its counts are in the monitor):
        remember its arm for ratings that reach another process."""
        self._requests.append([request_id, f"{monitor.key}|{_ARM_CODE[arm]}"])
        if len(self._requests) > MAX_PENDING_REQUESTS:
            del self._requests[:len(self._requests) - MAX_PENDING_REQUESTS]
            self.dropped += 1

    def note_feedback(self, request_id: str, score: float) -> None:
        """A rating of a request that may have been beside a canary, in any process."""
        self._feedback.append((request_id, float(score), time.time(), 0))
        if len(self._feedback) > MAX_PENDING_FEEDBACK:
            del self._feedback[:len(self._feedback) - MAX_PENDING_FEEDBACK]
            self.dropped += 1

    @property
    def idle(self) -> bool:
        return not self._requests and not self._feedback

    async def flush(self, monitors: Sequence[CanaryMonitor]) -> list[FlushResult]:
        """Add what was observed here to the shared counts, record this process's reverts,
        and read every canary's totals and revert back: one script call. Raises what Redis
        raised (nothing is lost: the observations wait for the next call)."""
        requests, self._requests = self._requests, []
        feedback, self._feedback = self._feedback, []
        taken = [m.take_pending() for m in monitors]
        bucket = int(time.time() // BUCKET_S)
        keys = [f"{PREFIX}req:{bucket - i}" for i in range(_BUCKETS)]
        canaries = []
        for m, t in zip(monitors, taken, strict=True):
            keys += [counts_key(m.key), f"{PREFIX}{m.key}:reverted"]
            rec = m.record if m.reverted is not None and m.record is not None else None
            if rec is not None and "by" not in rec:
                rec = m.record = {**rec, "by": self.token}
            canaries.append([t["incumbent"].n, t["incumbent"].errors, t["canary"].n,
                             t["canary"].errors, orjson.dumps(rec).decode() if rec else "",
                             _seed(m.last_read())])
        payload = {"arms": requests, "fb": [[rid, repr(s), repr(ts)] for rid, s, ts, _ in feedback],
                   "canaries": canaries, "bucket_ttl": (FEEDBACK_WINDOW_S + BUCKET_S) * 1000,
                   "state_ttl": STATE_TTL_S * 1000, "prefix": PREFIX}
        try:
            unknown, counts, reverts, restored = await self._script(
                keys=keys, args=[_BUCKETS, orjson.dumps(payload).decode()])
        except BaseException:
            self._requests[:0] = requests
            self._feedback[:0] = feedback
            for m, t in zip(monitors, taken, strict=True):
                m.restore_pending(t)
            raise
        missing = {r.decode() if isinstance(r, bytes) else str(r) for r in unknown}
        self._feedback[:0] = [(rid, s, ts, n + 1) for rid, s, ts, n in feedback
                              if rid in missing and n + 1 < FEEDBACK_TRIES]
        out = []
        for m, flat, raw, back in zip(monitors, counts, reverts, restored, strict=True):
            if back:
                read = m.last_read()
                log.warning("canary %s: Redis had lost the shared counts (restarted without "
                            "persistence?); restored the totals this process last read "
                            "(incumbent %d, canary %d requests), so the test goes on with them",
                            m.key, read["incumbent"].n, read["canary"].n)
            signal = m.absorb(_totals(flat))
            record = None
            if raw:
                try:
                    got = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    got = None
                record = got if isinstance(got, dict) else None
            out.append(FlushResult(m, signal, record, bool(back)))
        return out
