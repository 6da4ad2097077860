"""A stream whose client asked for no usage event, to an OpenAI-protocol expert (vLLM, OpenAI,
anything that honours ``stream_options.include_usage``): the gateway asks the upstream for
its usage, so the routing log, the cost and the token budget count the upstream's own figures,
not an estimate, and takes that event out of the client's stream, which asked for none (a
chunk without choices breaks ``chunk.choices[0]`` loops). A llama-cpp-python expert, which
sends no usage event, is not asked; its figures stay the marked estimate
(tests/unit/test_stream_usage_logged.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.gateway_helpers import base_config, gateway_client

BIG = 123456789012345678901234567890  # an integer beyond 64 bits: forwarded as written


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def _events(body: bytes) -> list[Any]:
    out = []
    for line in body.splitlines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


@pytest.mark.parametrize("client_opts", [None, {"include_usage": False}])
async def test_a_stream_without_usage_asked_is_counted_from_the_upstreams_usage(
        ups: Any, tmp_path: Path, client_opts: dict[str, Any] | None) -> None:
    coder, chatter = ups
    opts = b'"stream_options":' + orjson.dumps(client_opts) + b"," if client_opts else b""
    raw = (b'{"model":"coder","stream":true,"x_big":%d,' % BIG + opts +
           b'"messages":[{"role":"user","content":"hi"}]}')
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=raw,
                         headers={"content-type": "application/json"})
        assert r.status_code == 200
        assert r.content.rstrip().endswith(b"data: [DONE]")
        events = _events(r.content)
    # the client gets what it asked for: every chunk has its choice, none carries usage
    assert events and all(ev["choices"] for ev in events)
    assert all(ev.get("usage") is None for ev in events)
    assert "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events)
    # the upstream was asked, the rest of the body as the client wrote it
    (sent,) = coder.received
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["x_big"] == BIG and sent["messages"] == [{"role": "user", "content": "hi"}]
    (rec,) = _records(tmp_path / "log.jsonl")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 5)  # the upstream's
    assert rec["degraded"] is None


async def test_a_client_that_asks_for_usage_gets_the_upstreams_event(
        ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]})
    events = _events(r.content)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 5
    assert all(ev["choices"] for ev in events[:-1])
    (rec,) = _records(tmp_path / "log.jsonl")
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (7, 5)
    assert rec["degraded"] is None


async def test_a_llama_cpp_expert_is_not_asked_for_usage(ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    coder.stream_usage = False  # as llama-cpp-python: no usage event, asked or not
    cfg = base_config(coder.base, chatter.base)
    cfg["experts"][0]["dialect"] = "llama-cpp-python"
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
    (sent,) = coder.received
    assert "stream_options" not in sent
    (rec,) = _records(tmp_path / "log.jsonl")
    assert rec["degraded"] == ["usage-estimated"]


async def test_a_non_streamed_request_is_sent_as_written(ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        raw = b'{"model":"coder","messages":[{"role":"user","content":"hi"}]}'
        r = await c.post("/v1/chat/completions", content=raw,
                         headers={"content-type": "application/json"})
        assert r.status_code == 200
    (sent,) = coder.received
    assert "stream_options" not in sent



def test_the_usage_event_is_cut_out_whole_and_only_it() -> None:
    from gateway.request.respond import _without_usage_event

    tok = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
    use = b'data: {"choices":[],"usage":{"prompt_tokens":1}}\n\n'
    done = b"data: [DONE]\n\n"
    assert _without_usage_event(tok + use + done) == (tok + done, True)
    crlf = use.replace(b"\n", b"\r\n")
    assert _without_usage_event(tok + crlf + done) == (tok + done, True)
    spaced = b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n'
    assert _without_usage_event(spaced + done) == (done, True)
    assert _without_usage_event(tok + done) == (tok + done, False)
    # an empty choices list without usage (a vLLM keep-alive chunk) stays
    other = b'data: {"choices":[]}\n\n'
    assert _without_usage_event(other + done) == (other + done, False)
