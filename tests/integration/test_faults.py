"""Fault tests with real processes on 127.0.0.1, through a real ``expertgate serve``.

A bounded load (200 requests, concurrency 8, streaming and not, routed and explicit) runs
while faults are injected: the upstream refuses connections, answers 5xx, hangs past its
timeout, cuts streams mid-way; Redis is killed (SIGKILL) and restarted. Every request must get
a response or a well-formed error (counts add up: sent = answered + failed cleanly, lost = 0);
nothing may be sent to an upstream twice once it started answering; and the gateway must
recover by itself (the failed expert is used again, Redis shared again, /readyz says so).

The same load runs against real llama.cpp experts (SmolLM2) with one of them killed and
restarted; llama.cpp cannot count what it received, hence the upstream-double run for the
duplicate check. A SIGTERM test proves the graceful shutdown: in-flight requests and streams
finish and their log records are written.

With ``EXPERTGATE_FAULTS_JSON_DIR`` set, each fault run that passes writes its counts (with the
commit, dirty flag, package versions and command) to ``<dir>/faults-<run>.json``: the figures
of docs/reliability.md are generated from those files by ``expertgate eval report``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.procs import GatewayServer, LlamaServer, RedisServer
from tests.integration.conftest import require_llama
from tests.unit.gateway_helpers import ROUTES

pytestmark = pytest.mark.integration

SENT = 200
CONCURRENCY = 8


class RecordingDouble(OpenAIUpstreamDouble):
    """Also records which requests it started answering (a 200 whose first byte went out)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.answered: list[str] = []
        self.chunk_delay_s = 0.0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        resp = await super()._chat(request)
        if resp.status == 200:
            body = await request.json()  # aiohttp keeps the body read by the handler
            msgs = body.get("messages") or [{}]
            self.answered.append(str(msgs[-1].get("content", "")))
        return resp


@dataclass
class Outcomes:
    answered: int = 0
    failed_cleanly: int = 0
    lost: list[str] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    experts: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return self.answered + self.failed_cleanly + len(self.lost)


def _is_error_body(obj: Any) -> bool:
    return (isinstance(obj, dict) and set(obj) == {"error"} and
            {"message", "type", "param", "code"} <= set(obj["error"]))


def classify(out: Outcomes, i: int, r: httpx.Response, stream: bool) -> None:
    out.statuses[r.status_code] += 1
    out.experts[r.headers.get("x-expertgate-expert", "-")] += 1
    if r.status_code != 200:
        try:
            body = r.json()
        except ValueError:
            out.lost.append(f"#{i}: {r.status_code} not JSON: {r.text[:200]}")
            return
        if _is_error_body(body):
            out.failed_cleanly += 1
            out.errors[body["error"]["code"]] += 1
        else:
            out.lost.append(f"#{i}: {r.status_code} not an OpenAI error: {r.text[:200]}")
        return
    if not stream:
        try:
            body = r.json()
        except ValueError:
            out.lost.append(f"#{i}: 200 not JSON: {r.text[:200]}")
            return
        if body.get("choices") and body["choices"][0]["message"]["content"]:
            out.answered += 1
        else:
            out.lost.append(f"#{i}: 200 without an answer: {r.text[:200]}")
        return
    events = [ln[6:] for ln in r.text.split("\n") if ln.startswith("data: ")]
    if events and events[-1] == "[DONE]" and all(
            "choices" in orjson.loads(e) for e in events[:-1]):
        out.answered += 1
        return
    if events and _is_error_body(orjson.loads(events[-1])):
        out.failed_cleanly += 1
        out.errors[orjson.loads(events[-1])["error"]["code"]] += 1
        return
    out.lost.append(f"#{i}: stream neither finished nor ended with an error: {r.text[-300:]}")


def request_body(i: int, max_tokens: int = 8) -> tuple[str, dict[str, Any], bool]:
    """Request ``i`` of the load: a unique marker in its text, a mix of kinds."""
    stream = i % 3 == 0
    kind = i % 4
    text = (f"fix this bug in my code req-{i}" if kind in (0, 1) else
            f"tell me a joke req-{i}")
    model = "auto" if kind != 3 else "coder"
    return (f"req-{i}", {"model": model, "stream": stream, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": text}]}, stream)


async def drive(url: str, n: int, on_progress: Callable[[int], Awaitable[None]],
                max_tokens: int = 8, timeout_s: float = 120.0, pause_s: float = 0.0
                ) -> Outcomes:
    """``n`` requests at CONCURRENCY; ``on_progress(done)`` after each one (fault injection).

    ``pause_s`` between a worker's requests spreads the load over time, so that each fault
    phase lasts longer than the circuit breakers' cooldowns."""
    out = Outcomes()
    todo = collections.deque(range(n))
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while todo:
            i = todo.popleft()
            marker, body, stream = request_body(i, max_tokens)
            try:
                r = await client.post(url + "/v1/chat/completions", json=body,
                                      headers={"x-request-id": marker})
            except httpx.HTTPError as e:
                out.lost.append(f"#{i}: {type(e).__name__}: {e}")
            else:
                classify(out, i, r, stream)
            done += 1
            await on_progress(done)
            if pause_s:
                await asyncio.sleep(pause_s)

    async with httpx.AsyncClient(timeout=timeout_s) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return out


def gateway_config(coder: str, chatter: str, coder_timeout_s: float) -> dict[str, Any]:
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "coder", "api_base": coder, "timeout_s": coder_timeout_s,
             "connect_timeout_s": 1.0},
            {"name": "chatter", "api_base": chatter, "timeout_s": 60, "connect_timeout_s": 1.0},
        ],
        "policies": [{"name": "auto", "routes": ROUTES, "params": {"threshold": 0.05},
                      "fallback": ["chatter"]}],
    }


async def _get_json(url: str) -> tuple[int, Any]:
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(url)
        return r.status_code, r.json()


async def _wait_for(cond: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if await cond():
            return True
        await asyncio.sleep(0.2)
    return False


async def _recovered(url: str, expert: str, tries: int = 60) -> httpx.Response:
    """Send coder-routed requests until the coder answers again (bounded)."""
    async with httpx.AsyncClient(timeout=60) as c:
        for k in range(tries):
            r = await c.post(url + "/v1/chat/completions", json={
                "model": "auto", "max_tokens": 4,
                "messages": [{"role": "user", "content": f"fix this bug in my code after {k}"}]})
            if r.status_code == 200 and r.headers.get("x-expertgate-expert") == expert:
                return r
            await asyncio.sleep(0.25)
    raise AssertionError(f"{expert} was not used again after it came back")


def _report(name: str, out: Outcomes) -> None:
    print(f"\n{name}: sent {SENT}, answered {out.answered}, failed cleanly "
          f"{out.failed_cleanly} {dict(out.errors)}, lost {len(out.lost)}; statuses "
          f"{dict(out.statuses)}; experts {dict(out.experts)}")


def _publish(run: str, test: str, out: Outcomes, started: dict[str, Any],
             **extra: Any) -> None:
    """Write a passing run's counts to ``$EXPERTGATE_FAULTS_JSON_DIR/faults-<run>.json``."""
    folder = os.environ.get("EXPERTGATE_FAULTS_JSON_DIR")
    if not folder:
        return
    started = dict(started)
    wall_s = round(time.monotonic() - started.pop("t0"), 1)
    record = {"benchmark": "faults", "run": run, **started,
              "command": f"EXPERTGATE_FAULTS_JSON_DIR={folder} .venv/bin/python -m pytest -q -s "
                         f"tests/integration/test_faults.py::{test}",
              "wall_s": wall_s,
              "sent": SENT, "concurrency": CONCURRENCY, "answered": out.answered,
              "failed_cleanly": out.failed_cleanly, "errors": dict(out.errors),
              "lost": len(out.lost), "statuses": {str(k): v for k, v in out.statuses.items()},
              "experts": dict(out.experts), **extra}
    path = Path(folder) / f"faults-{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")


def _started() -> dict[str, Any]:
    """The run's provenance, taken when it starts (the code that ran)."""
    from evals.provenance import git_state, package_versions

    return {"git": git_state(), "packages": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}",
            "t0": time.monotonic()}


# --------------------------------------------------------------------------- upstream doubles


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[RecordingDouble, RecordingDouble]]:
    a = await RecordingDouble("coder-double").start()
    b = await RecordingDouble("chatter-double").start()
    yield a, b
    await a.stop()
    await b.stop()


async def test_faults_against_upstream_doubles_nothing_lost_nothing_duplicated(
        doubles: tuple[RecordingDouble, RecordingDouble], redis_clean: RedisServer,
        tmp_path: Path) -> None:
    coder, chatter = doubles
    started = _started()
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(
        gateway_config(coder.base, chatter.base, coder_timeout_s=0.5)))
    redis = redis_clean
    gw = GatewayServer(tmp_path / "gw.yaml", redis_url=redis.url, check_upstreams=False,
                       routing_log=tmp_path / "log.jsonl", log_path=tmp_path / "gw.out",
                       env={"EXPERTGATE_REDIS_RETRY_S": "0.2"})
    await asyncio.to_thread(gw.start)
    seen: dict[str, Any] = {}
    fired: set[str] = set()

    async def faults(done: int) -> None:
        async def once(name: str, at: float, action: Callable[[], Awaitable[None]]) -> None:
            if done >= at * SENT and name not in fired:
                fired.add(name)
                await action()

        async def refuse() -> None:
            await coder.stop()

        async def kill_redis() -> None:
            redis.stop(signal.SIGKILL)
            _, body = await _get_json(gw.url + "/readyz")
            seen["readyz_down"] = body

        async def back_with_5xx() -> None:
            coder.mode = "status"
            await coder.start()

        async def cut() -> None:
            coder.mode = "cut"

        async def hang() -> None:
            coder.mode = "hang"

        async def heal() -> None:
            coder.mode = "ok"

        async def restart_redis() -> None:
            await asyncio.to_thread(redis.start)

        # cuts first (a cut after the first byte is not a breaker failure), then the faults
        # that open the circuit, each followed by a recovery
        await once("cut", 0.10, cut)
        await once("heal_cut", 0.25, heal)
        await once("kill_redis", 0.30, kill_redis)
        await once("hang", 0.35, hang)
        await once("heal_hang", 0.45, heal)
        await once("refuse", 0.55, refuse)
        await once("restart_redis", 0.65, restart_redis)
        await once("5xx", 0.70, back_with_5xx)
        await once("heal", 0.85, heal)

    try:
        out = await drive(gw.url, SENT, faults, pause_s=0.25)
        _report("upstream doubles", out)
        assert len(fired) == 9
        assert out.lost == []
        assert out.total == SENT and out.answered + out.failed_cleanly == SENT
        assert out.answered > SENT // 2
        # nothing was answered twice by an upstream: the no-retry-after-first-byte rule
        answered = collections.Counter(coder.answered + chatter.answered)
        dup = {m: n for m, n in answered.items() if n > 1}
        assert dup == {}, dup
        # a cut stream ends with an error event, never silently; an explicit expert with no
        # fallback answers 502/504 while it is down or its circuit is open
        assert out.errors["stream_interrupted"] >= 1
        assert set(out.errors) <= {"stream_interrupted", "upstream_unavailable",
                                   "upstream_timeout", "circuit_open"}
        assert "unavailable" in str(seen["readyz_down"]["checks"]["redis"])
        # recovery, by itself: the coder is used again and Redis is shared again
        r = await _recovered(gw.url, "coder")
        assert "x-expertgate-degraded" not in r.headers

        async def redis_ready() -> bool:
            _, body = await _get_json(gw.url + "/readyz")
            return bool(body["checks"].get("redis") == "ok")

        assert await _wait_for(redis_ready, 10)

        async def log_flushed() -> bool:
            _, st = await _get_json(gw.url + "/admin/state")
            return bool(st["log"]["pending"] == 0 and st["log"]["sink_ok"])

        assert await _wait_for(log_flushed, 10)
        _, st = await _get_json(gw.url + "/admin/state")
        assert st["log"]["dropped"] == 0
        metrics = httpx.get(gw.url + "/metrics").text
        assert "expertgate_ratelimit" in metrics
    finally:
        await asyncio.to_thread(gw.stop)
    text = (tmp_path / "gw.out").read_text()
    assert "Traceback" not in text, text[-3000:]
    _publish("doubles", "test_faults_against_upstream_doubles_nothing_lost_nothing_duplicated",
             out, started, answered_twice=sum(dup.values()),
             faults=["stream cut", "redis SIGKILL", "hang past timeout_s", "connection refused",
                     "redis restart", "5xx", "heal"],
             recovered={"expert_used_again": True, "redis_ok": True,
                        "log_dropped": st["log"]["dropped"]})


# --------------------------------------------------------------------------- real llama.cpp


@pytest.mark.slow
async def test_faults_against_real_llama_cpp_experts(redis_clean: RedisServer,
                                                     tmp_path: Path) -> None:
    require_llama("smollm2")
    started = _started()
    # LlamaServer queues concurrent requests (--interrupt_requests False), as a served model
    # would; llama.cpp's default ends the stream in progress whenever another request waits
    a = LlamaServer.for_model("smollm2", log_path=tmp_path / "llama-a.log")
    b = LlamaServer.for_model("smollm2", log_path=tmp_path / "llama-b.log")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    cfg = gateway_config(a.base, b.base, coder_timeout_s=30)
    # llama.cpp serves its alias whatever the name: send it the alias
    cfg["experts"][0]["model"] = cfg["experts"][1]["model"] = "smollm2"
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    redis = redis_clean
    gw = GatewayServer(tmp_path / "gw.yaml", redis_url=redis.url, check_upstreams=False,
                       routing_log=tmp_path / "log.jsonl", log_path=tmp_path / "gw.out",
                       env={"EXPERTGATE_REDIS_RETRY_S": "0.2"})
    await asyncio.to_thread(gw.start)
    fired: set[str] = set()
    restarting: list[asyncio.Task[Any]] = []

    async def faults(done: int) -> None:
        if done >= 0.2 * SENT and "kill_a" not in fired:
            fired.add("kill_a")
            assert a.pid is not None
            os.killpg(a.pid, signal.SIGKILL)  # a crash: the process group this test started
            await asyncio.to_thread(a.stop)
        if done >= 0.3 * SENT and "kill_redis" not in fired:
            fired.add("kill_redis")
            redis.stop(signal.SIGKILL)
        if done >= 0.45 * SENT and "restart_a" not in fired:
            fired.add("restart_a")
            restarting.append(asyncio.ensure_future(asyncio.to_thread(a.start)))
        if done >= 0.65 * SENT and "restart_redis" not in fired:
            fired.add("restart_redis")
            await asyncio.to_thread(redis.start)

    try:
        out = await drive(gw.url, SENT, faults, max_tokens=8, timeout_s=180)
        _report("llama.cpp experts", out)
        await asyncio.gather(*restarting)
        assert fired == {"kill_a", "kill_redis", "restart_a", "restart_redis"}
        assert out.lost == []
        assert out.total == SENT and out.answered + out.failed_cleanly == SENT
        assert out.answered > SENT // 2
        r = await _recovered(gw.url, "coder")
        assert r.json()["choices"][0]["message"]["content"] is not None
    finally:
        await asyncio.to_thread(gw.stop)
        a.stop()
        b.stop()
    text = (tmp_path / "gw.out").read_text()
    assert "Traceback" not in text, text[-3000:]
    _publish("llama-cpp", "test_faults_against_real_llama_cpp_experts", out, started,
             faults=["coder SIGKILL", "redis SIGKILL", "coder restart", "redis restart"],
             recovered={"expert_used_again": True})


# --------------------------------------------------------------------------- graceful shutdown


class SlowDouble(OpenAIUpstreamDouble):
    """Streams its answer slowly, one word per ``chunk_delay_s``."""

    chunk_delay_s: float = 0.4

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(body)
        words = ["slow", " answer", " from", " upstream"]
        if not body.get("stream"):
            await asyncio.sleep(self.chunk_delay_s * len(words))
            return web.json_response({
                "id": "chatcmpl-slow", "object": "chat.completion", "created": 1,
                "model": body.get("model"), "choices": [{
                    "index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "".join(words)}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for w in words:
            ev = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 1,
                  "model": body.get("model"), "choices": [{"index": 0, "delta": {"content": w},
                                                           "finish_reason": None}]}
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
            await asyncio.sleep(self.chunk_delay_s)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def test_sigterm_finishes_in_flight_requests_and_flushes_the_log(tmp_path: Path) -> None:
    up = await SlowDouble("slow").start()
    cfg = gateway_config(up.base, up.base, coder_timeout_s=30)
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(tmp_path / "gw.yaml", routing_log=tmp_path / "log.jsonl",
                       log_path=tmp_path / "gw.out", check_upstreams=False)
    await asyncio.to_thread(gw.start)
    try:
        async with httpx.AsyncClient(timeout=60) as c:
            def post(rid: str, stream: bool) -> Awaitable[httpx.Response]:
                return c.post(gw.url + "/v1/chat/completions", headers={"x-request-id": rid},
                              json={"model": "chatter", "stream": stream,
                                    "messages": [{"role": "user", "content": "hello"}]})

            plain = asyncio.ensure_future(post("inflight-plain", False))
            streamed = asyncio.ensure_future(post("inflight-stream", True))

            async def both_upstream() -> bool:
                return len(up.received) == 2

            assert await _wait_for(both_upstream, 20)
            gw.send_signal(signal.SIGTERM)

            async def refused() -> bool:
                try:
                    async with httpx.AsyncClient(timeout=2) as c2:
                        await c2.get(gw.url + "/healthz")
                except (httpx.ConnectError, httpx.RemoteProtocolError):
                    # refused, or accepted in the instant the listener closed and dropped
                    # unanswered: either way not served (a CI run met the second)
                    return True
                return False

            # it stops accepting at once, while the two requests are still running
            assert await _wait_for(refused, 5)
            assert not plain.done() and not streamed.done()
            r1, r2 = await plain, await streamed
        assert r1.status_code == 200
        assert r1.json()["choices"][0]["message"]["content"] == "slow answer from upstream"
        assert r2.status_code == 200 and r2.text.rstrip().endswith("data: [DONE]")
        assert "upstream" in r2.text
        # uvicorn re-raises the signal once its graceful shutdown is done
        assert await asyncio.to_thread(gw.wait, 40) in (0, -signal.SIGTERM)
        recs = {r["client_request_id"]: r for r in map(
            orjson.loads, (tmp_path / "log.jsonl").read_bytes().splitlines())}
        assert recs["inflight-plain"]["http_status"] == 200
        assert recs["inflight-plain"]["completion_tokens"] == 4
        assert recs["inflight-stream"]["http_status"] == 200
        assert recs["inflight-stream"]["stream"] is True
    finally:
        await asyncio.to_thread(gw.stop)
        await up.stop()
