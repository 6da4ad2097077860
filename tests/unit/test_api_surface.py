"""The OpenAI API surface as an app developer meets it: what a policy routes on when a
request is very long, which bodies are refused with which status, what reaches the expert
untouched."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.errors import InvalidRequest
from gateway.pipeline import ROUTING_HEAD_CHARS, ROUTING_TAIL_CHARS
from gateway.redact import redact
from gateway.request.schema import validate
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client

Ups = tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble]


async def test_a_very_long_prompt_routes_on_a_bounded_head_and_tail(
        ups: Ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt near the body limit is routed on its start and its end only: embedding all of
    it (a megabyte: 1.5 s of MiniLM's tokeniser, on the one embedding thread every other
    request's decision waits behind) tells the router nothing the embedders read anyway.
    The expert still gets the whole prompt."""
    seen: list[str] = []
    real = HashingEmbedder.embed

    def embed(self: HashingEmbedder, texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    bound = ROUTING_HEAD_CHARS + 1 + ROUTING_TAIL_CHARS
    long = "START " + "please fix this bug in my code " * 12_000 + " END"
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["policies"].append({**cfg["policies"][0], "name": "conv",
                            "routing_text": "conversation"})
    async with gateway_client(cfg, tmp_path, max_body_bytes=4 << 20) as (c, _):
        seen.clear()
        for model in ("auto", "conv"):
            r = await c.post("/v1/chat/completions", json=chat(model, long))
            assert r.status_code == 200, r.text
        assert ups[0].received[-1]["messages"][0]["content"] == long  # forwarded whole
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": [long, "a batch"]})
        assert r.status_code == 200, r.text
        r = await c.post("/v1/route", json={"model": "auto", "text": long + " route"})
        assert r.status_code == 200, r.text
        # a conversation of many long turns: its system prompt and its latest turn
        turns = [{"role": "system", "content": "SYSTEM rules"}] + [
            {"role": "user", "content": "tell me a joke " * 1000}] * 100 + [
            {"role": "user", "content": "LAST question"}]
        r = await c.post("/v1/route", json={"model": "conv", "messages": turns})
        assert r.status_code == 200, r.text
        assert len(seen) == 5
        for text in seen:
            assert len(text) <= bound, len(text)
        for text in seen[:4]:
            assert text.startswith(("START", "user: START"))
            assert text.endswith(("END", "a batch", "route"))
        assert seen[4].startswith("system: SYSTEM rules") and seen[4].endswith("LAST question")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/route", "/v1/feedback"])
async def test_a_body_declared_as_another_media_type_is_a_415(ups: Ups, tmp_path: Path,
                                                                path: str) -> None:
    """What vLLM's FastAPI server refuses (422), and what a browser page may send another
    site without asking it first (a CORS "simple" request: text/plain, a form): a body
    declared as anything but JSON is a 415 naming the type, before any routing or upstream
    call. No content-type at all is read as JSON (scripts that forget the header), as
    vLLM reads it."""
    body = chat("auto", "tell me a joke") if path != "/v1/feedback" else {
        "request_id": "x", "score": 1.0}
    raw = orjson.dumps(body)
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        for ctype in ("text/plain", "text/plain;charset=UTF-8",
                      "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = await c.post(path, content=raw, headers={"content-type": ctype})
            assert r.status_code == 415, (ctype, r.text)
            err = r.json()["error"]
            assert err["code"] == "unsupported_media_type" and ctype.split(";")[0] in \
                err["message"] and "application/json" in err["message"]
        assert not ups[0].received and not ups[1].received
        ok = 404 if path == "/v1/feedback" else 200  # an unknown request id: read as JSON
        for json_type in ("application/json", "Application/JSON; charset=utf-8",
                          "application/merge+json", None):
            headers = {"content-type": json_type} if json_type else {}
            r = await c.post(path, content=raw, headers=headers)
            assert r.status_code == ok, (json_type, r.text)


async def test_an_embeddings_batch_is_checked_as_a_completions_batch(ups: Ups,
                                                                     tmp_path: Path) -> None:
    """OpenAI and vLLM take ``input`` as a text, texts, token ids or lists of token ids; an
    empty text is refused alone ("") and must be in a batch too, as a completions prompt's
    is, a batch mixing texts and token ids is none of these, and a token id is never
    negative (an index into the expert's vocabulary: -1 reads another row, or fails on the
    accelerator): 400s naming the item, never forwarded."""
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "emb", "api_base": ups[0].base, "embeddings": True})
    async with gateway_client(cfg, tmp_path) as (c, _):
        for bad, param in (([""], "input.0"), (["a", ""], "input.1"), ([[]], "input.0"),
                           ([[1], []], "input.1"), (["a", 1], "input."), ([[1], "a"], "input."),
                           ([1, [2]], "input."), ([1, -1], "input.1"), ([[1], [-2]], "input.1.0")):
            r = await c.post("/v1/embeddings", json={"model": "emb", "input": bad})
            assert r.status_code == 400, (bad, r.text)
            err = r.json()["error"]
            assert err["param"].startswith(param) and err["type"] == "invalid_request_error", (
                bad, err)
        assert not ups[0].received
        for good in ("a", ["a", "b"], [1, 2], [[1], [2, 3]]):
            r = await c.post("/v1/embeddings", json={"model": "emb", "input": good})
            assert r.status_code == 200, (good, r.text)
            assert ups[0].received[-1]["input"] == good


async def test_null_stream_is_not_streaming_as_openai_and_vllm_read_it(ups: Ups,
                                                                       tmp_path: Path) -> None:
    """OpenAI documents ``stream`` as "boolean or null" and vLLM defaults a null one to
    false; a client that writes every optional field (``"stream": null``) got a 400."""
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        for path, body in (("/v1/chat/completions", chat("auto", "tell me a joke")),
                           ("/v1/chat/completions", chat("coder", "hi")),
                           ("/v1/completions", {"model": "auto", "prompt": "tell me a joke"})):
            r = await c.post(path, json={**body, "stream": None})
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].startswith("application/json")
        r = await c.post("/v1/chat/completions", json={**chat("coder", "hi"), "stream": "yes"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


async def test_a_huge_unknown_model_name_is_not_echoed_whole(ups: Ups, tmp_path: Path) -> None:
    """The 404 for a model that does not exist quotes its name; a name of half a megabyte
    was quoted whole in the answer and in every routing-log record (its ``reason``), one
    log line per request the size of the request. The name is shortened, its start kept."""
    name = "gpt-" + "x" * 500_000
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat(name, "hi"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert len(r.content) < 2000 and "`gpt-xxx" in r.json()["error"]["message"]
        r = await c.get("/v1/models/" + name[:5000])
        assert r.status_code == 404 and len(r.content) < 2000
        ok = await c.post("/v1/chat/completions", json=chat("nope", "hi"))
        assert "`nope`" in ok.json()["error"]["message"]  # a short name is quoted whole
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(len(line) < 4000 for line in lines)


@pytest.mark.parametrize("endpoint,body", [
    ("chat", {"model": "auto", "messages": [1] * 400_000}),
    ("chat", {"model": "auto", "messages": [{}] * 100_000}),
    ("chat", {"model": "auto", "messages": [{"role": "user", "content": [1] * 400_000}]}),
    ("route", {"model": "auto", "messages": [1] * 400_000}),
    ("completions", {"model": "auto", "prompt": [1] * 400_000 + [[1]]}),
    ("embeddings", {"model": "emb", "input": [[1]] + [[]] * 2047}),
    # the dry run takes a chat body's other fields, as the chat endpoint does
    ("route", {"model": "auto", "messages": [1], **{f"k{i}": 1 for i in range(80_000)}}),
    ("feedback", {"request_id": "x", "score": 1.0, **{f"k{i}": 1 for i in range(80_000)}}),
])
def test_a_body_of_many_bad_items_is_refused_as_fast_as_one(endpoint: str,
                                                             body: dict[str, object]) -> None:
    """A megabyte of bad list items (``"messages": [1, 1, ...]``) took pydantic 3 s of the
    event loop's time, every other request waiting, to write an error per item and report
    the first: lists stop at their first bad item. The same for the unknown keys of a
    closed body (the dry run's, feedback's): 0.7 s for 80,000 of them."""
    raw = orjson.dumps(body)
    took = []
    for _ in range(3):  # the fastest of three: another process's burst is not the code's
        t0 = time.perf_counter()
        with pytest.raises(InvalidRequest) as e:
            validate(endpoint, raw, max_messages=512)
        took.append(time.perf_counter() - t0)
    assert min(took) < 0.25, e.value.message
    assert e.value.param is not None and e.value.param.split(".")[0] in (
        "messages", "prompt", "input", "k0")


#: redact's URL-userinfo pattern as it was (one regex): the reference its linear scan must
#: agree with, on inputs short enough for the regex's quadratic time
_USERINFO_REGEX = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/?#\s'\"<>]*@|[^/?#\s@'\":<>]+:[^\s@'\"<>]*@)")


@given(st.text(alphabet="aB1_.+-:/@?# \n'\"<>é", max_size=40))
@settings(max_examples=3000, deadline=None)
def test_redact_masks_userinfo_exactly_as_its_regex_did(text: str) -> None:
    assert redact(text) == _USERINFO_REGEX.sub(r"\1***@", text)


@pytest.mark.parametrize("text", [
    "a." * 500_000 + "@", "a-" * 500_000 + "@", "a://x:" * 170_000 + "<@",
    "a://b" * 200_000 + " @", "x://" * 250_000 + "@", "Bearer " * 150_000,
    "basic " * 150_000 + "@",
])
def test_redact_takes_linear_time(text: str) -> None:
    """redact reads every error message and log line, some quoting a client (a JSON key of
    the dry run's body) or an upstream: its URL pattern was quadratic (32 KB of ``a.a.a.``
    before an ``@``: 4 s; a megabyte: hours of the event loop)."""
    took = []
    for _ in range(3):  # the fastest of three: another process's burst is not the code's
        t0 = time.perf_counter()
        redact(text)
        took.append(time.perf_counter() - t0)
    assert min(took) < 1.0


async def test_a_dry_run_with_a_huge_unknown_key_is_answered_at_once(ups: Ups,
                                                                      tmp_path: Path) -> None:
    key = "a." * 200_000 + "@"
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        t0 = time.perf_counter()
        # the dry run takes a chat body's fields; the feedback body is closed
        r = await c.post("/v1/feedback", json={"request_id": "x", "score": 1, key: 1})
        assert r.status_code == 400 and time.perf_counter() - t0 < 2.0
        assert r.json()["error"]["message"].endswith("Extra inputs are not permitted")


async def test_the_model_list_answers_under_every_base_url_shape(ups: Ups,
                                                                 tmp_path: Path) -> None:
    # a base URL without /v1 (POST /chat/completions is served there) or ending in a slash
    # ('/v1/models/') listed nothing: a 404 Not Found, and "model '' does not exist"
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        want = (await c.get("/v1/models")).json()
        assert {m["id"] for m in want["data"]} >= {"coder", "chatter"}
        for path in ("/models", "/v1/models/"):
            r = await c.get(path)
            assert r.status_code == 200 and r.json() == want, path
        assert (await c.get("/v1/models/coder")).json()["id"] == "coder"
