"""The routing-log stream fits in the Redis that docker-compose.yml starts.

That Redis runs with ``--maxmemory`` and ``--maxmemory-policy volatile-lru``: only keys with
an expiry can be evicted (decision-cache entries, rate-limit windows), never the API keys or
the routing-log stream. The stream is capped by record count (``RedisStreamSink.maxlen``), so
its memory at the cap must leave room for the rest: a stream that outgrows ``maxmemory``
first evicts every rate-limit window (limits start over, silently) and then makes each write
fail with OOM (cache, limits and log all "Redis down"). Measured on a real redis-server with
records shaped like the gateway's own.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import yaml

from gateway.logs import LOG_STREAM, RedisStreamSink
from tests.integration.conftest import RedisServer

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"

#: a routing-log record as `expertgate serve` wrote it (a three-route semantic policy,
#: prompts not logged); request id, time and text hash vary per record below
RECORD: dict[str, Any] = {
    "request_id": "", "client_request_id": None, "ts": 0.0, "tenant": "team-a",
    "endpoint": "chat", "policy": "auto", "policy_version": "2bc2c2765682", "text_hash": "",
    "text": None, "mode": "single", "expert": "sql-lora",
    "replica": "http://vllm-llama:8000/v1", "targets": ["sql-lora", "qwen-7b", "llama-3b"],
    "scores": [0.81234, 0.028778, -0.026726],
    "reason": "route 'sql' (similarity 0.812 >= 0.300)",
    "guard": {"label": "sql", "ood_score": 0.0, "threshold": 0.55, "rejected": False,
              "reject_reason": None, "unsafe_score": None, "skipped": False, "stage": None},
    "cache": "miss", "status": "ok", "http_status": 200, "error_type": None,
    "fallback": False, "degraded": None, "decision_ms": 1.0775, "latency_ms": 412.3,
    "upstream_ms": 410.1, "queue_ms": 0.0, "prompt_tokens": 57, "completion_tokens": 212,
    "cost_usd": 0.000016, "stream": False, "arm": None, "propensity": 1.0,
    "action_probs": {"sql-lora": 1.0}, "explored": False, "greedy_expert": "sql-lora",
    "candidates": ["sql-lora", "qwen-7b", "llama-3b"], "router_version": "2bc2c2765682",
}

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
          "g": 1000**3, "gb": 1024**3}


def _compose_redis() -> dict[str, str]:
    """The redis service's ``--flag value`` pairs from docker-compose.yml."""
    cmd = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]
    args = [str(a) for a in cmd[1:]]
    return {args[i][2:]: args[i + 1] for i in range(0, len(args) - 1, 2)
            if args[i].startswith("--")}


def _bytes(size: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", size.strip().lower())
    assert m is not None and m.group(2) in _UNITS, size
    return int(m.group(1)) * _UNITS[m.group(2)]


async def _bytes_per_record(url: str, n: int) -> float:
    client = aioredis.Redis.from_url(url)
    try:
        sink = RedisStreamSink(client)
        rnd = random.Random(0)
        batch = []
        for i in range(n):
            rec = dict(RECORD, request_id=f"{rnd.getrandbits(192):048x}", ts=1.8e9 + i,
                       text_hash=f"{rnd.getrandbits(128):032x}")
            batch.append(orjson.dumps(rec))
        for i in range(0, n, 500):
            await sink.write(batch[i:i + 500])
        used = await client.memory_usage(LOG_STREAM, samples=0)
        assert await client.xlen(LOG_STREAM) == n
        return float(used) / n
    finally:
        await client.aclose()


def test_the_log_stream_at_its_cap_leaves_half_of_composes_redis_memory(
        redis_clean: RedisServer) -> None:
    flags = _compose_redis()
    # only keys with an expiry may be evicted: the stream and the API keys never are
    assert flags["maxmemory-policy"] == "volatile-lru", flags
    maxmemory = _bytes(flags["maxmemory"])
    per_record = asyncio.run(_bytes_per_record(redis_clean.url, 20_000))
    at_cap = RedisStreamSink.DEFAULT_MAXLEN * per_record
    assert at_cap <= maxmemory / 2, (
        f"at its cap of {RedisStreamSink.DEFAULT_MAXLEN:,} records of {per_record:.0f} bytes "
        f"the routing-log stream holds {at_cap / 2**30:.2f} GiB of the "
        f"{maxmemory / 2**30:.2f} GiB that docker-compose.yml gives Redis")
