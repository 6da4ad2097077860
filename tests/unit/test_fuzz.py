"""Hostile input against a real gateway process: schemathesis on its own OpenAPI document, and
hypothesis on raw request bodies. Neither may ever produce a 500 or an error that is not
OpenAI-shaped.

The gateway runs as ``expertgate serve`` on 127.0.0.1 (real uvicorn + httptools parsing) in
front of an OpenAI-compatible upstream double served from a background thread. Example counts
are bounded (``FUZZ_EXAMPLES``); ``pytest --hypothesis-show-statistics`` prints how many ran.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.unit.gateway_helpers import base_config

FUZZ_EXAMPLES = 60
BODY_EXAMPLES = 300


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("fuzz")
    coder, chatter = ThreadedDouble("coder-double"), ThreadedDouble("chatter-double")
    cfg = base_config(coder.base, chatter.base)
    (tmp / "gw.yaml").write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(tmp / "gw.yaml", routing_log=tmp / "log.jsonl", log_path=tmp / "gw.out",
                       check_upstreams=False)
    try:
        gw.start()
        yield gw.url
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
    out = (tmp / "gw.out").read_text()
    assert "Traceback" not in out, out[-3000:]


_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
           response_schema_conformance, response_headers_conformance]


def _fuzz_operation(strategy: Any, label: str, ran: dict[str, int]) -> Any:
    @given(case=strategy)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        ran[label] = ran.get(label, 0) + 1
        case.call_and_validate(checks=_CHECKS)

    return run


def test_openapi_schema_conformance(live_gateway: str) -> None:
    """Every operation of GET /openapi.json, with schemathesis-generated (mostly valid) data.

    (Driven from a plain test: schemathesis' own pytest loader does not run on pytest 9.)
    """
    schema = schemathesis.openapi.from_url(live_gateway + "/openapi.json")
    ran: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"

        _fuzz_operation(op.as_strategy(), label, ran)()
    assert "POST /v1/chat/completions" in ran and "GET /v1/models" in ran
    assert all(n >= 1 for n in ran.values())
    print(f"schemathesis: {sum(ran.values())} cases over {len(ran)} operations: {ran}")


# --------------------------------------------------------------------------- raw bodies

def _dumps(v: Any) -> bytes:
    # the stdlib, not orjson: it also writes integers beyond 64 bits and Infinity
    return json.dumps(v).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
    st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids,
                                                              max_size=4),
    max_leaves=20)

message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "wizard"]) | json_values},
    optional={"content": st.text(max_size=60) | json_values, "name": json_values})

chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "coder", "chatter", "gpt-4o", ""]) | json_values,
     "messages": st.lists(message, max_size=4) | json_values},
    optional={"stream": st.booleans() | json_values,
              "max_tokens": st.integers(-5, 10**12) | json_values,
              "n": st.integers(-2, 3) | json_values,
              "temperature": json_values, "stream_options": json_values})

completion_like = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "chatter"]) | json_values,
     "prompt": st.text(max_size=60) | st.lists(st.text(max_size=10), max_size=3) | json_values},
    optional={"stream": st.booleans(), "max_tokens": json_values})

bodies = (chat_like.map(_dumps) | completion_like.map(_dumps) |
          json_values.map(_dumps) | st.binary(max_size=200))


def _check_response(r: httpx.Response) -> None:
    assert r.status_code != 500 and r.status_code < 600, r.text[:500]
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    elif r.headers["content-type"].startswith("application/json"):
        assert isinstance(r.json(), dict)
    else:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.text.rstrip().endswith("data: [DONE]")


@pytest.fixture(scope="module")
def http(live_gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_gateway, timeout=30) as c:
        yield c


@given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       ctype=st.sampled_from(["application/json", "text/plain", ""]))
@settings(max_examples=BODY_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_arbitrary_bodies_never_500_and_errors_are_openai_shaped(
        http: httpx.Client, body: bytes, path: str, ctype: str) -> None:
    headers = {"content-type": ctype} if ctype else {}
    _check_response(http.post(path, content=body, headers=headers))


@given(rid=st.text(max_size=300), auth=st.text(max_size=80))
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_headers_never_500(http: httpx.Client, rid: str, auth: str) -> None:
    headers = {"x-request-id": rid.encode("utf-8", "surrogatepass").decode("latin-1"),
               "authorization": auth.encode("utf-8", "surrogatepass").decode("latin-1")}
    try:
        r = http.post("/v1/chat/completions", headers=headers,
                      json={"model": "chatter", "messages": [{"role": "user", "content": "x"}]})
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # the client refuses to send such a header: nothing reached the gateway
    _check_response(r)


def test_gateway_still_serves_after_the_fuzzing(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions",
                  json={"model": "auto",
                        "messages": [{"role": "user", "content": "tell me a joke"}]})
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
