"""The request path's stages (gateway/request): admission before the body, one schema for
validation and OpenAPI, one plan for the dry run and live requests, the deadline over the
decision, one body limit on every POST endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.app import create_app
from gateway.auth import hash_key
from gateway.config import Settings, parse_config
from gateway.request.schema import ChatRequest
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client

Ups = tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble]


async def test_an_unauthenticated_request_costs_no_body_read(ups: Ups, tmp_path: Path) -> None:
    """401 from the headers alone: the ASGI receive channel (the body) is never read."""
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "t", "sha256": hash_key("sk-good")}]
    app = create_app(Settings(log_path=tmp_path / "log.jsonl", ready_check_upstreams=False,
                              gc_freeze=False), parse_config(cfg, "t.yaml"),
                     embedder=HashingEmbedder())
    await app.gateway.start()
    try:
        for auth in ([], [(b"authorization", b"Bearer sk-wrong")]):
            reads: list[int] = []
            sent: list[MutableMapping[str, Any]] = []

            async def receive(reads: list[int] = reads) -> dict[str, Any]:
                reads.append(1)
                return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

            async def send(msg: MutableMapping[str, Any],
                           sent: list[MutableMapping[str, Any]] = sent) -> None:
                sent.append(msg)

            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                     "headers": [(b"content-length", b"1000000"), *auth], "client": None}
            await app(scope, receive, send)
            assert reads == []
            assert sent[0]["status"] == 401
            assert orjson.loads(sent[1]["body"])["error"]["type"] == "authentication_error"
    finally:
        await app.gateway.close()
    assert ups[0].received == [] and ups[1].received == []


async def test_the_dry_run_explains_the_plan_a_live_request_follows(ups: Ups,
                                                                   tmp_path: Path) -> None:
    # every query is rejected (threshold 0.9) and rejections go to the chatter
    cfg = base_config(ups[0].base, ups[1].base, params={"threshold": 0.9},
                      on_reject={"action": "fallback", "expert": "chatter"})
    async with gateway_client(cfg, tmp_path) as (c, _):
        dry = await c.post("/v1/route", json={"model": "auto", "text": "zebra quantum banana"})
        plan = dry.json()
        assert plan["mode"] == "reject" and plan["action"] == "forward"
        assert plan["fallback_chain"] == ["chatter"]
        assert plan["degraded"] == ["rejected-to-fallback"]
        live = await c.post("/v1/chat/completions", json=chat("auto", "zebra quantum banana"))
        assert live.status_code == 200
        for h in ("x-expertgate-expert", "x-expertgate-reason", "x-expertgate-degraded"):
            assert live.headers[h] == dry.headers[h], h
        assert live.headers["x-expertgate-expert"] == "chatter"
    assert len(ups[1].received) == 1 and ups[0].received == []


async def test_a_refusing_policy_plans_no_expert(ups: Ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base, params={"threshold": 0.9},
                      on_reject={"action": "refusal", "message": "not here"})
    async with gateway_client(cfg, tmp_path) as (c, _):
        dry = (await c.post("/v1/route", json={"model": "auto", "text": "zebra"})).json()
        assert dry["action"] == "refuse" and dry["fallback_chain"] == []
        live = await c.post("/v1/chat/completions", json=chat("auto", "zebra"))
        assert live.json()["choices"][0]["message"]["content"] == "not here"
        assert live.headers["x-expertgate-expert"] == "none"
    assert ups[0].received == [] and ups[1].received == []


async def test_the_deadline_covers_the_decision(ups: Ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, request_deadline_s=0.3) as (c, gw):
        async def stuck_embedder(text: str) -> Any:
            await asyncio.sleep(5)

        gw.pipeline._embed_fn = stuck_embedder
        t = time.perf_counter()
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug"))
        assert time.perf_counter() - t < 2
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "deadline_exceeded"
    assert ups[0].received == [] and ups[1].received == []


async def test_one_body_limit_and_one_schema_on_every_post_endpoint(ups: Ups,
                                                                   tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, max_body_bytes=4096) as (c, _):
        big = {"model": "auto", "text": "x" * 8000}
        for path, body in (("/v1/route", big), ("/v1/feedback",
                                                {"request_id": "r", "score": 1, "comment": big})):
            r = await c.post(path, json=body)
            assert r.status_code == 413, path
            assert r.json()["error"]["code"] == "request_too_large"
        # the dry run's body is checked by the same schema, with the field named (it takes
        # the chat body's fields, typed as the chat endpoint types them)
        r = await c.post("/v1/route", json={"model": "auto", "text": "hi", "temperature": "1"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
        assert r.headers["x-expertgate-policy"] == "none"
        r = await c.post("/v1/route", content=b'{"model": "auto", "text": "\\ud800"}')
        assert r.status_code == 400  # a lone surrogate never reaches the embedder
        doc = (await c.get("/openapi.json")).json()
    # the OpenAPI document is derived from the types the request path validates with
    ref = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"]
    published = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    own = TypeAdapter(ChatRequest).json_schema(ref_template="#/components/schemas/{model}")
    assert published["properties"].keys() == own["properties"].keys()
    assert published["required"] == own["required"] == ["model", "messages"]


def test_the_route_command_prints_the_same_plan(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from expertgate.cli import main

    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                      params={"threshold": 0.9},
                      on_reject={"action": "fallback", "expert": "chatter"})
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["route", "--config", str(tmp_path / "gw.yaml"), "zebra quantum banana"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["mode"] == "reject" and out["action"] == "forward"
    assert out["fallback_chain"] == ["chatter"] and out["degraded"] == ["rejected-to-fallback"]


async def test_a_requests_messages_are_read_once_by_every_stage_that_needs_their_text(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A routed, streamed request of a token-limited key to an expert with two replicas,
    whose upstream reports no usage: the token estimate, the routing text, the replica
    affinity and the estimated usage all read the messages' text, extracted once."""
    import gateway.messages

    seen: list[Any] = []
    real = gateway.messages.content_text

    def counted(content: Any) -> str:
        seen.append(content)
        return real(content)

    monkeypatch.setattr(gateway.messages, "content_text", counted)
    coder, chatter = ups
    chatter.stream_usage = False
    cfg = base_config(coder.base, chatter.base)
    twin = await OpenAIUpstreamDouble(chatter.name, stream_usage=False).start()
    cfg["experts"][1]["replicas"] = [chatter.base, twin.base]
    del cfg["experts"][1]["api_base"]
    cfg["api_keys"] = [{"name": "team-a", "sha256": hash_key("sk-a"),
                        "tokens_per_minute": 100_000}]
    body = {"model": "auto", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "a joke"}]},
                         {"role": "assistant", "content": "why did the chicken"},
                         {"role": "user", "content": "tell me a joke"}]}
    try:
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=body,
                             headers={"authorization": "Bearer sk-a"})
            assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
            assert r.headers["x-ratelimit-limit-tokens"] == "100000"
            assert '"estimated":true' in r.text  # the usage event the gateway added
    finally:
        await twin.stop()
    assert len(seen) == len(body["messages"])


async def test_a_text_the_embedder_cannot_read_is_said_not_silent(
        ups: Ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the distilled embedder gives a zero vector for a text none of whose tokens it knows
    # (Thai, a word past its length limit): the decision rests on priors only
    import numpy as np

    real = HashingEmbedder.embed

    def embed(self: HashingEmbedder, texts: list[str]) -> np.ndarray:
        X = real(self, texts)
        X[[i for i, t in enumerate(texts) if "ผม" in t]] = 0.0
        return X

    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "ผมอยากทราบวิธีการ"))
        # like no route: this policy rejects it (400), saying why it could not tell
        assert r.status_code == 400 and _ok_error(r)
        assert "embedding-empty" in r.headers["x-expertgate-degraded"]
        ok = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert "x-expertgate-degraded" not in ok.headers
        metrics = (await c.get("/metrics")).text
        assert 'expertgate_degraded_total{component="embedding-empty"} 1.0' in metrics
    rec = orjson.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert rec["degraded"] == ["embedding-empty"]


def _ok_error(r: Any) -> bool:
    return set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_a_policy_request_refused_while_planned_is_logged_under_its_policy(
        ups: Ups, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        # nothing to route on: an image-only conversation, a system-only one
        for messages in ([{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
                         [{"role": "system", "content": "be brief"}]):
            r = await c.post("/v1/chat/completions", json={"model": "auto",
                                                           "messages": messages})
            assert r.status_code == 400 and r.headers["x-expertgate-policy"] == "auto"
        # refused after the decision (too deep to forward): the reason says both
        deep: Any = []
        for _ in range(300):
            deep = [deep]
        r = await c.post("/v1/chat/completions",
                         json={**chat("auto", "fix this bug in my code"), "extra": deep})
        assert r.status_code == 400
        reason = r.headers["x-expertgate-reason"]
        assert "refused: " in reason and "nested too deeply" in reason
        assert reason.index("refused: ") > 0  # after the routing decision's own reason
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["policy"] for r in recs] == ["auto"] * 3
    assert all(r["http_status"] == 400 for r in recs) and not coder.received


async def test_token_id_prompts_reach_an_expert_and_a_policy_says_it_routes_on_text(
        ups: Ups, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        for prompt in ([1, 2, 3], [[1, 2], [3]]):
            r = await c.post("/v1/completions", json={"model": "coder", "prompt": prompt,
                                                      "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert coder.received[-1]["prompt"] == prompt  # as the client sent it
        n = len(coder.received)
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": [1, 2, 3]})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["param"] == "prompt" and "token ids" in err["message"]
        for bad in ([1, "a"], [[]], [-1], []):
            r = await c.post("/v1/completions", json={"model": "coder", "prompt": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] in (
                "prompt", "prompt.0"), bad
        assert len(coder.received) == n and not chatter.received  # nothing else forwarded


@pytest.mark.parametrize(("endpoint", "body", "param", "says"), [
    # each named the str member of the union: "Input should be a valid string"
    ("chat", {"messages": [{"role": "user", "content": ["hi"]}]}, "messages.0.content.0",
     "valid dictionary"),
    ("completions", {"prompt": ["", "x"]}, "prompt.0", "at least 1 character"),
    ("embeddings", {"input": []}, "input", "at least 1 item"),
    ("completions", {"prompt": [[]]}, "prompt.0", "at least 1 item"),
])
def test_a_union_fields_error_says_what_is_wrong_with_the_value_sent(
        endpoint: str, body: dict[str, Any], param: str, says: str) -> None:
    from gateway.errors import InvalidRequest
    from gateway.request.schema import validate

    with pytest.raises(InvalidRequest) as e:
        validate(endpoint, orjson.dumps({"model": "m", **body}))
    assert e.value.param == param and says in e.value.message


@pytest.mark.parametrize(("endpoint", "fields", "param", "says"), [
    ("chat", {"n": 129}, "n", "less than or equal to 128"),
    ("chat", {"n": 100_000_000}, "n", "less than or equal to 128"),
    ("chat", {"n": 0}, "n", "greater than or equal to 1"),
    ("completions", {"n": 129}, "n", "less than or equal to 128"),
    ("completions", {"best_of": 21}, "best_of", "less than or equal to 20"),
    ("completions", {"n": 3, "best_of": 2}, "best_of", "at least n (2 < 3)"),
    ("completions", {"best_of": 2, "stream": True}, "best_of", "cannot be used with stream"),
    ("completions", {"prompt": ["a"] * 2049}, "prompt", "at most 2048 prompts in one request"),
    ("completions", {"prompt": ["a"] * 250_000}, "prompt", "at most 2048 prompts"),
    ("completions", {"prompt": [[1]] * 2049}, "prompt", "at most 2048 prompts"),
    ("embeddings", {"input": ["a"] * 2049}, "input", "at most 2048 inputs in one request"),
    ("embeddings", {"input": [[1]] * 2049}, "input", "at most 2048 inputs"),
    ("embeddings", {"input": [1] * 2048 + ["a"]}, "input", "at most 2048 inputs"),
])
def test_n_and_best_of_are_bounded_as_openai_bounds_them(
        endpoint: str, fields: dict[str, Any], param: str, says: str) -> None:
    """... and so is a batch (a completion's prompts, an embeddings input list): 2048 items,
    OpenAI's limit for an embeddings input array."""
    from gateway.errors import InvalidRequest
    from gateway.request.schema import validate

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} \
        if endpoint == "chat" else {"model": "m", "prompt": "hi"} \
        if endpoint == "completions" else {"model": "m", "input": "hi"}
    with pytest.raises(InvalidRequest) as e:
        validate(endpoint, orjson.dumps({**body, **fields}))
    assert e.value.param == param and says in e.value.message
    assert e.value.status == 400 and e.value.type == "invalid_request_error"


async def test_a_huge_n_is_refused_before_routing(ups: Ups, tmp_path: Path) -> None:
    """A refusing policy writes one choice per ``n``: ``n: 100000000`` was that many choices
    in the gateway's memory; any ``n`` over OpenAI's 128 is now a 400 naming
    ``n`` before any decision or upstream call (129 here: without the bound this test fails
    on its answer, not by exhausting memory). The caps themselves pass."""
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base, params={"threshold": 0.9},
                      on_reject={"action": "refusal", "message": "not here"})
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path, body in (
                ("chat/completions", chat("auto", "zebra", n=129)),
                ("chat/completions", chat("coder", "zebra", n=2**64)),
                ("completions", {"model": "auto", "prompt": "zebra", "n": 129}),
                ("completions", {"model": "coder", "prompt": "zebra", "n": 2, "best_of": 1})):
            r = await c.post(f"/v1/{path}", json=body)
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error", err
            assert err["param"] == ("best_of" if "best_of" in body else "n"), err
            assert r.headers["x-expertgate-policy"] == "none"  # nothing was planned
        r = await c.post("/v1/chat/completions", json=chat("auto", "zebra", n=128))
        assert r.status_code == 200 and len(r.json()["choices"]) == 128
        r = await c.post("/v1/completions", json={"model": "coder", "prompt": "zebra",
                                                  "n": 2, "best_of": 20})
        assert r.status_code == 200, r.text
    assert coder.received == [{"model": "up-coder", "prompt": "zebra", "n": 2, "best_of": 20}]
    assert not chatter.received


def test_a_batch_at_openais_limit_passes_and_one_token_id_prompt_is_not_a_batch() -> None:
    from gateway.request.schema import validate

    for endpoint, field, value in (
            ("completions", "prompt", ["a"] * 2048), ("completions", "prompt", [[1]] * 2048),
            ("completions", "prompt", [1] * 5000), ("embeddings", "input", ["a"] * 2048),
            ("embeddings", "input", [[1, 2]] * 2048), ("embeddings", "input", [1] * 5000)):
        assert validate(endpoint, orjson.dumps({"model": "m", field: value}))[field] == value


async def test_a_huge_prompt_batch_is_refused_before_routing(ups: Ups, tmp_path: Path) -> None:
    """A refusing policy writes ``n`` choices per prompt itself: a megabyte of one-letter
    prompts (250,000) with ``n: 128`` was 32 million choices in the gateway's memory. Over
    2048 prompts (or embeddings inputs) is now a 400 naming the field before any decision or
    upstream call (2049 here: without the bound this test fails on its answer, not by
    exhausting memory); 2048 passes."""
    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base, params={"threshold": 0.9},
                      on_reject={"action": "refusal", "message": "not here"})
    cfg["experts"][0]["embeddings"] = True
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path, body, param in (
                ("completions", {"model": "auto", "prompt": ["zebra"] * 2049}, "prompt"),
                ("completions", {"model": "coder", "prompt": [[7]] * 2049}, "prompt"),
                ("embeddings", {"model": "coder", "input": ["zebra"] * 2049}, "input")):
            r = await c.post(f"/v1/{path}", json=body)
            assert r.status_code == 400, (path, r.text)
            err = r.json()["error"]
            assert err == {"message": f"{param}: at most 2048 {param}s in one request, got "
                                      "2049; send them in several requests",
                           "type": "invalid_request_error", "param": param,
                           "code": err["code"]}, err
            assert r.headers["x-expertgate-policy"] == "none"  # nothing was planned
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": ["zebra"] * 2048,
                                                  "n": 2})
        assert r.status_code == 200 and len(r.json()["choices"]) == 4096, r.text
    assert not coder.received and not chatter.received


#: integers orjson reads as floats (beyond 2**64 - 1, below -2**63), and the edges it keeps
_WIDE = 123456789012345678901234567890
_BODY = (b'{"model": "auto", "messages": [{"role": "user", "content": "fix this bug in my '
         b'code"}], "seed": 123456789012345678901234567890, "temperature": 0.5, "metadata": '
         b'{"trace": [18446744073709551616, -9223372036854775809, 18446744073709551615, '
         b'-9223372036854775808, 1e19, 1.5]}, "tools": [{"type": "function", "function": '
         b'{"name": "f", "parameters": {"type": "object", "properties": {"n": {"type": '
         b'"integer", "maximum": 340282366920938463463374607431768211456}}}}}]}')


async def test_integers_beyond_64_bits_reach_the_expert_exactly(ups: Ups, tmp_path: Path
                                                               ) -> None:
    """A routed request is re-serialised with the expert's model name; its integers go out
    as the client wrote them (orjson alone would send 1.2345678901234568e+29); a field the
    gateway reads itself (max_tokens, token ids) is a 400 naming it when it does not fit in
    64 bits (``n`` has a narrower bound: test_n_and_best_of_are_bounded_as_openai_bounds_them)."""
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=_BODY,
                         headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "coder"
        got = coder.received[-1]  # read by the double with the standard library: exact
        assert got["model"] == "up-coder"  # re-serialised, not the client's bytes
        assert got["seed"] == _WIDE and type(got["seed"]) is int
        assert got["metadata"] == {"trace": [2**64, -(2**63) - 1, 2**64 - 1, -(2**63),
                                             1e19, 1.5]}
        assert [type(x) for x in got["metadata"]["trace"]] == [int] * 4 + [float] * 2
        assert got["tools"][0]["function"]["parameters"]["properties"]["n"]["maximum"] == \
            2**128
        assert got["temperature"] == 0.5
        n = len(coder.received)
        for endpoint, body, param in (
                ("chat", chat("auto", "fix this bug", max_tokens=2**64), "max_tokens"),
                ("completions", {"model": "coder", "prompt": [1, 2**64]}, "prompt"),
                ("embeddings", {"model": "coder", "input": [[1, 2**64]]}, "input")):
            r = await c.post(f"/v1/{endpoint.replace('chat', 'chat/completions')}",
                             json=body)
            assert r.status_code == 400, (endpoint, r.text)
            err = r.json()["error"]
            assert err["param"].startswith(param), err
            assert "than or equal to" in err["message"] and "922337203685477580" in \
                err["message"], err
        assert len(coder.received) == n and not chatter.received


def test_exact_json_takes_the_fallback_only_for_wide_numbers(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from gateway import exactjson

    calls: list[str] = []
    real_loads, real_dumps = exactjson.json.loads, exactjson.json.dumps
    monkeypatch.setattr(exactjson.json, "loads", lambda *a, **k: calls.append("loads")
                        or real_loads(*a, **k))
    monkeypatch.setattr(exactjson.json, "dumps", lambda *a, **k: calls.append("dumps")
                        or real_dumps(*a, **k))
    common = orjson.dumps({"model": "auto", "seed": 2**64 - 1, "low": -(2**63), "t": 0.7,
                           "messages": [{"role": "user", "content": "9" * 40}]})
    assert exactjson.loads(common) == orjson.loads(common)
    assert exactjson.dumps(orjson.loads(common)) == common
    long = orjson.dumps({"messages": [{"role": "user", "content": "9" * 40 + "x" * 70_000}],
                         "t": 1.5})  # walked, not scanned: long text costs nothing more
    assert len(long) > exactjson.SCAN_BYTES and exactjson.loads(long) == orjson.loads(long)
    assert calls == []  # the common body: orjson alone, both ways
    obj = exactjson.loads(_BODY)
    assert obj["seed"] == _WIDE and exactjson.loads(exactjson.dumps(obj)) == obj
    assert calls == ["loads", "dumps", "loads"]  # exact re-parse, write, re-parse
    wide_long = _BODY[:-1] + b', "pad": "' + b"x" * 70_000 + b'"}'
    assert exactjson.loads(wide_long)["seed"] == _WIDE
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    with pytest.raises(TypeError):  # orjson's own limit stays the limit
        exactjson.dumps(deep)


#: an upstream's answer with integers orjson cannot keep, in fields the gateway never reads
_ANSWER = (b'{"id": "chatcmpl-wide", "object": "chat.completion", "created": 1, "model": '
           b'"up-coder", "trace_id": 123456789012345678901234567890, "choices": [{"index": 0, '
           b'"finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}], '
           b'"usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, '
           b'"cost_nano": 18446744073709551616, "low": -9223372036854775809, "t": 0.5}}')
_EVENT = (b'{"id": "chatcmpl-wide", "object": "chat.completion.chunk", "created": 1, '
          b'"model": "up-coder", "trace_id": 123456789012345678901234567890, "choices": '
          b'[{"index": 0, "delta": {"content": "ok"}, "finish_reason": null}]}')


async def test_integers_beyond_64_bits_reach_the_client_exactly(ups: Ups, tmp_path: Path
                                                               ) -> None:
    """An answer re-serialised to name the policy (``rewrite_model``), whole or streamed,
    keeps the upstream's integers as it wrote them (orjson alone made them floats)."""
    import json

    coder, chatter = ups
    cfg = base_config(coder.base, chatter.base, rewrite_model=True)
    async with gateway_client(cfg, tmp_path) as (c, _):
        coder.raw = (200, "application/json", _ANSWER)
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "coder"
        got = json.loads(r.content)  # the standard library: exact
        assert got["model"] == "auto"  # re-serialised, not the upstream's bytes
        want = json.loads(_ANSWER)
        assert got == {**want, "model": "auto"}
        assert got["trace_id"] == _WIDE and type(got["trace_id"]) is int
        assert got["usage"]["cost_nano"] == 2**64 and got["usage"]["low"] == -(2**63) - 1
        assert got["usage"]["t"] == 0.5
        coder.raw = (200, "text/event-stream",
                     b"data: " + _EVENT + b"\n\ndata: " + _EVENT + b"\r\n\r\ndata: [DONE]\n\n")
        r = await c.post("/v1/chat/completions", json=chat(
            "auto", "fix this bug in my code", stream=True))
        assert r.status_code == 200, r.text
        events = [json.loads(ln[6:]) for ln in r.text.splitlines()
                  if ln.startswith("data: ") and ln != "data: [DONE]"]
        assert events == [{**json.loads(_EVENT), "model": "auto"}] * 2
        assert r.text.rstrip().endswith("data: [DONE]")
    assert not chatter.received


async def test_a_litellm_answer_keeps_integers_beyond_64_bits(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """LiteLLM's objects hold the provider's integers exactly; orjson could not write them
    (a 500), whole or streamed."""
    import json
    from types import SimpleNamespace

    from gateway import upstreams
    from gateway.config import ExpertConfig

    answer = json.loads(_ANSWER)

    class Dumped:
        def model_dump(self) -> dict[str, Any]:
            return answer

    async def acompletion(stream: bool = False, **kw: Any) -> Any:
        if not stream:
            return Dumped()

        async def events() -> Any:
            yield Dumped()
        return events()

    monkeypatch.setattr(upstreams, "_litellm", SimpleNamespace(acompletion=acompletion))
    expert = ExpertConfig(name="p", kind="litellm", model="openai/gpt-4o-mini")
    payload = chat("p", "hi")
    reply = await upstreams.call_litellm(expert, None, payload, stream=False, timeout_s=5)
    assert json.loads(reply.first) == answer and reply.data["trace_id"] == _WIDE
    reply = await upstreams.call_litellm(expert, None, payload, stream=True, timeout_s=5)
    assert json.loads(reply.first.removeprefix(b"data: ")) == answer
