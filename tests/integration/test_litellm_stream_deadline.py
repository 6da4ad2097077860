"""A ``kind: litellm`` expert's stream gets the gateway's own per-read deadline, the expert's
``timeout_s``, as an ``openai`` expert's does: a stall before the first token fails over with
the same headers, routing-log record, breaker count and counters; a stall after it ends the
stream with the same error event. A real LiteLLM call (its ``openai/`` provider) to a
scripted server on 127.0.0.1; the gateway in process. Bounded: a few requests, each stall
cut at 0.5 s, every request given 10 s at most."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.doubles.sse_script import ScriptedSSE, chunk
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_stream_failover import _upstream_lines

pytestmark = [pytest.mark.integration,
              # pydantic warns (once per process) when LiteLLM's streaming builds a schema
              # of its TypedDicts with ``ReadOnly`` items; pytest turns warnings into errors
              pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")]

KEY_ENV = "EG_TEST_LITE_KEY"
ROLE = chunk({"role": "assistant", "content": ""})
TOKEN = chunk({"content": "Hel"})
PAUSE = 0.15
ROUTED = "fix this bug in my code"  # routed to the coder, the chatter its fallback
#: what differs between two identical requests: ids, clocks, timings
_VOLATILE_HEADERS = {"x-request-id", "x-expertgate-decision-ms", "date", "content-length"}
_VOLATILE_FIELDS = {"request_id", "ts", "latency_ms", "upstream_ms", "decision_ms",
                    "ttft_ms", "duration_ms", "queue_ms"}


async def _stream(kind: str, scripted: ScriptedSSE, chatter: Any, tmp: Path,
                  script: list[Any]) -> dict[str, Any]:
    """One routed stream through a fresh gateway whose coder (``kind``: openai or litellm,
    ``timeout_s`` 0.5) plays ``script``: what the client, the log, the breaker and /metrics
    saw."""
    scripted.script = script
    tmp.mkdir()
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 0.5
    if kind == "litellm":
        cfg["experts"][0].update(kind="litellm", model="openai/up-coder", api_key_env=KEY_ENV)
    async with gateway_client(cfg, tmp) as (c, gw):
        r = await asyncio.wait_for(
            c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True)), 10)
        (rep,) = gw.dispatcher.pools["coder"].replicas
        failures = rep.breaker.failures
        metrics = (await c.get("/metrics")).text
    (rec,) = [orjson.loads(x) for x in (tmp / "log.jsonl").read_bytes().splitlines()]
    return {"status": r.status_code,
            "headers": {k: v for k, v in r.headers.items() if k not in _VOLATILE_HEADERS},
            # LiteLLM re-encodes the provider's events: their text and the gateway's error
            "events": [e.get("error") or [c["delta"].get("content") for c in e["choices"]]
                       for e in (orjson.loads(ln[6:]) for ln in r.text.split("\n")
                                 if ln.startswith("data: {"))],
            "done": r.text.rstrip().endswith("data: [DONE]"),
            "record": {k: v for k, v in rec.items() if k not in _VOLATILE_FIELDS},
            "breaker_failures": failures, "metrics": _upstream_lines(metrics)}


async def test_a_litellm_stream_that_stalls_before_its_first_token_fails_over_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    _, chatter = ups
    http = await _stream("openai", scripted, chatter, tmp_path / "http", [ROLE, "hang"])
    lite = await _stream("litellm", scripted, chatter, tmp_path / "lite", [ROLE, "hang"])
    assert http["headers"]["x-expertgate-expert"] == "chatter"
    assert "coder:timeout" in http["headers"]["x-expertgate-reason"]
    assert http["status"] == 200 and http["done"]
    assert 'expertgate_upstream_errors_total{expert="coder",kind="timeout"} 1.0' in \
        http["metrics"]
    for k in http:
        assert lite[k] == http[k], k


async def test_a_litellm_stream_that_stalls_after_its_first_token_ends_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    _, chatter = ups
    script = [ROLE, PAUSE, TOKEN, "hang"]
    http = await _stream("openai", scripted, chatter, tmp_path / "http", script)
    lite = await _stream("litellm", scripted, chatter, tmp_path / "lite", script)
    assert http["headers"]["x-expertgate-expert"] == "coder"
    assert http["events"][:2] == [[""], ["Hel"]]
    assert http["events"][-1]["code"] == "stream_interrupted"
    assert http["record"]["http_status"] == 502
    for k in http:
        assert lite[k] == http[k], k


def test_litellms_own_timeout_is_the_experts_failure_not_the_requests() -> None:
    # LiteLLM's timeout (a backstop past the gateway's deadlines) carries status 408: a
    # timeout to fail over, never the client's error passed on as it came
    import litellm

    from gateway.config import parse_config
    from gateway.upstreams import _litellm_failure

    cfg = parse_config({"experts": [{"name": "lite", "kind": "litellm",
                                     "model": "openai/m", "api_base": "http://127.0.0.1:1/v1"}]})
    f = _litellm_failure(cfg.experts[0], litellm.Timeout("slow", model="m",
                                                         llm_provider="openai"), 0.5)
    assert (f.kind, f.retryable, f.public) == ("timeout", True, "sent no data within 0.5s")
