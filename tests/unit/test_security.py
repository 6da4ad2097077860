"""Security rules (issue 20): the admin role, allow-lists closed by default, request ids a
tenant cannot guess or borrow, feedback only from the requester, credentials never printed,
gated /metrics, /docs and /readyz, and a cap on the request head.

The tenant-isolation cases with a real Redis (two gateways, Redis-stored keys, reload race,
export per tenant) are in tests/integration/test_security.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.procs import GatewayServer, free_port
from gateway.app import create_app
from gateway.auth import RequestIds, hash_key
from gateway.config import ConfigError, Settings, parse_config
from gateway.redact import RedactFilter, redact
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client

TENANT_A, TENANT_B, ADMIN = "sk-tenant-a-123456", "sk-tenant-b-654321", "sk-admin-abcdef"
PASSWORD = "Sup3rS3cretPW"


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _cfg(ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], **a_key: Any
         ) -> dict[str, Any]:
    """coder/chatter behind policy ``auto``; ``secret`` only behind policy ``vault``."""
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "secret", "api_base": ups[0].base, "timeout_s": 2})
    cfg["policies"].append({"name": "vault", "routes": [
        {"name": "all", "expert": "secret", "examples": ["anything at all"]}]})
    cfg["api_keys"] = [
        {"name": "team-a", "sha256": hash_key(TENANT_A), "policies": ["auto"], **a_key},
        {"name": "team-b", "sha256": hash_key(TENANT_B), "policies": ["auto"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "admin": True},
    ]
    return cfg


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- 1. admin role


async def test_admin_endpoints_need_an_admin_key(ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        for method, path in (("POST", "/admin/reload"), ("GET", "/admin/state")):
            r = await c.request(method, path)
            assert r.status_code == 401 and _err(r)["type"] == "authentication_error"
            r = await c.request(method, path, headers=_auth(TENANT_A))
            assert r.status_code == 403, path
            assert _err(r)["code"] == "admin_required"
        r = await c.get("/admin/state", headers=_auth(ADMIN))
        assert r.status_code == 200 and "replicas" in r.json()
        r = await c.post("/admin/reload", headers=_auth(ADMIN))
        assert r.status_code == 200 and r.json()["object"] == "reload"


async def test_without_keys_admin_endpoints_answer_only_loopback(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    s = Settings(log_path=tmp_path / "log.jsonl", ready_check_upstreams=False, gc_freeze=False)
    app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
    gw = app.gateway
    await gw.start()
    try:
        local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        assert (await local.get("/admin/state")).status_code == 200
        await local.aclose()
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 4321))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as remote:
            for method, path in (("POST", "/admin/reload"), ("GET", "/admin/state"),
                                 ("GET", "/metrics")):
                r = await remote.request(method, path)
                assert r.status_code == 403 and _err(r)["code"] == "admin_required", path
            # the API itself stays open without keys
            assert (await remote.get("/v1/models")).status_code == 200
    finally:
        await gw.close()


# --------------------------------------------------------------------------- 3. allow-lists


async def test_expert_allow_list_defaults_to_the_policies_reach(ups, tmp_path: Path) -> None:
    cfg = _cfg(ups)
    cfg["policies"][0]["on_reject"] = {"action": "fallback", "expert": "spare"}
    cfg["experts"].append({"name": "spare", "api_base": ups[1].base, "timeout_s": 2})
    async with gateway_client(cfg, tmp_path) as (c, _):
        a = _auth(TENANT_A)
        for expert in ("coder", "chatter", "spare"):  # routes, fallback, reject fallback
            r = await c.post("/v1/chat/completions", json=chat(expert, "hi"), headers=a)
            assert r.status_code == 200, expert
        r = await c.post("/v1/chat/completions", json=chat("secret", "hi"), headers=a)
        assert r.status_code == 404 and "model `secret`" in _err(r)["message"]
        r = await c.post("/v1/chat/completions", json=chat("vault", "hi"), headers=a)
        assert r.status_code == 404 and "model `vault`" in _err(r)["message"]
        # an admin key with every policy reaches every policy's experts
        r = await c.post("/v1/chat/completions", json=chat("secret", "hi"),
                         headers=_auth(ADMIN))
        assert r.status_code == 200
    # "*" opens every expert only when written
    async with gateway_client(_cfg(ups, experts=["*"]), tmp_path / "star") as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("secret", "hi"),
                         headers=_auth(TENANT_A))
        assert r.status_code == 200


async def test_a_learned_policys_reach_is_the_experts_its_models_map_names(
        ups, tmp_path: Path) -> None:
    # a learned router decides between its table's models; the policy's models map says
    # which expert serves each. The key's default allow-list is those experts (it listed the
    # table names: the mapped experts were 404 to the key, and an expert that merely shares
    # a table model's name, which the policy never reaches, was open to it)
    import numpy as np

    from routers.artifacts import save_router
    from routers.base import RoutingTable, make_router

    emb = HashingEmbedder()
    prompts = ["fix this bug", "tell me a joke", "refactor this class", "how are you"]
    table = RoutingTable([f"p{i}" for i in range(4)], prompts, ["coder", "big-model"],
                         np.array([[1.0, 0.5], [0.2, 0.9], [1.0, 0.5], [0.2, 0.9]]),
                         np.ones((4, 2)))
    art = save_router(make_router("knn", k=2).fit(emb.embed(prompts), table),
                      tmp_path / "knn", embedder=emb.name)
    cfg = _cfg(ups)
    cfg["policies"].append({"name": "learned", "router": "knn", "artifact": str(art),
                            "models": {"coder": "chatter", "big-model": "secret"}})
    cfg["api_keys"][0]["policies"] = ["learned"]
    async with gateway_client(cfg, tmp_path) as (c, _):
        a = _auth(TENANT_A)
        for expert in ("chatter", "secret"):
            r = await c.post("/v1/chat/completions", json=chat(expert, "hi"), headers=a)
            assert r.status_code == 200, expert
        r = await c.post("/v1/chat/completions", json=chat("coder", "hi"), headers=a)
        assert r.status_code == 404 and "model `coder`" in _err(r)["message"]
        r = await c.get("/v1/models", headers=a)
        assert sorted(m["id"] for m in r.json()["data"]) == ["chatter", "learned", "secret"]


# --------------------------------------------------------------------------- 2. ids, feedback


def test_request_ids_are_random_and_name_their_tenant() -> None:
    ids = RequestIds()
    a, b = ids.issue(ids.nonce(), "team-a"), ids.issue(ids.nonce(), "team-a")
    assert len(a) == len(b) == 48 and int(a, 16) and a[:8] != b[:8]
    assert ids.owned(a, "team-a") and not ids.owned(a, "team-b")
    assert not ids.owned(a[:-1] + ("0" if a[-1] != "0" else "1"), "team-a")
    assert not ids.owned("0" * 48, "team-a") and not ids.owned("not-an-id", "team-a")
    other = RequestIds()  # another secret: another deployment's ids do not verify
    assert not other.owned(a, "team-a")
    other.adopt(ids.secret)
    assert other.owned(a, "team-a")


async def test_client_request_id_is_only_a_correlation_field(ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        got = []
        for key in (TENANT_A, TENANT_B):
            r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                             headers={**_auth(key), "x-request-id": "client-id-1"})
            assert r.status_code == 200
            assert r.headers["x-client-request-id"] == "client-id-1"
            got.append(r.headers["x-request-id"])
    assert "client-id-1" not in got and got[0] != got[1]
    recs = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [x["request_id"] for x in recs] == got
    assert [x["client_request_id"] for x in recs] == ["client-id-1"] * 2


async def test_feedback_only_from_the_tenant_that_made_the_request(ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers=_auth(TENANT_A))
        rid = r.headers["x-request-id"]
        for key, request_id in ((TENANT_B, rid), (TENANT_A, "f" * 48), (TENANT_A, "nope")):
            fb = await c.post("/v1/feedback", json={"request_id": request_id, "score": 0.0},
                              headers=_auth(key))
            assert fb.status_code == 404, (key, request_id)
            assert _err(fb)["code"] == "request_not_found"
        fb = await c.post("/v1/feedback", json={"request_id": rid, "score": 0.9},
                          headers=_auth(TENANT_A))
        assert fb.status_code == 200 and fb.json()["stored"] is True
    stored = [orjson.loads(x) for x in
              (tmp_path / "log.feedback.jsonl").read_bytes().splitlines()]
    assert [(x["request_id"], x["tenant"], x["score"]) for x in stored] == [
        (rid, "team-a", 0.9)]


async def test_request_ids_outlive_a_restart_without_redis(ups, tmp_path: Path) -> None:
    cfg = _cfg(ups)
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"),
                         headers=_auth(TENANT_A))
    key_file = tmp_path / "log.request-ids.key"
    assert key_file.stat().st_mode & 0o077 == 0  # the secret is the owner's only
    async with gateway_client(cfg, tmp_path) as (c, _):
        fb = await c.post("/v1/feedback", json={"request_id": r.headers["x-request-id"],
                                                "score": 1.0}, headers=_auth(TENANT_A))
        assert fb.status_code == 200


# --------------------------------------------------------------------------- 4. credentials


class _BasicAuthDouble:
    """A test double of an upstream that records the Authorization header it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[str | None] = []
        self.status = 200
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("authorization"))
        if self.status != 200:
            return web.json_response({"error": {"message": "down"}}, status=self.status)
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0,
                                  "model": "m", "choices": [{"index": 0, "finish_reason":
                                  "stop", "message": {"role": "assistant", "content": "ok"}}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_BasicAuthDouble]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await self._runner.cleanup()


async def test_url_credentials_are_sent_but_never_printed(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    caplog.set_level(logging.DEBUG)
    async with _BasicAuthDouble().running() as up:
        base = f"http://svc:{PASSWORD}@127.0.0.1:{up.port}/v1"
        cfg = {"embedder": {"kind": "hashing", "micro_batch": False},
               "experts": [{"name": "vault", "api_base": base, "timeout_s": 2}],
               "api_keys": [{"name": "ops", "sha256": hash_key(ADMIN), "admin": True,
                             "experts": ["*"]}]}
        async with gateway_client(cfg, tmp_path) as (c, gw):
            r = await c.post("/v1/chat/completions", json=chat("vault", "hi"),
                             headers=_auth(ADMIN))
            assert r.status_code == 200
            assert up.seen[-1] is not None and up.seen[-1].startswith("Basic ")
            up.status = 500
            r = await c.post("/v1/chat/completions", json=chat("vault", "hi"),
                             headers=_auth(ADMIN))
            assert r.status_code == 502
            state = await c.get("/admin/state", headers=_auth(ADMIN))
            assert state.status_code == 200
            assert state.json()["replicas"]["vault"][0]["base"] == \
                f"http://127.0.0.1:{up.port}/v1"
            metrics = await c.get("/metrics", headers=_auth(ADMIN))
            assert gw.config.experts[0].api_base == f"http://127.0.0.1:{up.port}/v1"
        printed = [r.text, state.text, metrics.text, caplog.text,
                   (tmp_path / "log.jsonl").read_text()]
    assert len(up.seen) >= 2
    for text in printed:
        assert PASSWORD not in text


def test_url_credentials_with_api_key_env_are_refused_at_load() -> None:
    cfg = {"experts": [{"name": "vault", "api_base": f"http://svc:{PASSWORD}@h:1/v1",
                        "api_key_env": "VAULT_KEY"}]}
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "gw.yaml")
    msg = str(e.value)
    assert msg.startswith("gw.yaml: invalid configuration")
    assert "experts[0](vault)" in msg and "api_key_env" in msg and "credentials" in msg
    assert PASSWORD not in msg and "http://***@h:1/v1" in msg


def test_redact_masks_userinfo_and_bearer_tokens() -> None:
    text = f"GET http://u:{PASSWORD}@h/v1 failed; Authorization: Bearer {TENANT_A}"
    out = redact(text)
    assert PASSWORD not in out and TENANT_A not in out
    assert out == "GET http://***@h/v1 failed; Authorization: Bearer ***"
    assert redact("see http://h/a@b and bearer x") == "see http://h/a@b and bearer x"
    # the filter of the process log: message arguments and tracebacks too
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("expertgate.test-redact")
    logger.addHandler(handler)
    try:
        logger.warning("upstream %s failed", f"https://svc:{PASSWORD}@h/v1")
        try:
            raise ValueError(f"Bearer {TENANT_A}")
        except ValueError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    printed = stream.getvalue()
    assert "https://***@h/v1" in printed and "ValueError: Bearer ***" in printed
    assert PASSWORD not in printed and TENANT_A not in printed


# --------------------------------------------------------------------------- 6. gated paths


async def test_metrics_docs_and_readyz_need_what_their_settings_say(ups, tmp_path: Path
                                                                   ) -> None:
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        assert (await c.get("/healthz")).status_code == 200  # always open
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert (await c.get(path)).status_code == 401, path
        assert (await c.get("/metrics", headers=_auth(TENANT_A))).status_code == 403
        assert (await c.get("/metrics", headers=_auth(ADMIN))).status_code == 200
        assert (await c.get("/openapi.json", headers=_auth(TENANT_A))).status_code == 200
        r = await c.get("/readyz")  # probes need no key, but learn only the status
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        r = await c.get("/readyz", headers=_auth(TENANT_A))
        assert r.status_code == 200 and "checks" in r.json()
    async with gateway_client(_cfg(ups), tmp_path / "open", metrics_auth="open",
                              docs_auth="open", readyz_auth="admin") as (c, _):
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200
        r = await c.get("/readyz", headers=_auth(TENANT_A))
        assert r.json() == {"status": "ready"}


# --------------------------------------------------------------------------- 7. head size


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):  # the server may stop reading once it refused
            s.sendall(head)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


async def test_a_one_megabyte_header_gets_431_and_nothing_leaks_in_the_log(
        ups, tmp_path: Path) -> None:
    """A real `expertgate serve`: the 1 MB Authorization header, and the process log."""
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"][1]["api_base"] = f"http://svc:{PASSWORD}@127.0.0.1:{free_port()}/v1"
    (tmp_path / "gw.yaml").write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(tmp_path / "gw.yaml", routing_log=tmp_path / "log.jsonl",
                       log_path=tmp_path / "gw.out", check_upstreams=False)
    await asyncio.to_thread(gw.start)
    try:
        big = b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer " + \
            b"a" * 1_048_576 + b"\r\n\r\n"
        out = await asyncio.to_thread(_raw_request, gw.port, big)
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431"), out[:200]
        assert orjson.loads(body)["error"]["code"] == "request_header_fields_too_large"
        ok = await asyncio.to_thread(_raw_request, gw.port, b"GET /healthz HTTP/1.1\r\n"
                                     b"host: localhost\r\nconnection: close\r\nx-pad: " +
                                     b"p" * 8000 + b"\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        # two pipelined requests in one write, the first head just under the cap
        one = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-pad: " + b"p" * 60_000 + b"\r\n\r\n"
        two = await asyncio.to_thread(_raw_request, gw.port, one + b"GET /healthz HTTP/1.1"
                                      b"\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        assert two.count(b"HTTP/1.1 200") == 2, two[:300]
        bad = await asyncio.to_thread(_raw_request, gw.port, b"GET / HTTP/1.1\r\n"
                                      b"content-length: abc\r\n\r\n")
        assert bad.startswith(b"HTTP/1.1 400") and b'"error"' in bad
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
            # the chatter's port is closed: the failure is logged, its URL without password
            r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"))
            assert r.status_code in (502, 503, 504) and PASSWORD not in r.text
    finally:
        await asyncio.to_thread(gw.stop)
    log_text = (tmp_path / "gw.out").read_text()
    assert "chatter" in log_text and PASSWORD not in log_text
