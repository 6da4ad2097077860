"""The gateway's HTTP behaviour in-process, against OpenAI-compatible upstream test doubles."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import orjson
import pytest

from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _err(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_routed_request_goes_to_chosen_expert_with_headers(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200
        assert r.headers["x-expertgate-policy"] == "auto"
        assert r.headers["x-expertgate-expert"] == "coder"
        assert r.headers["x-expertgate-cache"] == "miss"
        assert float(r.headers["x-expertgate-decision-ms"]) >= 0
        assert "code" in r.headers["x-expertgate-reason"]
        assert r.json()["choices"][0]["message"]["content"].startswith("answer from coder")
        # the upstream model name is rewritten to the expert's configured name
        assert coder.received[-1]["model"] == "up-coder"
        r2 = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r2.headers["x-expertgate-expert"] == "chatter"
        assert len(chatter.received) == 1


async def test_repeated_prompt_hits_the_decision_cache(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _gw):
        body = chat("auto", "refactor this class please")
        r1 = await c.post("/v1/chat/completions", json=body)
        r2 = await c.post("/v1/chat/completions", json=body)
        assert r1.headers["x-expertgate-cache"] == "miss"
        assert r2.headers["x-expertgate-cache"] == "hit"
        assert r1.headers["x-expertgate-expert"] == r2.headers["x-expertgate-expert"]
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_decision_cache_total{result="hit"} 1.0' in metrics
        assert 'expertgate_decision_cache_total{result="miss"} 1.0' in metrics


async def test_openai_sdk_non_stream_and_stream(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        out = await client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "tell me a joke"}])
        assert out.choices[0].message.content.startswith("answer from chatter")
        stream = await client.chat.completions.create(
            model="coder", stream=True,
            messages=[{"role": "user", "content": "anything"}])
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
        assert text == "answer from coder-double (up-coder)"


async def test_explicit_expert_passes_through_and_unknown_is_404(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("chatter", "fix this bug"))
        assert r.status_code == 200
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert r.headers["x-expertgate-policy"] == "none"
        r = await c.post("/v1/chat/completions", json=chat("gpt-4o", "hi"))
        assert r.status_code == 404
        e = _err(r)
        assert e["code"] == "model_not_found" and e["param"] == "model"
        assert ups[0].received == [] or all(b["model"] != "gpt-4o" for b in ups[0].received)


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[]", None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "auto"}', "messages"),
    (b'{"model": "auto", "messages": []}', "messages"),
    (b'{"model": "auto", "messages": ["hi"]}', "messages.0"),
    (b'{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream"),
    (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
     "max_tokens"),
    (b'{"model": "auto", "messages": [{"role": "assistant", "content": "x"}]}', "messages"),
    (b"", None),
])
async def test_bad_requests_get_openai_shaped_400(ups, tmp_path: Path, body: bytes,
                                                  param: str | None) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=body,
                         headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        e = _err(r)
        assert e["type"] == "invalid_request_error"
        assert e["param"] == param
        assert "Traceback" not in r.text
    assert ups[0].received == [] and ups[1].received == []


async def test_body_over_the_limit_is_413(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path,
                              max_body_bytes=2048) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "x" * 5000))
        assert r.status_code == 413
        assert _err(r)["code"] == "request_too_large"


async def test_fallback_when_chosen_expert_is_down(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    await coder.stop()  # connection refused
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200
        assert r.headers["x-expertgate-expert"] == "chatter"
        assert "expert-fallback" in r.headers["x-expertgate-degraded"]
        assert "coder:connect" in r.headers["x-expertgate-reason"]
        m = (await c.get("/metrics")).text
        assert 'expertgate_fallbacks_total{policy="auto",reason="upstream"} 1.0' in m
        assert 'expertgate_upstream_errors_total{expert="coder",kind="connect"} 1.0' in m


async def test_fallback_on_5xx_and_error_when_all_fail(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "status"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        # the request, then the minimal health probe after its 500 (which failed too)
        assert len(coder.received) == 2 and coder.received[1]["max_tokens"] == 1
        assert len(chatter.received) == 1
        chatter.mode = "status"
        r = await c.post("/v1/chat/completions", json=chat("auto", "refactor this class"))
        assert r.status_code == 502
        assert _err(r)["code"] == "upstream_unavailable"


async def test_upstream_4xx_is_passed_through_not_retried(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode, coder.status = "status", 422
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 422
        assert len(coder.received) == 1 and chatter.received == []


async def test_timeout_gives_504(ups, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.mode = "hang"
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 0.3
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("coder", "x"))
        assert r.status_code == 504
        assert _err(r)["code"] == "upstream_timeout"


async def test_stream_cut_midway_ends_with_error_event_and_no_retry(ups, tmp_path: Path
                                                                    ) -> None:
    coder, chatter = ups
    coder.mode = "cut"
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions",
                         json=chat("auto", "fix this bug in my code", stream=True))
        assert r.status_code == 200
        events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
        assert orjson.loads(events[0])["choices"][0]["delta"]["content"] == "answer"
        last = orjson.loads(events[-1])
        assert last["error"]["code"] == "stream_interrupted"
        assert len(coder.received) == 1 and chatter.received == []
    (rec,) = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    # the log says how it failed (error_type was null)
    assert (rec["http_status"], rec["error_type"]) == (502, "stream_interrupted")
    assert rec["degraded"] == ["stream-cut"]


@pytest.mark.parametrize("error", [
    {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "param": None,
               "code": 500}},  # vLLM's streaming error (its code is the status)
    {"object": "error", "message": "engine dead", "type": "EngineDeadError", "param": None,
     "code": 500}])  # vLLM's older ErrorResponse shape
async def test_an_error_event_within_a_stream_is_a_failed_request(
        ups, tmp_path: Path, error: dict[str, object]) -> None:
    # an upstream whose generation fails after its first token says so in an error event
    # (the OpenAI SDK raises on it) and ends the stream: it was logged and counted as a
    # 200 that succeeded, with an estimated usage event added after the error
    coder, chatter = ups
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up-coder",
             "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
    body = (b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(error) +
            b"\n\ndata: [DONE]\n\n")
    coder.raw = (200, "text/event-stream", body)
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "coder", "x", stream=True, stream_options={"include_usage": True}))
        assert r.status_code == 200
        assert r.content == body  # passed on as the upstream sent it, nothing added
        if "error" in error:  # the SDK raises on OpenAI's shape (and yields vLLM's older one)
            client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused",
                                        http_client=c, max_retries=0)
            with pytest.raises(openai.APIError, match="CUDA out of memory"):
                async for _ in await client.chat.completions.create(
                        model="coder", stream=True, messages=[{"role": "user", "content": "x"}]):
                    pass
        else:
            await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        metrics = (await c.get("/metrics")).text
    assert 'expertgate_upstream_errors_total{expert="coder",kind="stream_error"} 2.0' in metrics
    assert 'status="200"' not in metrics.split("expertgate_requests_total", 1)[1].split(
        "# HELP", 1)[0]
    recs = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [(x["http_status"], x["status"], x["degraded"]) for x in recs] == [
        (502, "error", ["stream-error"])] * 2
    # its code when that is text, else its type (vLLM's code is the status, a number)
    assert recs[0]["error_type"] == ("InternalServerError" if "error" in error
                                     else "EngineDeadError")
    assert chatter.received == []  # after the first byte: never sent elsewhere


async def test_an_error_event_before_any_token_falls_back_like_a_failure(
        ups, tmp_path: Path) -> None:
    # vLLM answers 200 and then an error event when generation fails at once: nothing has
    # reached the client, so the next expert of the decision's chain answers instead of the
    # client getting a stream that is only an error
    coder, chatter = ups
    err = {"error": {"message": "CUDA out of memory", "type": "InternalServerError",
                     "code": 500}}
    coder.raw = (200, "text/event-stream",
                 b"data: " + orjson.dumps(err) + b"\n\ndata: [DONE]\n\n")
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True))
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        assert "coder:protocol" in r.headers["x-expertgate-reason"]
        assert b"CUDA" not in r.content and r.content.rstrip().endswith(b"data: [DONE]")
        assert len(chatter.received) == 1
        # a named expert with no other replica: a clean 502, never a 200 that is an error
        r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
        assert r.status_code == 502
        assert "error event before any token" in r.json()["error"]["message"]


@pytest.mark.parametrize("action", ["error", "refusal", "fallback"])
async def test_rejection_answers_as_configured(ups, tmp_path: Path, action: str) -> None:
    on_reject = {"action": action, "message": "Only code and chat here."}
    if action == "fallback":
        on_reject["expert"] = "chatter"
    cfg = base_config(ups[0].base, ups[1].base, params={"threshold": 0.99},
                      on_reject=on_reject)
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "zxqv wplm"))
        if action == "error":
            assert r.status_code == 400
            assert _err(r)["code"] == "request_rejected"
            assert "Only code and chat here." in _err(r)["message"]
        elif action == "refusal":
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "Only code and chat here."
            # one choice per answer asked, as an expert's answer would have (it wrote one)
            r = await c.post("/v1/chat/completions", json={**chat("auto", "zxqv wplm"), "n": 3})
            assert [ch["index"] for ch in r.json()["choices"]] == [0, 1, 2]
            r = await c.post("/v1/completions", json={"model": "auto", "n": 2,
                                                      "prompt": ["zxqv wplm", "qqq zzz"]})
            assert [ch["index"] for ch in r.json()["choices"]] == [0, 1, 2, 3]
            r = await c.post("/v1/chat/completions", json={**chat("auto", "zxqv wplm",
                                                                  stream=True), "n": 2})
            first = orjson.loads(r.text.split("data: ")[1])
            assert [ch["index"] for ch in first["choices"]] == [0, 1]
            assert ups[0].received == [] and ups[1].received == []
        else:
            assert r.status_code == 200
            assert r.headers["x-expertgate-expert"] == "chatter"
            assert "rejected-to-fallback" in r.headers["x-expertgate-degraded"]


async def test_completions_pass_through(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/completions", json={"model": "chatter", "prompt": "Once"})
        assert r.status_code == 200
        assert r.json()["choices"][0]["text"] == " completion from chatter-double"
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": "tell me a joke"})
        assert r.headers["x-expertgate-expert"] == "chatter"
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": 3})
        assert r.status_code == 400 and _err(r)["param"] == "prompt"


async def test_models_route_and_feedback(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "coder-sql", "parent": "coder"})
    async with gateway_client(cfg, tmp_path) as (c, _gw):
        data = (await c.get("/v1/models")).json()["data"]
        ids = {m["id"]: m for m in data}
        assert {"coder", "chatter", "coder-sql", "auto"} <= set(ids)
        assert ids["coder-sql"]["parent"] == "coder"
        assert ids["auto"]["expertgate"]["kind"] == "policy"
        r = await c.post("/v1/route", json={"model": "auto", "text": "fix this bug in my code"})
        d = r.json()
        assert r.status_code == 200 and d["mode"] == "single"
        assert d["targets"][0]["expert"] == "coder" and d["policy"] == "auto"
        assert d["guard"]["label"] == "code" and d["cached"] is False
        assert d["fallback_chain"][:2] == ["coder", "chatter"]
        assert ups[0].received == []  # a dry run never calls upstream
        r = await c.post("/v1/route", json={"model": "nope", "text": "x"})
        assert r.status_code == 404
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        rid = r.headers["x-request-id"]
        f = await c.post("/v1/feedback", json={"request_id": rid, "score": 0.9})
        assert f.status_code == 200 and f.json()["stored"] is True
        f = await c.post("/v1/feedback", json={"request_id": rid, "score": 3})
        assert f.status_code == 400 and _err(f)["param"] == "score"
    from gateway.logs import export_logs

    n = export_logs(tmp_path / "out.jsonl", log_path=tmp_path / "log.jsonl",
                    feedback_path=tmp_path / "log.feedback.jsonl")
    assert n == 1
    rec = orjson.loads((tmp_path / "out.jsonl").read_bytes().splitlines()[0])
    assert rec["request_id"] == rid and rec["feedback_score"] == 0.9
    assert rec["expert"] == "chatter" and rec["policy"] == "auto"
    assert rec["text"] is None and len(rec["text_hash"]) == 32  # prompts not logged by default


async def test_routing_log_records_every_request(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base, log_prompts=True)
    async with gateway_client(cfg, tmp_path) as (c, _gw):
        await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        await c.post("/v1/chat/completions", json=chat("nope", "x"))
        await c.post("/v1/chat/completions", json=chat("chatter", "x"))
    lines = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [ln["http_status"] for ln in lines] == [200, 404, 200]
    first = lines[0]
    assert first["text"] == "fix this bug in my code"
    assert first["expert"] == "coder" and first["mode"] == "single"
    assert first["prompt_tokens"] == 7 and first["completion_tokens"] == 5
    assert first["cost_usd"] == pytest.approx((7 * 1.0 + 5 * 2.0) / 1e6)
    assert lines[1]["error_type"] == "model_not_found"
    assert lines[2]["mode"] == "explicit"


async def test_unknown_path_and_method_are_openai_shaped(ups, tmp_path: Path) -> None:
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.get("/v1/nothing")
        assert r.status_code == 404 and _err(r)["code"] == "not_found"
        r = await c.get("/v1/chat/completions")
        assert r.status_code == 405 and _err(r)["code"] == "method_not_allowed"
        assert r.headers["allow"] == "POST"  # says which method would do
        assert (await c.get("/healthz")).json() == {"status": "ok"}


async def test_routing_log_drops_and_counts_a_record_it_cannot_serialise(tmp_path: Path
                                                                          ) -> None:
    from gateway.logs import JsonlSink, RoutingLog
    from gateway.metrics import Metrics

    rlog = RoutingLog(JsonlSink(tmp_path / "log.jsonl", tmp_path / "fb.jsonl"), Metrics())
    rlog.start()
    rlog.record({"request_id": "a"})  # type: ignore[typeddict-item]
    rlog.record({"request_id": "b", "bad": object()})  # type: ignore[typeddict-item]
    rlog.record({"request_id": "c"})  # type: ignore[typeddict-item]
    await rlog.close()
    lines = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [x["request_id"] for x in lines] == ["a", "c"]
    assert rlog.dropped == 1 and rlog.written == 2
