"""A ``kind: litellm`` expert's upstream faults are reported as an ``openai`` expert's are.

Each case plays one reply of an upstream double (a 200 that is no answer, a 429 with
``retry-after``, a 401, the request's own 400, a refused connection) to an ``openai`` expert
and to a ``kind: litellm`` one (LiteLLM's ``openai/`` provider, a real LiteLLM call), routed
(with a fallback) and named (none): the client's status, headers and error, the routing-log
record, the counters and the calls the upstream received must be the same. Before, LiteLLM's
own client retried a 429 or a 503 twice per gateway attempt (sleeping for its
``retry-after``: past the expert's timeout, a 504), a 200 LiteLLM could not read was a
500 retried on the same replica, a refused connection said ``answered 500``, and the
request's own 400 counted as the expert's error. All on
127.0.0.1, in process, each request given 15 s at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from expertgate.bench.upstream_double import LocalSite
from expertgate.procs import free_port
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_stream_failover import _upstream_lines

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:Item.*`ReadOnly` qualifier:UserWarning")]

KEY_ENV = "EG_TEST_LITE_KEY"
ROUTED = "fix this bug in my code"  # routed to the coder, the chatter its fallback
J = {"content-type": "application/json"}
ANSWER = {"id": "x", "object": "chat.completion", "created": 1, "model": "up-coder",
          "choices": [{"index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": "hi there"}}]}
_VOLATILE_HEADERS = {"x-request-id", "x-expertgate-decision-ms", "date", "content-length"}
_VOLATILE_FIELDS = {"request_id", "ts", "latency_ms", "upstream_ms", "decision_ms",
                    "ttft_ms", "duration_ms", "queue_ms", "replica"}


@dataclass
class FixedReplyDouble(LocalSite):
    """An upstream double whose every request gets ``reply`` (status, headers, body)."""

    reply: tuple[int, dict[str, str], bytes] = (200, {}, b"")
    port: int = field(default_factory=free_port)
    received: list[dict[str, Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def _app(self) -> web.Application:
        app = web.Application()
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        status, headers, body = self.reply
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def fixed() -> AsyncIterator[FixedReplyDouble]:
    d = await FixedReplyDouble().start()
    yield d
    await d.stop()


async def _play(kind: str, base: str, chatter: Any, tmp: Path, model: str,
                received: list[Any], path: str = "/chat/completions") -> dict[str, Any]:
    """One non-streamed request (chat, or ``path``) through a fresh gateway whose coder
    (``kind``) is at ``base``: what the client, the routing log and /metrics saw, and the
    calls made."""
    tmp.mkdir()
    cfg = base_config(base, chatter.base)
    cfg["experts"][0]["timeout_s"] = 5  # LiteLLM's first call in a process imports a lot
    if kind == "litellm":
        cfg["experts"][0].update(kind="litellm", model="openai/up-coder", api_key_env=KEY_ENV)
    before = len(received)
    async with gateway_client(cfg, tmp) as (c, _):
        body = chat(model, ROUTED) if path == "/chat/completions" else \
            {"model": model, "prompt": ROUTED}
        r = await asyncio.wait_for(c.post("/v1" + path, json=body), 15)
        metrics = (await c.get("/metrics")).text
    (rec,) = [orjson.loads(x) for x in (tmp / "log.jsonl").read_bytes().splitlines()]
    return {"status": r.status_code,
            "headers": {k: v for k, v in r.headers.items() if k not in _VOLATILE_HEADERS},
            # LiteLLM re-encodes an answer (its own fields): its errors must be the same
            "error": r.json().get("error") if r.status_code != 200 else None,
            "answer": r.json()["choices"][0].get("message", {}).get("content")
            if r.status_code == 200 else None,
            "record": {k: v for k, v in rec.items() if k not in _VOLATILE_FIELDS},
            "metrics": _upstream_lines(metrics), "calls": len(received) - before}


async def _same_as_http(fixed: FixedReplyDouble, chatter: Any, tmp: Path, model: str,
                        path: str = "/chat/completions") -> dict[str, Any]:
    http = await _play("openai", fixed.base, chatter, tmp / "http", model, fixed.received,
                       path)
    lite = await _play("litellm", fixed.base, chatter, tmp / "lite", model, fixed.received,
                       path)
    for k in http:
        assert lite[k] == http[k], k
    return http


@pytest.mark.parametrize("reply,said", [
    ((200, J, orjson.dumps({"object": "error", "message": "overloaded"})),
     "answered 200 without 'choices'"),
    ((200, J, orjson.dumps({**ANSWER, "choices": []})), "answered 200 without 'choices'"),
    ((200, {"content-type": "text/html"}, b"<html>proxy error</html>"),
     "answered 200 with invalid JSON"),
    ((200, J, b'{"choices": [{"message": {"content": "trunc'),
     "answered 200 with invalid JSON"),
], ids=["no-choices", "empty-choices", "html", "cut-json"])
@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_a_200_that_is_no_answer_is_a_protocol_failure_as_http(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reply: tuple[int, dict[str, str], bytes], said: str, model: str) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = reply
    http = await _same_as_http(fixed, ups[1], tmp_path, model)
    if model == "auto":  # failed over, not retried on the replica that answered it
        assert http["headers"]["x-expertgate-expert"] == "chatter"
        assert "coder:protocol" in http["headers"]["x-expertgate-reason"]
    else:
        assert http["status"] == 502
        assert http["error"]["code"] == "upstream_protocol_error"
        assert http["error"]["message"].endswith(f"last: coder {said}")
    assert 'expertgate_upstream_errors_total{expert="coder",kind="protocol"} 1.0' in \
        http["metrics"]
    assert http["calls"] == 1


async def test_a_text_completion_without_choices_is_a_protocol_failure_as_http(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    # LiteLLM answers it with a choice of its own making (no text, no finish): refused
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = (200, J, orjson.dumps({"object": "error", "message": "overloaded"}))
    http = await _same_as_http(fixed, ups[1], tmp_path, "coder", "/completions")
    assert http["status"] == 502
    assert http["error"]["message"].endswith("last: coder answered 200 without 'choices'")


@pytest.mark.parametrize("status,retry_after", [(429, "7"), (429, "0.2"), (503, "9")])
@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_a_rate_limit_or_503_is_retried_and_answered_as_http(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        status: int, retry_after: str, model: str) -> None:
    # the gateway retries (once, when the wait asked is within its backoff cap), never
    # LiteLLM's own client behind it; the client gets the upstream's retry-after
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = (status, {**J, "retry-after": retry_after},
                   orjson.dumps({"error": {"message": "slow down", "type": "rate_limit"}}))
    http = await _same_as_http(fixed, ups[1], tmp_path, model)
    assert http["calls"] == (2 if retry_after == "0.2" else 1)
    if model == "coder":
        assert http["status"] == (429 if status == 429 else 502)
        assert http["headers"]["retry-after"] == retry_after


@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_an_upstream_that_refuses_the_gateways_key_is_an_auth_failure_as_http(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model: str) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = (401, J, orjson.dumps({"error": {
        "message": "Incorrect API key provided: sk-lite-test", "type": "invalid_request_error"}}))
    http = await _same_as_http(fixed, ups[1], tmp_path, model)
    assert 'expertgate_upstream_errors_total{expert="coder",kind="auth"} 1.0' in http["metrics"]
    if model == "coder":
        assert http["error"]["code"] == "upstream_auth_failed"
        assert "sk-lite-test" not in orjson.dumps(http).decode()


@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_the_requests_own_400_is_its_answer_not_the_experts_failure(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        model: str) -> None:
    # passed on after one call, not counted as the expert's error (an openai expert's is
    # not), with the provider's own error object (its type, param and code)
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = (400, J, orjson.dumps({"error": {
        "message": "bad thing", "type": "invalid_request_error", "param": "messages",
        "code": "bad"}}))
    got = {kind: await _play(kind, fixed.base, ups[1], tmp_path / kind, model, fixed.received)
           for kind in ("openai", "litellm")}
    http, lite = got["openai"], got["litellm"]
    assert http["status"] == lite["status"] == 400
    assert lite["error"] == http["error"]
    assert lite["error"]["code"] == "bad" and lite["error"]["param"] == "messages"
    for k in ("headers", "metrics", "calls"):
        assert lite[k] == http[k], k
    assert not [m for m in lite["metrics"] if m.startswith("expertgate_upstream_errors")]


async def test_an_answer_without_usage_is_estimated_as_http(
        fixed: FixedReplyDouble, ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    fixed.reply = (200, J, orjson.dumps(ANSWER))
    http = await _same_as_http(fixed, ups[1], tmp_path, "coder")
    assert http["answer"] == "hi there"
    assert http["headers"]["x-expertgate-degraded"] == "usage-estimated"


@pytest.mark.parametrize("model", ["auto", "coder"])
async def test_a_refused_connection_is_a_connect_failure_as_http(
        ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    http = await _play("openai", base, ups[1], tmp_path / "http", model, [])
    lite = await _play("litellm", base, ups[1], tmp_path / "lite", model, [])
    if model == "coder":
        assert http["error"]["message"].endswith("last: coder connection failed")
    tries = 2 if model == "coder" else 1  # the chain's last expert is tried again
    assert f'expertgate_upstream_errors_total{{expert="coder",kind="connect"}} {tries:.1f}' \
        in http["metrics"]
    for k in http:
        assert lite[k] == http[k], k


async def test_a_provider_error_prints_no_litellm_banner(
        ups: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    # LiteLLM printed "Give Feedback / Get Help: https://github.com/BerriAI/litellm/..." in
    # ANSI colours to the server's stdout on every error it mapped
    monkeypatch.setenv(KEY_ENV, "sk-lite-test")
    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    got = await _play("litellm", base, ups[1], tmp_path / "lite", "coder", [])
    assert got["status"] == 502
    out, err = capfd.readouterr()
    assert "Give Feedback" not in out + err and "\033[1;31m" not in out + err
