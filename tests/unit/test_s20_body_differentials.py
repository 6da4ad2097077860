"""The body the gateway checks is the body the expert gets: a JSON key written twice in one
object is refused (parsers disagree on which value counts: the gateway read the last
``messages`` while it forwarded the client's bytes, which a first-key parser reads as the
other one), and every malformed or hostile body is a 4xx naming what is wrong, never a 500,
or reaches the expert exactly as the gateway read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import exactjson
from tests.unit.gateway_helpers import base_config, gateway_client, raw_doubles


@pytest.fixture
async def raw_ups() -> Any:
    async for pair in raw_doubles():
        yield pair


def _first_key_wins(raw: bytes) -> Any:
    """How a parser that keeps a key's first value reads ``raw``."""
    def first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in pairs:
            d.setdefault(k, v)
        return d
    return json.loads(raw, object_pairs_hook=first)


def _error(r: Any) -> dict[str, Any]:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    obj = r.json()
    assert set(obj) == {"error"} and set(obj["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text
    return obj["error"]  # type: ignore[no-any-return]


_HEADERS = {"content-type": "application/json"}

#: (body, the duplicated key's path): "chatter" is an expert whose upstream model is its own
#: name, so a request naming it passes the client's bytes through untouched
DUPLICATES = [
    (b'{"model": "chatter", "messages": [{"role": "user", "content": "What is the capital '
     b'of France?"}], "messages": [{"role": "user", "content": "hello"}]}', "messages"),
    (b'{"model": "chatter", "messages": [{"role": "user", "content": "hi"}], '
     b'"model": "coder"}', "model"),
    (b'{"model": "chatter", "messages": [{"role": "user", "content": "first", '
     b'"content": "second"}]}', "messages.0.content"),
    # the same key once decoded: "mess\\u0061ges" is "messages"
    (b'{"model": "chatter", "messages": [{"role": "user", "content": "a"}], '
     b'"mess\\u0061ges": [{"role": "user", "content": "b"}]}', "messages"),
    # deep in a field the gateway does not read, beside colons and an escaped colon
    (b'{"model": "chatter", "messages": [{"role": "user", "content": "a: b \\u003a"}], '
     b'"metadata": {"x": [{"k:": 1, "k:": 2}]}}', "metadata.x.0.k:"),
]


@pytest.mark.parametrize(("raw", "path"), DUPLICATES)
async def test_a_key_written_twice_is_a_400_naming_it_and_nothing_is_forwarded(
        raw_ups: Any, tmp_path: Path, raw: bytes, path: str) -> None:
    coder, chatter = raw_ups
    # what the defect was: the gateway's reading and a first-key parser's differ
    assert orjson.loads(raw) != _first_key_wins(raw)
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        err = _error(r)
        assert r.status_code == 400 and err["type"] == "invalid_request_error"
        assert err["param"] == path and "duplicate key" in err["message"]
        assert repr(path.rsplit(".", 1)[-1]).strip("'") in err["message"]
    assert coder.bodies == [] and chatter.bodies == []


@pytest.mark.parametrize("path", ["/v1/route", "/v1/completions", "/v1/embeddings",
                                  "/v1/feedback"])
async def test_every_endpoint_refuses_a_duplicate_key(ups: Any, tmp_path: Path, path: str
                                                      ) -> None:
    raw = (b'{"model": "auto", "text": "hi", "prompt": "hi", "input": "hi", '
           b'"request_id": "r", "score": 1, "model": "chatter"}')
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post(path, content=raw, headers=_HEADERS)
        err = _error(r)
        assert r.status_code == 400 and err["param"] == "model", err
        assert "duplicate key 'model'" in err["message"]


async def test_a_duplicate_key_in_an_admin_body_is_a_400(ups: Any, tmp_path: Path) -> None:
    """The FastAPI part's bodies (``/admin/*``) are read through the same check."""
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/admin/reload", content=b'{"path": "a", "path": "b"}',
                         headers=_HEADERS)
        err = _error(r)
        assert r.status_code == 400 and err["param"] == "path" and "duplicate" in err["message"]


#: bodies without a key written twice, each of which takes a different path through the
#: check: colons in strings and keys, an escaped colon, the same key in sibling objects,
#: an integer beyond 64 bits, a long list, an object of many keys
UNIQUE = [
    {"model": "chatter", "messages": [{"role": "system", "content": "Note: be brief"},
                                      {"role": "user", "content": "a: b"}]},
    {"model": "chatter", "messages": [{"role": "user", "content": "time 12:30 \\u003a"}]},
    {"model": "chatter", "messages": [{"role": "user", "content": "x"}], "seed": 2**70},
    {"model": "chatter", "messages": [{"role": "user", "content": "x"}],
     "logit_bias": {str(i): 1 for i in range(100)}, "stop": [f"s:{i}" for i in range(40)]},
    {"model": "chatter", "messages": [{"role": "user", "content": "x"}],
     "metadata": {"a:b": {"a:b": [{"a": 1}, {"a": 2}]}}},
]


@pytest.mark.parametrize("body", UNIQUE)
async def test_a_body_without_duplicates_passes_byte_for_byte(raw_ups: Any, tmp_path: Path,
                                                              body: dict[str, Any]) -> None:
    coder, chatter = raw_ups
    raw = json.dumps(body).encode()  # the standard library's spacing: not orjson's bytes
    raw = raw.replace(b"\\\\u003a", b"\\u003a")  # the escape itself, not its text
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        assert r.status_code == 200, r.text
    assert chatter.bodies == [raw]


def test_the_check_agrees_with_a_pair_by_pair_reading() -> None:
    """The fast count and the re-parse agree on every shape (unit level, no server)."""
    cases = [(b"{}", None), (b"[]", None), (b'"a:b"', None), (b'{"a":1,"b":{"a":2}}', None),
             (b'{"a":1,"a":1}', "a"), (b'[{"a":1},{"b":[{"c":1,"c":2}]}]', "1.b.0.c"),
             (b'{"a":"\\u003a","b":1,"b":2}', "b"), (b'{"a" : 1 , "a" : 2}', "a"),
             (b'{"x":"\\u003a\\u003a","a":1,"a":2}', "a"),
             (b'{"l":[' + b",".join([b'{"k":1}'] * 40) + b'],"l":0}', "l"),
             (b'{"l":[' + b",".join([b'{"k":1,"k":2}'] * 40) + b"]}", "l.0.k")]
    # over exactjson.SCAN_BYTES, where the text is counted with numpy
    long = b'{"p":"' + b"x: " * 30_000
    cases += [(long + b'"}', None), (long + b'\\u003a","a":1}', None),
              (long + b'\\u003a","a":1,"a":2}', "a"), (long + b'","a":1,"a":2}', "a"),
              (long + b'\\\\u003a","a":1,"a":2}', "a")]
    for raw, want in cases:
        path = exactjson.duplicate_key(raw, exactjson.loads(raw))
        assert (path if path is None else ".".join(path)) == want, raw


def measure() -> None:
    """What the check costs beside orjson's parse (the figures in docs/security.md):
    ``.venv/bin/python -m tests.unit.test_s20_body_differentials``."""
    import timeit

    def chat(text: str, n: int = 1) -> bytes:
        return orjson.dumps({"model": "auto", "temperature": 0.2, "max_tokens": 100, "messages": [
            {"role": "system", "content": "Note: be brief."},
            *[{"role": "user", "content": text}] * n]})

    bodies = {"4 KB chat": chat("Hello: world. " * 285),
              "1 MB one prompt": chat("Hello: world. " * 74_000),
              "1 MB of 9000 messages": chat("Hello: world. " * 8, 9000),
              "1 MB of token ids": orjson.dumps({"model": "x", "prompt": list(range(140_000))})}
    for name, raw in bodies.items():
        obj = orjson.loads(raw)
        n = max(20, int(4e7 // len(raw)))

        def best(f: Any, n: int = n) -> float:
            return min(timeit.repeat(f, number=n, repeat=9)) / n * 1e6
        check = best(lambda: exactjson.duplicate_key(raw, obj))  # noqa: B023
        parse = best(lambda: orjson.loads(raw))  # noqa: B023
        print(f"{name:22s} {len(raw):9,d} B: duplicate_key {check:8.1f} us, orjson.loads "
              f"{parse:8.1f} us")


if __name__ == "__main__":
    measure()


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("depth", [300, 1000])
async def test_a_body_too_deep_to_forward_is_a_400_whoever_it_names(
        raw_ups: Any, tmp_path: Path, depth: int) -> None:
    """orjson reads 1024 levels and writes 254: a routed body deeper than that was a 400
    while the same body naming an expert went out as the client's bytes, which a Python
    expert reads only to its recursion limit (a 500 there, the client's fault counted
    against the expert). Both are the same 400 now, and nothing reaches the expert."""
    coder, chatter = raw_ups
    raw = (b'{"model": "%s", "messages": [{"role": "user", "content": "fix this bug in my '
           b'code"}], "extra": ' + _nested(depth) + b"}")
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path,
                              raise_app_exceptions=False) as (c, gw):
        for model in (b"chatter", b"auto"):
            r = await c.post("/v1/chat/completions", content=raw.replace(b"%s", model),
                             headers=_HEADERS)
            err = _error(r)
            assert r.status_code == 400 and "nested too deeply" in err["message"], err
        breaker = gw.dispatcher.pools["chatter"].replicas[0].breaker
        assert breaker.state == "closed"
        # brackets in strings are text: a body of many of them still passes untouched
        text = (b'{"model": "chatter", "messages": [{"role": "user", "content": "'
                + b"[{" * 400 + b'"}]}')
        r = await c.post("/v1/chat/completions", content=text, headers=_HEADERS)
        assert r.status_code == 200, r.text
    assert coder.bodies == [] and chatter.bodies == [text]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/admin/reload"])
async def test_a_body_not_in_utf8_is_a_400_naming_the_first_bad_byte(
        ups: Any, tmp_path: Path, path: str) -> None:
    """orjson said "str is not valid UTF-8: surrogates not allowed at position 0" of any such
    body: a Latin-1 "café" (no surrogate, not at 0) read as a bug in the client's JSON."""
    latin1 = '{"model": "chatter", "messages": [{"role": "user", "content": "café"}]}'
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        for raw, at in ((latin1.encode("latin-1"), latin1.index("é")),
                        (latin1.encode("utf-16"), 0)):
            r = await c.post(path, content=raw, headers=_HEADERS)
            err = _error(r)
            assert r.status_code == 400 and "not valid UTF-8" in err["message"], err
            assert f"byte 0x{raw[at]:02x} at position {at}" in err["message"], err
            assert "surrogates" not in err["message"]
    assert ups[1].received == []


async def test_a_body_too_deep_to_reread_is_the_same_400(ups: Any, tmp_path: Path) -> None:
    """A body the duplicate check must read again pair by pair (here: a colon written as an
    escape) deeper than the standard library reads: the 400 of a body too deep to forward."""
    raw = (b'{"model": "chatter", "messages": [{"role": "user", "content": "hi"}], "x": '
           + b"[" * 1020 + b'"\\u003a"' + b"]" * 1020 + b"}")
    async with gateway_client(base_config(ups[0].base, ups[1].base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", content=raw, headers=_HEADERS)
        err = _error(r)
        assert r.status_code == 400 and "nested too deeply to forward" in err["message"]
    assert ups[1].received == []


@pytest.mark.parametrize("part", [{"type": "text", "text": ["how do I pick a lock"]},
                                  {"type": "text", "text": None}, {"type": "text"},
                                  {"type": "text", "text": {"value": "x"}}])
@pytest.mark.parametrize("model", ["chatter", "auto"])
async def test_a_text_part_without_a_string_text_is_a_400(
        raw_ups: Any, tmp_path: Path, part: dict[str, Any], model: str) -> None:
    """The gateway reads a message's text from its parts' string ``text`` only: a text part
    whose text is anything else was skipped by the router (and a guard), while the part went
    on to the expert, which reads it its own way (a template that prints the list) or fails
    (a 500 counted against it). OpenAI refuses such a part with a 400; so does the gateway,
    naming it, before any decision."""
    coder, chatter = raw_ups
    body = {"model": model, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "tell me a joke"}, part]}]}
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=body)
        err = _error(r)
        assert r.status_code == 400 and err["param"] == "messages.0.content.1.text", err
        assert "string" in err["message"]
        r = await c.post("/v1/route", json={**body, "model": "auto"})
        assert r.status_code == 400 and _error(r)["param"] == "messages.0.content.1.text"
    assert coder.bodies == [] and chatter.bodies == []
