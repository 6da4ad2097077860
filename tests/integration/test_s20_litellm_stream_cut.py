"""A ``kind: litellm`` expert's stream that is cut is reported as an ``openai`` expert's is.

LiteLLM ends every stream it wraps with a chunk of its own whose ``finish_reason`` is
``stop`` when the provider sent none, so a provider stream that ended early (no finish
reason on any chunk: the body ended, or the connection dropped) reached the client as a
whole answer, logged 200 with nothing degraded and nothing counted. Before a token it must
fail over (``coder:protocol``), after it end with the ``stream_interrupted`` error event,
logged 502 ``stream-cut``, ``expertgate_upstream_errors_total{kind="stream_cut"}``: the same
headers, events, routing-log record, breaker count and counters as the same script played
to an ``openai`` expert. A real LiteLLM call (its ``openai/`` provider) to a scripted double
on 127.0.0.1; the gateway in process; every request given 10 s at most.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.doubles.sse_script import ScriptedSSE, chunk, completion_chunk, event
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_stream_failover import _upstream_lines

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")]

KEY_ENV = "EG_TEST_LITE_KEY"
ROLE = chunk({"role": "assistant", "content": ""})
TOKEN = chunk({"content": "Hel"})
FINISH = chunk({}, finish="stop")
DONE = b"data: [DONE]\n\n"
PAUSE = 0.15
ROUTED = "fix this bug in my code"  # routed to the coder, the chatter its fallback
_VOLATILE_HEADERS = {"x-request-id", "x-expertgate-decision-ms", "date", "content-length"}
_VOLATILE_FIELDS = {"request_id", "ts", "latency_ms", "upstream_ms", "decision_ms",
                    "ttft_ms", "duration_ms", "queue_ms"}


async def _play(kind: str, scripted: ScriptedSSE, chatter: Any, tmp: Path,
                script: list[Any], *, model: str = "auto", path: str = "/chat/completions"
                ) -> dict[str, Any]:
    """One stream through a fresh gateway whose coder (``kind``: openai or litellm) plays
    ``script``: what the client, the routing log, the breaker and /metrics saw."""
    scripted.script = script
    tmp.mkdir()
    cfg = base_config(scripted.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 5  # LiteLLM's first call in a process imports a lot
    if kind == "litellm":
        cfg["experts"][0].update(kind="litellm", model="openai/up-coder", api_key_env=KEY_ENV)
    if path == "/chat/completions":
        body = chat(model, ROUTED, stream=True)
    else:
        body = {"model": model, "prompt": ROUTED, "stream": True}
    async with gateway_client(cfg, tmp) as (c, gw):
        r = await asyncio.wait_for(c.post("/v1" + path, json=body), 10)
        (rep,) = gw.dispatcher.pools["coder"].replicas
        failures = rep.breaker.failures
        metrics = (await c.get("/metrics")).text
    (rec,) = [orjson.loads(x) for x in (tmp / "log.jsonl").read_bytes().splitlines()]
    events: list[Any] = []
    for ln in r.text.split("\n"):
        if ln.startswith("data: {"):
            e = orjson.loads(ln[6:])
            # LiteLLM re-encodes the provider's events: their text and the gateway's error
            events.append(e.get("error") or [c.get("text", (c.get("delta") or {}).get(
                "content")) for c in e["choices"]])
    return {"status": r.status_code,
            "headers": {k: v for k, v in r.headers.items() if k not in _VOLATILE_HEADERS},
            "body": r.json() if not r.headers["content-type"].startswith(
                "text/event-stream") else None,
            "events": events, "done": r.text.rstrip().endswith("data: [DONE]"),
            "record": {k: v for k, v in rec.items() if k not in _VOLATILE_FIELDS},
            "breaker_failures": failures, "metrics": _upstream_lines(metrics)}


async def _both(scripted: ScriptedSSE, chatter: Any, tmp: Path, script: list[Any],
                **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    http = await _play("openai", scripted, chatter, tmp / "http", script, **kw)
    lite = await _play("litellm", scripted, chatter, tmp / "lite", script, **kw)
    return http, lite


def _same(http: dict[str, Any], lite: dict[str, Any]) -> None:
    for k in http:
        assert lite[k] == http[k], k


@pytest.mark.parametrize("script,said", [
    ([ROLE, PAUSE, TOKEN], "ended without data: [DONE]"),  # the body ends, no finish
    ([ROLE, PAUSE, TOKEN, PAUSE, "abort"], "ended unexpectedly (ResponseIncomplete)"),
], ids=["ended", "dropped"])
async def test_a_litellm_stream_cut_after_its_first_token_ends_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        script: list[Any], said: str) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, script)
    assert http["headers"]["x-expertgate-expert"] == "coder"
    assert http["events"][:2] == [[""], ["Hel"]]
    assert http["events"][-1]["code"] == "stream_interrupted"
    assert http["events"][-1]["message"] == f"upstream stream from coder {said}"
    assert not http["done"]
    assert http["record"]["http_status"] == 502
    assert http["record"]["degraded"] == ["stream-cut"]
    assert 'expertgate_upstream_errors_total{expert="coder",kind="stream_cut"} 1.0' in \
        http["metrics"]
    # the client saw no finish LiteLLM made up, and no [DONE]
    assert [None] not in lite["events"]
    _same(http, lite)


@pytest.mark.parametrize("script", [
    [ROLE, PAUSE],  # the body ends with the role chunk alone
    [ROLE, PAUSE, "abort"],  # the connection drops after it
    [],  # an empty event stream
], ids=["ended", "dropped", "empty"])
async def test_a_litellm_stream_cut_before_its_first_token_fails_over_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        script: list[Any]) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, script)
    assert http["status"] == 200 and http["done"]
    assert http["headers"]["x-expertgate-expert"] == "chatter"
    assert "coder:protocol" in http["headers"]["x-expertgate-reason"]
    assert http["headers"]["x-expertgate-degraded"] == "expert-fallback"
    assert 'expertgate_upstream_errors_total{expert="coder",kind="protocol"} 1.0' in \
        http["metrics"]
    _same(http, lite)
    assert len(scripted.received) == 2  # once per gateway: a protocol failure is not retried


@pytest.mark.parametrize("script", [[ROLE, PAUSE], [ROLE, PAUSE, "abort"], []],
                         ids=["ended", "dropped", "empty"])
async def test_a_named_litellm_expert_cut_before_its_first_token_answers_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        script: list[Any]) -> None:
    # nothing to fall back to: the same 502 upstream_protocol_error, never a 200 stream
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, script, model="coder")
    assert http["status"] == 502
    assert http["body"]["error"]["code"] == "upstream_protocol_error"
    _same(http, lite)


NOT_JSON = b"data: {nope\n\n"


async def test_a_litellm_event_that_is_not_json_ends_the_stream_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # after a token: the stream_invalid event (it was 'ended unexpectedly
    # (MidStreamFallbackError)', counted as a cut)
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path,
                             [ROLE, PAUSE, TOKEN, PAUSE, NOT_JSON, DONE])
    assert http["events"][-1]["code"] == "stream_invalid"
    assert http["record"]["degraded"] == ["stream-invalid"]
    assert 'expertgate_upstream_errors_total{expert="coder",kind="stream_invalid"} 1.0' in \
        http["metrics"]
    _same(http, lite)


@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_a_litellm_event_that_is_not_json_before_a_token_fails_over_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model: str) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, [ROLE, PAUSE, NOT_JSON, DONE],
                             model=model)
    assert 'expertgate_upstream_errors_total{expert="coder",kind="protocol"} 1.0' in \
        http["metrics"]
    _same(http, lite)


async def test_a_whole_litellm_stream_is_still_an_answer(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # the finish the provider sent is passed on once, the stream ends with [DONE], 200
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, [ROLE, PAUSE, TOKEN, FINISH, DONE])
    assert http["status"] == 200 and http["done"]
    assert http["events"] == [[""], ["Hel"], [None]]
    assert http["record"]["http_status"] == 200
    _same(http, lite)


@pytest.mark.parametrize("end", [[], [PAUSE, "abort"]], ids=["ended", "dropped"])
async def test_a_litellm_completions_stream_cut_ends_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        end: list[Any]) -> None:
    # /v1/completions (litellm.atext_completion reads the same kind of stream through
    # generators of its own)
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    script = [completion_chunk("Hel"), PAUSE, completion_chunk("lo"), *end]
    http, lite = await _both(scripted, ups[1], tmp_path, script, model="coder",
                             path="/completions")
    assert http["events"][-1]["code"] == "stream_interrupted"
    assert http["record"]["http_status"] == 502
    assert lite["events"][-1] == http["events"][-1]
    assert lite["record"] == http["record"]
    assert lite["metrics"] == http["metrics"]


async def test_vllms_error_object_after_a_token_is_no_whole_litellm_answer(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # vLLM's older error event ({"object": "error", ...}) when generation dies: LiteLLM
    # drops it and ends the stream with its made-up finish, so the client got a 200 answer
    # that just stopped. It is a failed stream now (an openai expert passes the event on:
    # stream-error with its type; LiteLLM keeps nothing of it, so here it reads as a cut)
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    dead = event({"object": "error", "message": "engine dead", "type": "EngineDeadError",
                  "param": None, "code": 500})
    lite = await _play("litellm", scripted, ups[1], tmp_path / "lite",
                       [ROLE, PAUSE, TOKEN, PAUSE, dead, DONE])
    assert lite["events"][:2] == [[""], ["Hel"]]
    assert lite["events"][-1]["code"] == "stream_interrupted"
    assert not lite["done"]
    assert lite["record"]["http_status"] == 502
    assert lite["record"]["degraded"] == ["stream-cut"]


#: OpenAI's error event (vLLM's since 0.6 when generation fails): the OpenAI SDK inside
#: LiteLLM raises it as an APIError, which LiteLLM calls an APIConnectionError
OOM = event({"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                       "param": None, "code": 500}})


async def test_a_litellm_error_event_after_a_token_is_passed_on_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # it was the gateway's stream_interrupted, logged as a cut; an openai expert's error event
    # reaches the client as the provider wrote it, logged 502 stream-error
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, [ROLE, PAUSE, TOKEN, PAUSE, OOM, DONE])
    assert http["events"][:2] == [[""], ["Hel"]]
    assert http["events"][-1]["message"] == "CUDA out of memory"
    assert http["record"]["http_status"] == 502
    assert http["record"]["degraded"] == ["stream-error"]
    _same(http, lite)


@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_a_litellm_error_event_before_a_token_fails_over_as_http(
        scripted: ScriptedSSE, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model: str) -> None:
    # it was 'coder:status' (a 500 retried as the replica's status failure); an openai
    # expert's is the replica's protocol failure, named by the event's code
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    http, lite = await _both(scripted, ups[1], tmp_path, [ROLE, PAUSE, OOM, DONE], model=model)
    assert 'expertgate_upstream_errors_total{expert="coder",kind="protocol"} 1.0' in \
        http["metrics"]
    _same(http, lite)
