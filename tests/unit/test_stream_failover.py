"""A stream that fails before its first token fails over, whichever network read it fails in.

Until a token (content, a tool call, a completion's text, a finish) has reached the client
nothing is committed: vLLM's role chunk (``delta: {"role": "assistant"}``) comes first, in
its own read, and an error event, a stall or an early end after it must count as the
replica's failure exactly as one in the first read does. Upstreams are scripted on loopback
(:class:`tests.doubles.sse_script.ScriptedSSE`); the fallback is the usual double.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from gateway import upstreams
from tests.doubles.sse_script import ScriptedSSE, chunk, completion_chunk, event
from tests.unit.gateway_helpers import base_config, chat, gateway_client

ROLE = chunk({"role": "assistant", "content": ""})
ERROR = event({"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                         "param": None, "code": 500}})
VLLM_OLD_ERROR = event({"object": "error", "message": "engine dead",
                        "type": "EngineDeadError", "param": None, "code": 500})
DONE = b"data: [DONE]\n\n"
#: long enough that the gateway reads the role chunk on its own first
PAUSE = 0.15
ROUTED = "fix this bug in my code"  # routed to the coder, the chatter its fallback


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


#: what differs between two identical requests: ids, clocks, timings
_VOLATILE_HEADERS = {"x-request-id", "x-expertgate-decision-ms", "date"}
_VOLATILE_FIELDS = {"request_id", "ts", "latency_ms", "upstream_ms", "decision_ms",
                    "ttft_ms", "duration_ms"}


async def _failover(scripted: ScriptedSSE, chatter: Any, tmp: Path, script: list[Any]
                    ) -> tuple[dict[str, str], str, dict[str, Any], str]:
    """One routed stream through a fresh gateway whose coder plays ``script``: the response
    headers, the streamed text (read with the OpenAI SDK), the log record, the metrics."""
    scripted.script = script
    tmp.mkdir()
    async with gateway_client(base_config(scripted.base, chatter.base), tmp) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                    http_client=c, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="auto", stream=True, messages=[{"role": "user", "content": ROUTED}])
        text = "".join([ch.choices[0].delta.content or "" async for ch in raw.parse()
                        if ch.choices])
        hdrs = {k: v for k, v in raw.headers.items() if k not in _VOLATILE_HEADERS}
        metrics = (await c.get("/metrics")).text
    (rec,) = _records(tmp / "log.jsonl")
    return hdrs, text, {k: v for k, v in rec.items() if k not in _VOLATILE_FIELDS}, metrics


def _upstream_lines(metrics: str) -> list[str]:
    return sorted(ln for ln in metrics.splitlines()
                  if ln.startswith(("expertgate_upstream_errors_total",
                                    "expertgate_fallbacks_total",
                                    "expertgate_degraded_total",
                                    "expertgate_requests_total")))


async def test_an_error_after_the_role_chunk_fails_over_as_one_in_the_first_read(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # vLLM sends the role chunk at once and its error event when generation fails: two reads
    # (the known defect: the client got a 200 stream that was only an error)
    _, chatter = ups
    first = await _failover(scripted, chatter, tmp_path / "first", [ERROR, DONE])
    second = await _failover(scripted, chatter, tmp_path / "second",
                             [ROLE, PAUSE, ERROR, DONE])
    hdrs, text, rec, metrics = second
    assert text == "answer from chatter-double (chatter)"
    assert hdrs["x-expertgate-expert"] == "chatter"
    assert "coder:protocol" in hdrs["x-expertgate-reason"]
    assert hdrs["x-expertgate-degraded"] == "expert-fallback"
    assert rec["fallback"] is True and rec["http_status"] == 200
    # the same headers, log record and counters as the failure within the first read
    assert second[:3] == first[:3]
    assert _upstream_lines(second[3]) == _upstream_lines(first[3])
    assert 'expertgate_upstream_errors_total{expert="coder",kind="protocol"} 1.0' in metrics
    assert len(scripted.received) == 2 and len(chatter.received) == 2


@pytest.mark.parametrize("script,kind", [
    ([ROLE, PAUSE, ERROR, DONE], "protocol"),
    ([ROLE, PAUSE, VLLM_OLD_ERROR, DONE], "protocol"),
    # role chunks of two choices (n=2), then the error
    ([ROLE, chunk({"role": "assistant"}, index=1), PAUSE, ERROR], "protocol"),
    ([ROLE, PAUSE, b": keep-alive\n\n", PAUSE, ERROR, DONE], "protocol"),
    ([ROLE, PAUSE], "protocol"),  # the body ends with no token and no [DONE]
    ([ROLE, PAUSE, "abort"], "protocol"),  # the connection cut
    ([ROLE, "hang"], "timeout"),  # no token within the expert's timeout_s
], ids=["error", "vllm-error", "two-roles", "comment", "end", "cut", "stall"])
async def test_a_failure_before_the_first_token_falls_back(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, script: list[Any], kind: str
        ) -> None:
    _, chatter = ups
    scripted.script = script
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 0.5
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert f"coder:{kind}" in r.headers["x-expertgate-reason"]
        assert b"CUDA" not in r.content and b"engine dead" not in r.content
        assert b'"role":"assistant","content":""' not in r.content  # nothing of the coder's
        assert r.content.rstrip().endswith(DONE.rstrip())
        # a named expert with nothing to fall back to: a clean error, never a 200 stream
        # that is only an error
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == (504 if kind == "timeout" else 502)
        assert r.json()["error"]["code"] == ("upstream_timeout" if kind == "timeout"
                                             else "upstream_protocol_error")
        metrics = (await c.get("/metrics")).text
    # the routed request's try, then the named expert's: a timeout's replica tried twice
    # (nothing else left), a protocol failure's once (it would answer the same again)
    tries = 3 if kind == "timeout" else 2
    assert f'expertgate_upstream_errors_total{{expert="coder",kind="{kind}"}} {tries}.0' \
        in metrics
    assert len(scripted.received) == tries
    recs = _records(tmp_path / "log.jsonl")
    assert [(x["expert"], x["http_status"], x["fallback"]) for x in recs] == [
        ("chatter", 200, True), (None, 504 if kind == "timeout" else 502, False)]


async def test_three_failures_after_the_role_chunk_open_the_circuit(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    scripted.script = [ROLE, PAUSE, ERROR, DONE]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
            assert r.headers["x-expertgate-expert"] == "chatter"
        r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
        assert "coder:circuit_open" in r.headers["x-expertgate-reason"]
    assert len(scripted.received) == 3


async def test_after_the_first_token_an_error_is_passed_on_as_it_came(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    body = [ROLE, PAUSE, chunk({"content": "Hel"}), PAUSE, ERROR, DONE]
    scripted.script = body
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        assert r.content == b"".join(s for s in body if isinstance(s, bytes))
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                    http_client=c, max_retries=0)
        got: list[str] = []
        with pytest.raises(openai.APIError, match="CUDA out of memory"):
            async for ch in await client.chat.completions.create(
                    model="coder", stream=True, messages=[{"role": "user", "content": "x"}]):
                got.append(ch.choices[0].delta.content or "")
        assert got == ["", "Hel"]  # the role chunk reached the client, in its place
    assert chatter.received == []
    assert [(x["http_status"], x["degraded"]) for x in _records(tmp_path / "log.jsonl")] == [
        (502, ["stream-error"])] * 2


@pytest.mark.parametrize("token", [
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"reasoning_content": "Let me"}),
    chunk({}, finish="stop"),  # an empty answer is an answer
], ids=["tool-call", "reasoning", "finish"])
async def test_a_tool_call_or_a_finish_is_a_token(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, token: bytes) -> None:
    _, chatter = ups
    body = [ROLE, PAUSE, token, PAUSE, ERROR, DONE]
    scripted.script = body
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == 200
        assert r.content == b"".join(s for s in body if isinstance(s, bytes))
    assert chatter.received == []


async def test_a_stream_without_errors_passes_through_unchanged(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # the role chunk waits for the first token, then both go on as the upstream sent them
    _, chatter = ups
    body = [ROLE, PAUSE, chunk({"content": "Hello"}), PAUSE, chunk({"content": " world"}),
            chunk({}, finish="stop"), DONE]
    scripted.script = body
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.content == b"".join(s for s in body if isinstance(s, bytes))
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        stream = await client.chat.completions.create(
            model="coder", stream=True, messages=[{"role": "user", "content": "x"}])
        assert "".join([ch.choices[0].delta.content or "" async for ch in stream]) == \
            "Hello world"
        # a role chunk and [DONE] alone: an empty answer, passed on (not a failure)
        scripted.script = [ROLE, PAUSE, DONE]
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == 200 and r.content == ROLE + DONE
    assert chatter.received == []
    assert [x["http_status"] for x in _records(tmp_path / "log.jsonl")] == [200] * 3


async def test_a_legacy_completion_stream_fails_before_its_first_text(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    _, chatter = ups
    scripted.script = [completion_chunk(""), PAUSE, ERROR, DONE]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                                  "stream": True})
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_protocol_error"
        body = [completion_chunk(""), PAUSE, completion_chunk("Once"), PAUSE, ERROR, DONE]
        scripted.script = body
        r = await c.post("/v1/completions", json={"model": "coder", "prompt": "x",
                                                  "stream": True})
        assert r.status_code == 200
        assert r.content == b"".join(s for s in body if isinstance(s, bytes))


async def test_what_is_held_before_the_first_token_is_bounded(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # an upstream that sends keep-alive comments for a long prefill: past the bound the
    # stream is committed (passed on as it comes), as before, rather than held indefinitely
    _, chatter = ups
    pings: list[Any] = []
    for _ in range(upstreams.HOLD_READS + 1):
        pings += [b": ping\n\n", 0.01]
    body = [ROLE, *pings, ERROR, DONE]
    scripted.script = body
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == 200
        assert r.content == b"".join(s for s in body if isinstance(s, bytes))
    assert [(x["http_status"], x["degraded"]) for x in _records(tmp_path / "log.jsonl")] == [
        (502, ["stream-error"])]


async def test_a_client_gone_before_the_first_token_is_no_failure_of_the_replica(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path) -> None:
    # cancelled while the role chunk is held: no verdict on the replica, nothing logged as
    # its failure
    _, chatter = ups
    scripted.script = [ROLE, "hang"]
    async with gateway_client(base_config(scripted.base, chatter.base), tmp_path) as (c, gw):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.post("/v1/chat/completions",
                                          json=chat("coder", "x", stream=True)), 0.3)
        assert all(r.breaker.failures == 0 and r.inflight == 0
                   for r in gw.dispatcher.pools["coder"].replicas)
        metrics = (await c.get("/metrics")).text
    assert 'expertgate_upstream_errors_total{expert="coder"' not in metrics
    assert chatter.received == []


async def test_a_litellm_expert_that_fails_after_its_role_chunk_falls_back(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # the same for a ``kind: litellm`` expert over an OpenAI-compatible server: LiteLLM
    # yields the role chunk, then raises on the error event
    _, chatter = ups
    monkeypatch.setenv("EG_TEST_LITE_KEY", "sk-lite-test")
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0].update(kind="litellm", model="openai/up-coder",
                             api_key_env="EG_TEST_LITE_KEY")
    async with gateway_client(cfg, tmp_path) as (c, _):
        scripted.script = [ROLE, PAUSE, ERROR, DONE]
        r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        # as an openai expert's error event before any token: the replica's protocol failure
        assert "coder:protocol" in r.headers["x-expertgate-reason"]
        assert b"CUDA" not in r.content and r.content.rstrip().endswith(DONE.rstrip())
        # after a token: the provider's error event is passed on, as an openai expert's is
        scripted.script = [ROLE, PAUSE, chunk({"content": "Hel"}), PAUSE, ERROR, DONE]
        r = await c.post("/v1/chat/completions", json=chat("auto", ROUTED, stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        events = [orjson.loads(ln[6:]) for ln in r.text.split("\n")
                  if ln.startswith("data: {")]
        assert [e["choices"][0]["delta"].get("content") for e in events[:2]] == ["", "Hel"]
        assert events[-1]["error"]["message"] == "CUDA out of memory"
        assert r.text.rstrip().endswith("data: [DONE]")
    assert [(x["http_status"], x["degraded"]) for x in _records(tmp_path / "log.jsonl")
            ][-1] == (502, ["stream-error"])
