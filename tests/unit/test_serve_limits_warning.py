"""``serve --workers N`` without Redis enforces each key's limits per worker process (N times
the budget: a 30-a-minute key answered 60 a minute through two workers); it said nothing at
start-up, while a canary in the same situation gets a warning."""

from __future__ import annotations

from expertgate.cli.serve import per_process_limits
from gateway.config import Settings, parse_config


def _cfg() -> dict:
    return {"embedder": {"kind": "hashing"},
            "experts": [{"name": "a", "api_base": "http://127.0.0.1:9/v1"}],
            "api_keys": [{"name": "free", "sha256": "a" * 64, "requests_per_minute": 30},
                         {"name": "paid", "sha256": "b" * 64, "tokens_per_minute": 1000},
                         {"name": "ops", "sha256": "c" * 64, "admin": True}]}


def test_limits_per_worker_without_redis_are_a_start_up_warning() -> None:
    cfg = parse_config(_cfg(), "gw.yaml")
    lines = per_process_limits(cfg, Settings(workers=2))
    assert len(lines) == 2
    assert "api_keys[0](free)" in lines[0] and "2 x" in lines[0] and "--redis-url" in lines[0]
    assert "api_keys[1](paid)" in lines[1]
    assert per_process_limits(cfg, Settings(workers=1)) == []
    assert per_process_limits(cfg, Settings(workers=2, redis_url="redis://127.0.0.1/0")) == []
