"""Defects of issue 19 at the gateway/upstream boundary, against upstream doubles.

A request-caused 500 never trips a circuit, is never retried or failed over, and comes back
as the upstream's own error; no client-facing text names an upstream address; a 200 with
broken JSON (or SSE) is a protocol failure; the max_tokens cap covers max_completion_tokens;
pass-through traffic spreads over replicas while a shared prefix keeps its replica; an
ensemble is paid for in full, survives its aggregator, and lists its members; usage is
reported for streams whose upstream sends none; /v1/embeddings passes through.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.request.dispatch import affinity_key
from routers.artifacts import save_router
from routers.base import RoutingTable, make_router
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client, sse_data


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def _json_schema(body: dict[str, Any]) -> bool:
    return (body.get("response_format") or {}).get("type") == "json_schema"


SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


async def test_request_caused_500_never_opens_the_circuit_retries_or_fails_over(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.reject_if = chatter.reject_if = _json_schema
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, gw):
        for _ in range(5):  # more than the breaker's threshold of 3
            r = await c.post("/v1/chat/completions", json=chat(
                "auto", "fix this bug in my code", response_format=SCHEMA))
            # the upstream's own status and error, not a 502 from the gateway
            assert r.status_code == 500
            err = _err(r)
            assert "concatenate" in err["message"] and err["type"] == "internal_server_error"
            assert r.headers["x-expertgate-expert"] == "coder"  # no failover to chatter
            assert "x-expertgate-degraded" not in r.headers
        assert chatter.received == []
        bad = [b for b in coder.received if _json_schema(b)]
        assert len(bad) == 5  # never retried
        probes = [b for b in coder.received if not _json_schema(b)]
        assert 1 <= len(probes) <= 2  # one probe vouches for the replica for a while
        assert all(r["circuit"] == "closed" for r in gw.dispatcher.replica_states()["coder"])
        # every other client is still served
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"


async def test_a_500_the_probe_confirms_is_the_replicas_and_fails_over(ups, tmp_path: Path
                                                                      ) -> None:
    coder, chatter = ups
    coder.mode = "status"  # 500 to everything, the probe included
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]


async def test_client_facing_errors_never_name_an_upstream_address(ups, tmp_path: Path
                                                                  ) -> None:
    coder, chatter = ups
    coder.mode = chatter.mode = "status"
    coder.status = chatter.status = 502
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 502
        msg = _err(r)["message"]
        assert "coder" in msg and "chatter" in msg and "502" in msg
        for text in (msg, r.headers.get("x-expertgate-reason", "")):
            assert "127.0.0.1" not in text and "http://" not in text
    await coder.stop()  # refused connections
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502
        assert "127.0.0.1" not in r.text and str(coder.port) not in r.text


async def test_broken_json_200_is_a_protocol_failure_that_falls_back(ups, tmp_path: Path
                                                                     ) -> None:
    coder, chatter = ups
    coder.mode = "badjson"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert "coder:protocol" in r.headers["x-expertgate-reason"]
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 502 and _err(r)["code"] == "upstream_protocol_error"


async def test_malformed_sse_line_falls_back_before_the_first_byte_and_errors_after(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode, coder.bad_after = "badsse", 0
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert r.text.rstrip().endswith("data: [DONE]")
        coder.bad_after = 2  # two good events went out first: too late to fall back
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        last = orjson.loads(events[-1])
        assert last["error"]["code"] == "stream_invalid"
        assert "{this is not json" not in r.text  # the broken line is not passed on
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    rec = orjson.loads(lines[-1])
    assert rec["status"] == "error" and "stream-invalid" in rec["degraded"]


@pytest.mark.parametrize("sent,expect", [
    ({"max_completion_tokens": 500}, {"max_completion_tokens": 16}),
    ({"max_tokens": 200, "max_completion_tokens": 64}, {"max_tokens": 16,
                                                        "max_completion_tokens": 16}),
    ({"max_completion_tokens": 8}, {"max_completion_tokens": 8}),
])
async def test_max_tokens_cap_covers_max_completion_tokens(ups, tmp_path: Path,
                                                           sent: dict[str, int],
                                                           expect: dict[str, int]) -> None:
    cfg = base_config(ups[0].base, ups[1].base, max_tokens_cap=16)
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke", **sent))
        assert r.status_code == 200
    got = ups[1].received[-1]
    assert {k: got.get(k) for k in expect} == expect


async def test_pass_through_spreads_and_a_shared_prefix_keeps_its_replica(tmp_path: Path
                                                                          ) -> None:
    reps = [await OpenAIUpstreamDouble(f"r{i}").start() for i in range(3)]
    try:
        cfg = base_config(reps[0].base, reps[0].base)
        cfg["experts"][0]["replicas"] = [r.base for r in reps]
        del cfg["experts"][0]["api_base"]
        async with gateway_client(cfg, tmp_path) as (c, _):
            for i in range(30):
                r = await c.post("/v1/chat/completions", json=chat("coder", f"question {i}"))
                assert r.status_code == 200
            counts = [len(r.received) for r in reps]
            assert all(n >= 3 for n in counts), counts  # all three replicas used
            for r in reps:
                r.received.clear()
            system = "You are a careful assistant for the Acme legal team. " * 30
            for i in range(12):
                body = {"model": "coder", "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"different question {i}"}]}
                assert (await c.post("/v1/chat/completions", json=body)).status_code == 200
            used = [len(r.received) for r in reps]
            # sequential requests: the key's first choice is always the less loaded
            assert sorted(used) == [0, 0, 12], used
    finally:
        for r in reps:
            await r.stop()


def test_affinity_key_is_the_conversation_start_system_prompt_first() -> None:
    one = {"messages": [{"role": "system", "content": "S"},
                        {"role": "user", "content": "first"}]}
    two = {"messages": [*one["messages"], {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "second"}]}
    assert affinity_key(one, "chat") == affinity_key(two, "chat")  # a conversation stays put
    other = {"messages": [{"role": "system", "content": "S"},
                          {"role": "user", "content": "other"}]}
    assert affinity_key(one, "chat") != affinity_key(other, "chat")
    assert affinity_key({"prompt": ["p1", "p2"]}, "completions") == b"p1"


async def test_stream_usage_is_estimated_when_the_upstream_sends_none(ups, tmp_path: Path
                                                                      ) -> None:
    _, chatter = ups
    chatter.stream_usage = False  # as llama.cpp
    body = chat("chatter", "tell me a joke", stream=True,
                stream_options={"include_usage": True})
    async with gateway_client(base_config(ups[0].base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=body)
        events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        usage = orjson.loads(events[-2])["usage"]
        # "answer from chatter-double (chatter)": 4 content events
        assert usage["completion_tokens"] == 4 and usage["estimated"] is True
        assert usage["prompt_tokens"] >= 1
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        chatter.stream_usage = True  # an upstream that reports usage: passed through as is
        r = await c.post("/v1/chat/completions", json=body)
        events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        usage = orjson.loads(events[-2])["usage"]
        assert usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        assert r.text.count('"usage"') == 1


async def test_a_done_split_across_reads_still_gets_the_usage_event_before_it(
        ups, tmp_path: Path) -> None:
    # "data: [DO" + "NE]\n" + "\n" in three reads: the estimated usage event went after
    # [DONE] (which the OpenAI SDK never reads past), and the client never got [DONE]'s
    # blank line once the gateway ended its body at [DONE]
    _, chatter = ups
    chatter.stream_usage = False  # as llama.cpp
    chatter.split_done = True
    async with gateway_client(base_config(ups[0].base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "chatter", "tell me a joke", stream=True, stream_options={"include_usage": True}))
        assert r.text.endswith("\n\ndata: [DONE]\n\n")
        events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert orjson.loads(events[-2])["usage"]["completion_tokens"] == 4
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c,
                                    max_retries=0)
        chunks = [ch async for ch in await client.chat.completions.create(
            model="chatter", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "tell me a joke"}])]
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi", stream=True))
        assert r.text.endswith("\n\ndata: [DONE]\n\n") and '"usage"' not in r.text


async def test_embeddings_pass_through_to_experts_that_serve_them(ups, tmp_path: Path
                                                                  ) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["embeddings"] = True
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/embeddings", json={"model": "coder", "input": ["a", "b"]})
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
        assert len(r.json()["data"]) == 2 and coder.received[-1]["model"] == "up-coder"
        r = await c.post("/v1/embeddings", json={"model": "chatter", "input": "a"})
        assert r.status_code == 400 and _err(r)["code"] == "model_not_supported"
        r = await c.post("/v1/embeddings", json={"model": "nope", "input": "a"})
        assert r.status_code == 404
        r = await c.post("/v1/embeddings", json={"model": "coder", "input": []})
        assert r.status_code == 400 and _err(r)["param"] == "input"
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    rec = orjson.loads(lines[0])
    assert rec["endpoint"] == "embeddings" and rec["prompt_tokens"] == 4
    assert rec["cost_usd"] == pytest.approx(4 * 1.0 / 1e6)


# --------------------------------------------------------------------------- ensembles


def _skills_artifact(path: Path) -> Path:
    emb = HashingEmbedder()
    prompts = [f"explain topic {i}" for i in range(24)]
    models = ["coder", "chatter", "agg"]
    S = np.tile([0.9, 0.8, 0.5], (24, 1))
    table = RoutingTable([f"p{i}" for i in range(24)], prompts, models, S,
                         np.ones((24, 3)), ["general"] * 24)
    r = make_router("skills", k=2, aggregator="agg").fit(emb.embed(prompts), table)
    return save_router(r, path, embedder=emb.name)


async def _ensemble_gateway(ups: Any, agg: OpenAIUpstreamDouble, tmp_path: Path) -> Any:
    cfg = base_config(ups[0].base, ups[1].base)
    for e in cfg["experts"]:
        e["price"] = {"input_per_1m": 1.0, "output_per_1m": 2.0}
    cfg["experts"].append({"name": "agg", "api_base": agg.base, "timeout_s": 2,
                           "price": {"input_per_1m": 10.0, "output_per_1m": 20.0}})
    cfg["policies"] = [{"name": "panel", "router": "skills",
                        "artifact": str(_skills_artifact(tmp_path / "skills"))}]
    return gateway_client(cfg, tmp_path)


@contextlib.asynccontextmanager
async def _ensemble(ups: Any, tmp_path: Path, **agg: Any
                    ) -> AsyncIterator[tuple[httpx.AsyncClient, OpenAIUpstreamDouble]]:
    """The ensemble gateway's client and its aggregator, a double (``agg``: its settings)
    stopped after the gateway."""
    aggregator = await OpenAIUpstreamDouble("agg-double", **agg).start()
    try:
        async with await _ensemble_gateway(ups, aggregator, tmp_path) as (c, _):
            yield c, aggregator
    finally:
        await aggregator.stop()


async def test_ensemble_cost_counts_every_call_and_a_header_lists_members(ups, tmp_path: Path
                                                                          ) -> None:
    async with _ensemble(ups, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("panel", "explain topic 3"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "agg"
        assert r.headers["x-expertgate-ensemble"] == "coder,chatter"
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    rec = orjson.loads(lines[-1])
    # each double reports 7 prompt + 5 completion tokens
    members = 2 * (7 * 1.0 + 5 * 2.0) / 1e6
    aggregator = (7 * 10.0 + 5 * 20.0) / 1e6
    assert rec["cost_usd"] == pytest.approx(members + aggregator)


async def test_an_ensemble_policy_asked_for_several_answers_forwards_to_its_first_member(
        ups, tmp_path: Path) -> None:
    # one aggregated answer cannot stand for n choices or a batch of prompts (the client got
    # one choice for two prompts): the first member answers them all, as routed
    async with _ensemble(ups, tmp_path) as (c, agg):
        for path, body in (("/v1/chat/completions", {**chat("panel", "explain topic 3"),
                                                     "n": 2}),
                           ("/v1/completions", {"model": "panel", "prompt": [
                               "explain topic 3", "explain topic 4"]})):
            r = await c.post(path, json=body)
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "coder"
            assert "x-expertgate-ensemble" not in r.headers
            assert "not ensembled: 2 answers asked" in r.headers["x-expertgate-reason"]
    assert not agg.received and not ups[1].received and len(ups[0].received) == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_ensemble_answers_with_its_members_when_the_aggregator_is_down(
        ups, tmp_path: Path, stream: bool) -> None:
    agg = await OpenAIUpstreamDouble("agg-double").start()
    await agg.stop()
    async with await _ensemble_gateway(ups, agg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("panel", "explain topic 3",
                                                           stream=stream))
        assert r.status_code == 200
        assert "ensemble-unaggregated" in r.headers["x-expertgate-degraded"]
        assert r.headers["x-expertgate-expert"] == "coder"
        assert r.headers["x-expertgate-ensemble"] == "coder,chatter"
        assert "answer from coder-double" in r.text
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    rec = orjson.loads(lines[-1])
    assert rec["cost_usd"] == pytest.approx(2 * (7 * 1.0 + 5 * 2.0) / 1e6)



@pytest.mark.parametrize("raw,message", [
    ((404, "text/plain", b"model not found at {base}/chat/completions (internal host "
      b"10.0.0.5)"), "could not process this request: model not found at <upstream>"),
    ((422, "text/html", b"<html>nope</html>"), "could not process this request: <html>nope"),
    ((404, "application/json", b'{"object": "error", "message": "The model `x` does not '
      b'exist.", "type": "NotFoundError", "param": null, "code": 404}'),
     "The model `x` does not exist."),
])
async def test_upstream_4xx_comes_back_openai_shaped_without_its_address(
        ups, tmp_path: Path, raw: tuple[int, str, bytes], message: str) -> None:
    coder, chatter = ups
    status, ctype, body = raw
    coder.raw = (status, ctype, body.replace(b"{base}", coder.base.encode()))
    errs = []
    # a 404 says the expert's model is not on its server, not that the request is wrong: a
    # routed request goes on to the policy's fallback (test_vllm_lora_double), so here only
    # the expert named by the client answers it; other 4xx are the request's for both
    models = ("coder",) if status == 404 else ("auto", "coder")
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        for model in models:
            r = await c.post("/v1/chat/completions", json=chat(model, "fix this bug in my code"))
            assert r.status_code == status and r.headers["content-type"] == "application/json"
            err = _err(r)
            assert err["message"].startswith(message) or message in err["message"]
            assert "127.0.0.1" not in r.text and "10.0.0.5" not in r.text
            assert str(coder.port) not in r.text and chatter.received == []
            errs.append(err)
    # the log says what kind of error the expert answered (it said null)
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    for rec, err in zip(recs, errs, strict=True):
        assert rec["http_status"] == status and rec["status"] == "error"
        code = err["code"] if isinstance(err["code"], str) and err["code"] else err["type"]
        assert rec["error_type"] == code


@pytest.mark.parametrize("raw", [
    (200, "application/json", b"not json at all"),
    (200, "text/event-stream", b"not json at all\n\n"),
    (200, "application/json", b'{"id": "x", "object": "chat.completion", "choices": []}'),
    (302, "text/html", b"moved"),
])
async def test_a_stream_answered_with_no_event_stream_is_a_protocol_failure(
        ups, tmp_path: Path, raw: tuple[int, str, bytes]) -> None:
    # a streamed request's 200 whose body is no SSE (or a JSON completion) was passed on as
    # an empty, successful stream; a redirect was passed on as the answer
    coder, chatter = ups
    coder.raw = raw
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert "coder:protocol" in r.headers["x-expertgate-reason"]
        assert r.text.rstrip().endswith("data: [DONE]")
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == 502 and _err(r)["code"] == "upstream_protocol_error"
    rec = orjson.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "error" and rec["http_status"] == 502


async def test_rewrite_model_names_the_policy_in_answers_and_every_stream_event(
        ups, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base)
    cfg["policies"][0]["rewrite_model"] = True
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.json()["model"] == "auto"
        assert r.headers["x-expertgate-expert"] == "coder"
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True,
            stream_options={"include_usage": True}))
        assert r.status_code == 200
        events = sse_data(r.text)
        assert len(events) >= 3 and {e["model"] for e in events} == {"auto"}
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                       if e["choices"])
        assert text.startswith(f"answer from {coder.name} (")  # the content untouched
        assert r.text.rstrip().endswith("data: [DONE]")
        coder.stream_usage = False  # the usage event the gateway adds names the policy too
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True,
            stream_options={"include_usage": True}))
        events = sse_data(r.text)
        assert events[-1]["usage"]["estimated"] and {e["model"] for e in events} == {"auto"}
    cfg["policies"][0]["rewrite_model"] = False
    async with gateway_client(cfg, tmp_path) as (c, _):  # off: the expert's own name
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True))
        events = sse_data(r.text)
        assert {e["model"] for e in events} == {cfg["experts"][0]["model"]}


def test_model_rewrite_keeps_lines_whole_across_chunks() -> None:
    from gateway.request.respond import _EventRewrite

    rw = _EventRewrite("auto")
    ev = b'data: {"id":"x","model":"coder","choices":[]}\r\n\r\n'
    out = b"".join(rw.feed(ev[i:i + 7]) for i in range(0, len(ev), 7))
    out += rw.feed(b": keep-alive\ndata: [DONE]\n\n")
    assert out == (b'data: {"id":"x","model":"auto","choices":[]}\r\n\r\n'
                   b": keep-alive\ndata: [DONE]\n\n") and rw.tail == b""


#: an aggregator's refusal of the request it was built (the members' answers too long)
TOO_LONG = (400, "application/json", b'{"error": {"message": "context too long"}}')
TOOL_ANSWER = orjson.dumps({
    "id": "chatcmpl-tool", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})


async def test_ensemble_members_rejecting_the_request_or_calling_tools(ups, tmp_path: Path
                                                                      ) -> None:
    coder, chatter = ups
    async with _ensemble(ups, tmp_path) as (c, agg):
        # every member refuses the request itself: its own 400, not a 502 to retry
        coder.raw = chatter.raw = (400, "application/json",
                                   b'{"error": {"message": "bad tools", "type": "x"}}')
        r = await c.post("/v1/chat/completions", json=chat("panel", "explain topic 3"))
        assert r.status_code == 400 and _err(r)["message"] == "bad tools"
        assert agg.received == []
        # members that answer with tool calls: the aggregator gets them, and the tools
        coder.raw = chatter.raw = (200, "application/json", TOOL_ANSWER)
        tools = [{"type": "function", "function": {"name": "get_weather",
                                                   "parameters": {"type": "object"}}}]
        r = await c.post("/v1/chat/completions", json=chat(
            "panel", "explain topic 3", tools=tools))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "agg"
        sent = agg.received[-1]
        assert sent["tools"] == tools and "get_weather" in sent["messages"][-1]["content"]
        # members down: a 502 that says what each got
        coder.raw = chatter.raw = (503, "application/json", b'{"error": "busy"}')
        r = await c.post("/v1/chat/completions", json=chat("panel", "explain topic 3"))
        assert r.status_code == 502 and _err(r)["code"] == "ensemble_failed"
        assert "ensemble-failed" in r.headers["x-expertgate-degraded"]
        assert "coder:" in r.headers["x-expertgate-reason"]


@pytest.mark.parametrize("stream", [False, True])
async def test_aggregator_refusing_its_built_request_answers_with_a_member(
        ups, tmp_path: Path, stream: bool) -> None:
    async with _ensemble(ups, tmp_path, raw=TOO_LONG) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "panel", "explain topic 3", stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {})))
        assert r.status_code == 200
        assert "ensemble-unaggregated" in r.headers["x-expertgate-degraded"]
        assert "answer from coder-double" in r.text
        if stream:  # the usage event a client asked for, as upstream streams end
            events = sse_data(r.text)
            assert events[-1]["usage"]["total_tokens"] == 12


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_streamed_refusal_ends_with_a_usage_event(ups, tmp_path: Path, endpoint: str
                                                        ) -> None:
    cfg = base_config(ups[0].base, ups[1].base, params={"threshold": 0.99},
                      on_reject={"action": "refusal", "message": "out of scope"})
    async with gateway_client(cfg, tmp_path) as (c, _):
        path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        body = chat("auto", "zxqv wplm", stream=True, stream_options={"include_usage": True})
        if endpoint == "completions":
            body = {"model": "auto", "prompt": "zxqv wplm", "stream": True,
                    "stream_options": {"include_usage": True}}
        r = await c.post(path, json=body)
        assert r.status_code == 200, r.text
        events = sse_data(r.text)
        assert "out of scope" in r.text and events[-1]["choices"] == []
        assert events[-1]["usage"]["total_tokens"] == 0


async def test_ensemble_dry_run_names_the_aggregator_a_live_request_gets(ups, tmp_path: Path
                                                                         ) -> None:
    async with _ensemble(ups, tmp_path) as (c, _):
        dry = await c.post("/v1/route", json={"model": "panel", "text": "explain topic 3"})
        live = await c.post("/v1/chat/completions", json=chat("panel", "explain topic 3"))
        plan = dry.json()
        assert plan["action"] == "ensemble"
        assert plan["ensemble"]["members"] == ["coder", "chatter"]
        assert plan["ensemble"]["aggregation_chain"][0] == "agg"
        assert dry.headers["x-expertgate-expert"] == live.headers["x-expertgate-expert"]


async def test_unaggregated_tool_call_answer_streams_as_tool_calls(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.raw = chatter.raw = (200, "application/json", TOOL_ANSWER)
    async with _ensemble(ups, tmp_path, raw=TOO_LONG) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "panel", "explain topic 3", stream=True,
            tools=[{"type": "function", "function": {"name": "get_weather"}}]))
        assert "ensemble-unaggregated" in r.headers["x-expertgate-degraded"]
        events = sse_data(r.text)
        delta = events[0]["choices"][0]["delta"]
        assert delta["tool_calls"][0]["function"]["name"] == "get_weather"
        assert delta["tool_calls"][0]["index"] == 0 and not delta.get("content")
        assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
