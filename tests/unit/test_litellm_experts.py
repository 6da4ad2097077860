"""``kind: litellm`` experts through the gateway's request path: a real LiteLLM call (its
``openai/`` provider) to an OpenAI-compatible double on 127.0.0.1, the OpenAI SDK as client.

Each test asserts what the provider received (path, body fields) and what the client got
(object type, fields, usage), and the usage the routing log charged."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.config import parse_config
from gateway.upstreams import litellm_kwargs
from tests.unit.gateway_helpers import base_config, chat, gateway_client

KEY_ENV = "EXPERTGATE_TEST_LITE_KEY"

#: pydantic warns (once per process) when LiteLLM's streaming builds a schema of its
#: TypedDicts with ``ReadOnly`` items; pytest turns warnings into errors
pytestmark = pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")


class RecordingDouble(OpenAIUpstreamDouble):
    """The OpenAI double, recording each request's path and headers too, and streaming
    text completions as OpenAI does (events with ``choices[].text``, a usage event when
    ``stream_options.include_usage``)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []

    async def start(self) -> RecordingDouble:
        self._stopping.clear()
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.paths.append(request.path)
        self.headers.append(dict(request.headers))
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return await super()._completions(request)  # the body is cached: read again
        early = await self._gate(body)
        if early is not None:
            return early
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        model = body.get("model")

        def ev(text: str, finish: str | None) -> bytes:
            return b"data: " + orjson.dumps({
                "id": "cmpl-s", "object": "text_completion", "created": 1, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish,
                             "logprobs": None}]}) + b"\n\n"

        for w in ("streamed", " from", f" {self.name}"):
            await resp.write(ev(w, None))
        await resp.write(ev("", "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({
                "id": "cmpl-s", "object": "text_completion", "created": 1, "model": model,
                "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                         "total_tokens": 7}}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


@pytest.fixture
async def lite() -> AsyncIterator[RecordingDouble]:
    d = await RecordingDouble("lite-double").start()
    os.environ[KEY_ENV] = "sk-lite-test"
    yield d
    os.environ.pop(KEY_ENV, None)
    await d.stop()


def lite_config(ups: Any, lite: RecordingDouble) -> dict[str, Any]:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({
        "name": "lite", "kind": "litellm", "model": "openai/litemodel", "api_base": lite.base,
        "api_key_env": KEY_ENV, "embeddings": True, "timeout_s": 10,
        "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}})
    return cfg


def log_records(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]


async def test_completions_reach_the_text_completion_endpoint(ups: Any, lite: RecordingDouble,
                                                              tmp_path: Path) -> None:
    async with gateway_client(lite_config(ups, lite), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        out = await client.completions.create(
            model="lite", prompt="tell me a joke", max_tokens=5, user="u1",
            extra_body={"metadata": {"trace": "t1"}, "x_custom": 1})
    assert lite.paths == ["/v1/completions"]
    got = lite.received[0]
    assert got["model"] == "litemodel" and got["prompt"] == "tell me a joke"
    assert got["max_tokens"] == 5 and got["user"] == "u1"
    assert got["metadata"] == {"trace": "t1"} and got["x_custom"] == 1
    assert "messages" not in got and not got.get("stream")
    assert lite.headers[0]["Authorization"] == "Bearer sk-lite-test"
    assert out.object == "text_completion"
    assert out.choices[0].text == " completion from lite-double"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 4)
    rec = log_records(tmp_path)[-1]
    assert rec["expert"] == "lite" and rec["http_status"] == 200
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 4)
    assert rec["cost_usd"] == pytest.approx((3 * 1.0 + 4 * 2.0) / 1e6)


async def test_completions_stream_as_openai_streams_them(ups: Any, lite: RecordingDouble,
                                                         tmp_path: Path) -> None:
    async with gateway_client(lite_config(ups, lite), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        stream = await client.completions.create(
            model="lite", prompt="tell me a joke", stream=True,
            stream_options={"include_usage": True})
        chunks = [ch async for ch in stream]
        # without include_usage: no usage on any event (LiteLLM's zero placeholder removed)
        r = await c.post("/v1/completions",
                         json={"model": "lite", "prompt": "again", "stream": True})
    assert lite.paths == ["/v1/completions", "/v1/completions"]
    assert lite.received[0]["stream"] is True
    assert lite.received[0]["stream_options"] == {"include_usage": True}
    assert {ch.object for ch in chunks} == {"text_completion"}
    assert "".join(c.text for ch in chunks for c in ch.choices) == "streamed from lite-double"
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (3, 4)
    assert chunks[-1].choices == []  # the usage event, as OpenAI sends it
    rec = log_records(tmp_path)[0]
    assert rec["expert"] == "lite" and (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 4)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [orjson.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    assert r.text.rstrip().endswith("data: [DONE]")
    assert events and all(e["object"] == "text_completion" and "usage" not in e
                          for e in events)
    assert "".join(ch["text"] for e in events for ch in e["choices"]) == \
        "streamed from lite-double"


async def test_embeddings_reach_the_embeddings_endpoint(ups: Any, lite: RecordingDouble,
                                                        tmp_path: Path) -> None:
    async with gateway_client(lite_config(ups, lite), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        out = await client.embeddings.create(
            model="lite", input=["hello", "world"], encoding_format="float", user="u1",
            extra_body={"metadata": {"trace": "t2"}})
    assert lite.paths == ["/v1/embeddings"]
    got = lite.received[0]
    assert got["model"] == "litemodel" and got["input"] == ["hello", "world"]
    assert got["encoding_format"] == "float" and got["user"] == "u1"
    assert got["metadata"] == {"trace": "t2"}
    assert out.object == "list"
    assert [(e.object, e.index, e.embedding) for e in out.data] == [
        ("embedding", 0, [0.1, 0.2, 0.0]), ("embedding", 1, [0.1, 0.2, 1.0])]
    assert out.usage.prompt_tokens == 4
    rec = log_records(tmp_path)[-1]
    assert rec["expert"] == "lite" and rec["http_status"] == 200
    assert rec["prompt_tokens"] == 4


async def test_chat_forwards_user_metadata_and_unknown_fields(ups: Any, lite: RecordingDouble,
                                                             tmp_path: Path) -> None:
    """LiteLLM would drop ``user`` (not an OpenAI catalogue model) and keep ``metadata`` for
    its own logging: both reach the provider, with a field LiteLLM does not know."""
    async with gateway_client(lite_config(ups, lite), tmp_path) as (c, _):
        client = openai.AsyncOpenAI(base_url="http://gw/v1", api_key="unused", http_client=c)
        out = await client.chat.completions.create(
            model="lite", messages=[{"role": "user", "content": "hi"}], user="u1",
            metadata={"trace": "t3"}, max_tokens=7, extra_body={"x_custom": {"a": [1]}})
        stream = await client.chat.completions.create(
            model="lite", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}, user="u2")
        chunks = [ch async for ch in stream]
    assert lite.paths == ["/v1/chat/completions"] * 2
    got = lite.received[0]
    assert got["model"] == "litemodel" and got["messages"] == [{"role": "user",
                                                                 "content": "hi"}]
    assert got["user"] == "u1" and got["metadata"] == {"trace": "t3"}
    assert got["max_tokens"] == 7 and got["x_custom"] == {"a": [1]}
    assert lite.received[1]["user"] == "u2" and lite.received[1]["stream"] is True
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "answer from lite-double (litemodel)"
    assert out.usage is not None and out.usage.prompt_tokens == 7
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == \
        "answer from lite-double (litemodel)"
    assert [ch.usage.completion_tokens for ch in chunks if ch.usage] == [5]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", chat("lite", "hi")),
    ("/v1/completions", {"model": "lite", "prompt": "hi"}),
    ("/v1/embeddings", {"model": "lite", "input": "hi"}),
])
async def test_a_provider_refusal_is_passed_on_like_chat(ups: Any, lite: RecordingDouble,
                                                         tmp_path: Path, path: str,
                                                         body: dict[str, Any]) -> None:
    """A provider's 400 reaches the client as the provider's OpenAI-shaped error without the
    provider's address, after one attempt (the client's error, not retried); on every endpoint."""
    lite.mode, lite.status = "status", 400
    async with gateway_client(lite_config(ups, lite), tmp_path) as (c, _):
        r = await c.post(path, json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    # the provider's own error object ({"message": "boom", "type": "server_error"}), as an
    # openai expert's reaches the client: its type, param and code are the client's to read
    assert err["type"] == "server_error" and err["code"] is None and err["param"] is None
    assert "boom" in err["message"] and "127.0.0.1" not in err["message"]
    assert len(lite.paths) == 1 and lite.paths[0] == "/v1" + path.removeprefix("/v1")
    rec = log_records(tmp_path)[-1]
    assert rec["expert"] == "lite" and rec["http_status"] == 400


async def test_a_provider_failure_falls_back_on_completions(ups: Any, lite: RecordingDouble,
                                                            tmp_path: Path) -> None:
    """A 5xx from the provider before the first byte is a failure like chat's: the policy's
    fallback answers."""
    lite.mode, lite.status = "status", 503
    cfg = lite_config(ups, lite)
    cfg["policies"][0]["routes"][1]["expert"] = "lite"
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": "tell me a joke"})
    assert r.status_code == 200 and r.headers["x-expertgate-expert"] in ("coder", "chatter")
    assert "after lite:status" in r.headers["x-expertgate-reason"]
    assert r.json()["object"] == "text_completion"
    assert lite.paths and set(lite.paths) == {"/v1/completions"}
    assert "expert-fallback" in r.headers["x-expertgate-degraded"]


def test_fields_litellm_would_read_as_its_own_never_configure_it() -> None:
    """On a provider that does not speak OpenAI's protocol (no ``extra_body`` pass-through),
    a client's fields that LiteLLM reads as its configuration are dropped; the OpenAI
    fields it maps and fields it does not know are passed as arguments."""
    cfg = parse_config({"experts": [{"name": "claude", "kind": "litellm",
                                     "model": "anthropic/claude-x"}]}, "t.yaml")
    expert = cfg.experts[0]
    payload = {"model": "claude", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 5, "user": "u1", "top_k": 3, "metadata": {"a": "b"},
               "api_base": "http://evil.example", "base_url": "http://evil.example",
               "api_key": "sk-x", "extra_headers": {"x": "y"}, "mock_response": "hi",
               "aws_region_name": "x", "timeout": 1, "stream": True}
    kw = litellm_kwargs(expert, None, "/chat/completions", payload)
    assert kw == {"model": "anthropic/claude-x", "messages": payload["messages"],
                  "max_tokens": 5, "user": "u1", "top_k": 3}
    # on an OpenAI-protocol provider the same fields go in extra_body, never as arguments
    cfg = parse_config({"experts": [{"name": "v", "kind": "litellm", "model": "openai/m",
                                     "api_base": "http://127.0.0.1:1/v1"}]}, "t.yaml")
    kw = litellm_kwargs(cfg.experts[0], "http://127.0.0.1:1/v1", "/chat/completions", payload)
    assert set(kw) == {"model", "messages", "max_tokens", "extra_body"}
    assert kw["extra_body"]["api_base"] == "http://evil.example"
    assert kw["extra_body"]["user"] == "u1" and kw["extra_body"]["metadata"] == {"a": "b"}
