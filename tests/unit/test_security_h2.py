"""Security fixes from the config/admin probe (report h2): the gateway's own upstream
credentials never reach a tenant (an upstream's 401/403 is the expert's failure, answered
``502 upstream_auth_failed``, and error bodies are redacted: Bearer, Basic, URL userinfo);
the keyless loopback admin refuses DNS-rebinding and cross-site requests; a config file that
cannot be read gives a clear answer on reload and on SIGHUP; an unknown model is a 404 for
every key, ``/v1/models`` lists what the caller may use, and GET endpoints find an
``x-api-key`` behind a ``Basic`` header as POST endpoints do.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from aiohttp import web

from gateway.app import _reload_logged
from gateway.auth import hash_key
from gateway.redact import redact
from gateway.upstreams import credentials, error_body
from tests.unit.gateway_helpers import ROUTES, base_config, chat, gateway_client
from tests.unit.test_security import _BasicAuthDouble

TENANT, ADMIN = "sk-h2-tenant-123456", "sk-h2-admin-abcdef"
UPSTREAM_KEY = "sk-upstream-PRIVATE-0123456789"
PASSWORD = "sup3rsecretpw"


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --------------------------------------------------------------------------- D1 redaction


def test_redact_masks_basic_credentials_and_passwords_with_a_slash() -> None:
    basic = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    out = redact(f"Incorrect API key provided: Basic {basic}")
    assert out == "Incorrect API key provided: Basic ***"
    assert redact(f"authorization: basic {basic}") == "authorization: basic ***"
    # prose, and a Basic token that is no user:password, stay as they are
    assert redact("a basic question about Basic authentication") == \
        "a basic question about Basic authentication"
    # a password with an unencoded '/' or '@' (a URL parser reads part of it as the path)
    assert redact('"base":"http://svc:12/word@127.0.0.1:18801/v1"') == \
        '"base":"http://***@127.0.0.1:18801/v1"'
    assert redact("http://svc:p@ss@host/x") == "http://***@host/x"
    assert redact("http://svc:Pa55/wo?rd@h:1/v1") == "http://***@h:1/v1"
    # paths with an '@' and no userinfo are left alone
    assert redact("see https://medium.com/@user and http://h/a@b") == \
        "see https://medium.com/@user and http://h/a@b"


def test_error_body_masks_the_credentials_the_gateway_sent() -> None:
    headers = {"authorization": f"Bearer {UPSTREAM_KEY}"}
    assert credentials(headers)[0] == f"Bearer {UPSTREAM_KEY}"
    raw = orjson.dumps({"error": {"message": f"bad key {UPSTREAM_KEY} (Bearer {UPSTREAM_KEY})",
                                  "code": "invalid_api_key"}})
    body = error_body(raw, 400, "e", "http://127.0.0.1:1/v1", credentials(headers))
    assert UPSTREAM_KEY not in body.decode()
    assert orjson.loads(body)["error"]["message"] == "bad key *** (***)"
    # without the credentials at hand, redact still masks what it recognises
    body = error_body(raw, 400, "e", "http://127.0.0.1:1/v1")
    assert f"Bearer {UPSTREAM_KEY}" not in body.decode()
    basic = "Basic " + base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    creds = credentials({"authorization": basic})
    assert f"svc:{PASSWORD}" in creds and PASSWORD in creds
    raw = f"<html>denied for svc:{PASSWORD} ({basic}) and {PASSWORD}</html>".encode()
    text = error_body(raw, 400, "e", "http://127.0.0.1:1/v1", creds).decode()
    assert PASSWORD not in text and basic not in text


class _EchoAuthDouble(_BasicAuthDouble):
    """An upstream that refuses every key, quoting the Authorization it received (as some
    servers do), or answers ``status`` with the same text."""

    def __init__(self, status: int = 401) -> None:
        super().__init__()
        self.status = status

    async def _chat(self, request: web.Request) -> web.Response:
        auth = request.headers.get("authorization")
        self.seen.append(auth)
        token = (auth or "").partition(" ")[2]
        return web.json_response({"error": {"message": f"Incorrect API key provided: {auth}; "
                                            f"key {token}", "code": "invalid_api_key"}},
                                 status=self.status)


def _auth_cfg(port: int, chatter: str) -> dict[str, Any]:
    pol = {"name": "auto", "routes": [{"name": "all", "expert": "e401",
                                       "examples": ["anything at all", "tell me a joke"]}],
           "fallback": ["chatter"]}
    return {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [
            {"name": "e401", "api_base": f"http://127.0.0.1:{port}/v1", "timeout_s": 2,
             "api_key_env": "EG_H2_UPSTREAM_KEY"},
            {"name": "eurl", "api_base": f"http://svc:{PASSWORD}@127.0.0.1:{port}/v1",
             "timeout_s": 2},
            {"name": "chatter", "api_base": chatter, "timeout_s": 2},
        ],
        "policies": [pol],
        "api_keys": [{"name": "tenant", "sha256": hash_key(TENANT), "policies": ["*"],
                      "experts": ["*"]}],
    }


async def test_an_upstream_401_is_the_gateways_failure_and_never_shows_its_key(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EG_H2_UPSTREAM_KEY", UPSTREAM_KEY)
    caplog.set_level(logging.INFO)
    basic = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    up = _EchoAuthDouble()
    async with up.running(), \
            gateway_client(_auth_cfg(up.port, ups[1].base), tmp_path) as (c, gw):
        texts = []
        for expert in ("e401", "eurl"):
            before = len(up.seen)
            r = await c.post("/v1/chat/completions", json=chat(expert, "hi"),
                             headers=_auth(TENANT))
            texts.append(r.text)
            assert r.status_code == 502, r.text
            err = _err(r)
            assert err["code"] == "upstream_auth_failed"
            assert err["type"] == "upstream_error"
            assert f"{expert} refused the gateway's credentials (401)" in err["message"]
            # one call: a replica that refused the credentials is not asked again
            assert len(up.seen) == before + 1
        assert up.seen == [f"Bearer {UPSTREAM_KEY}", f"Basic {basic}"]
        # routed: the expert's failure takes the policy's fallback
        r = await c.post("/v1/chat/completions", json=chat("auto", "anything at all"),
                         headers=_auth(TENANT))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "chatter"
        texts.append(r.text)
        # streamed: the same answer before the first byte
        r = await c.post("/v1/chat/completions", json=chat("e401", "hi", stream=True),
                         headers=_auth(TENANT))
        assert r.status_code == 502 and _err(r)["code"] == "upstream_auth_failed"
        texts.append(r.text)
        texts.append((await c.get("/metrics", headers=_auth(TENANT))).text)
        assert gw.metrics.upstream_errors.labels("e401", "auth")._value.get() >= 1
    log_text = caplog.text + (tmp_path / "log.jsonl").read_text()
    assert "refused the gateway's credentials" in caplog.text
    for text in [*texts, log_text]:
        assert UPSTREAM_KEY not in text and PASSWORD not in text and basic not in text


async def test_a_4xx_passed_through_is_redacted_of_the_gateways_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_H2_UPSTREAM_KEY", UPSTREAM_KEY)
    basic = base64.b64encode(f"svc:{PASSWORD}".encode()).decode()
    async with _EchoAuthDouble(status=400).running() as up:
        cfg = _auth_cfg(up.port, f"http://127.0.0.1:{up.port}/v1")
        async with gateway_client(cfg, tmp_path) as (c, _):
            for expert in ("e401", "eurl"):
                r = await c.post("/v1/chat/completions", json=chat(expert, "hi"),
                                 headers=_auth(TENANT))
                assert r.status_code == 400, r.text  # the request's own error: passed on
                msg = _err(r)["message"]
                assert msg.startswith("Incorrect API key provided: ")
                assert UPSTREAM_KEY not in r.text and PASSWORD not in r.text
                assert basic not in r.text and "***" in msg


# --------------------------------------------------------------------------- D13 loopback


def _keyless(ups: Any, tmp_path: Path, base_url: str = "http://127.0.0.1:8080",
             raise_app_exceptions: bool = True, **settings: Any) -> Any:
    """A gateway without API keys (loopback admin), called as from ``base_url``."""
    return gateway_client(base_config(ups[0].base, ups[1].base), tmp_path, base_url=base_url,
                          raise_app_exceptions=raise_app_exceptions, **settings)


_ADMIN_VIEWS = (("GET", "/admin/state"), ("POST", "/admin/reload"), ("GET", "/metrics"),
                ("GET", "/ui/api/summary"))


async def test_keyless_loopback_admin_refuses_a_rebound_host(ups, tmp_path: Path) -> None:
    async with _keyless(ups, tmp_path, readyz_auth="admin") as (c, _):
        for method, path in _ADMIN_VIEWS:
            r = await c.request(method, path, headers={"host": "attacker.example:8080"})
            assert r.status_code == 403, (path, r.text)
            err = _err(r)
            assert err["code"] == "untrusted_host" and "attacker.example" in err["message"]
        # /readyz (checks for admins only here) keeps answering its status, without them
        r = await c.get("/readyz", headers={"host": "attacker.example:8080"})
        assert r.status_code == 200 and r.json() == {"status": "ready"}
        # names of this machine: loopback names and addresses, the listen address
        for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "localhost",
                     "app.localhost:8080", "127.0.0.2", "LOCALHOST:8080"):
            r = await c.get("/admin/state", headers={"host": host})
            assert r.status_code == 200, (host, r.text)
        r = await c.get("/readyz", headers={"host": "localhost:8080"})
        assert "checks" in r.json()
        # the API itself is not an admin view: it stays open without keys
        r = await c.get("/v1/models", headers={"host": "attacker.example"})
        assert r.status_code == 200
    async with _keyless(ups, tmp_path / "b", host="192.0.2.10") as (c, _):
        r = await c.get("/admin/state", headers={"host": "192.0.2.10:8080"})
        assert r.status_code == 200, r.text


async def test_keyless_loopback_admin_refuses_cross_site_requests(ups, tmp_path: Path) -> None:
    async with _keyless(ups, tmp_path) as (c, _):
        cross = ({"origin": "http://attacker.example"}, {"origin": "null"},
                 {"origin": "http://attacker.example:8080", "content-type": "text/plain"},
                 {"sec-fetch-site": "cross-site"})
        for headers in cross:
            for method, path in _ADMIN_VIEWS:
                r = await c.request(method, path, headers=headers)
                assert r.status_code == 403, (headers, path, r.text)
                assert _err(r)["code"] == "cross_site_request"
        # the dashboard's own page (same origin) and tools without an Origin
        for headers in ({"origin": "http://127.0.0.1:8080"}, {"origin": "http://localhost:8080",
                                                               "sec-fetch-site": "same-origin"},
                        {}):
            r = await c.post("/admin/reload", headers=headers)
            assert r.status_code == 200, (headers, r.text)


async def test_admin_keys_are_not_bound_to_a_host(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(ADMIN), "admin": True}]
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.get("/admin/state", headers={**_auth(ADMIN), "host": "gw.example.com",
                                                 "origin": "https://ops.example.com"})
        assert r.status_code == 200


# --------------------------------------------------------------------------- D6 reload


async def test_reload_of_a_file_that_is_not_utf8_answers_json_and_keeps_serving(
        ups, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config(ups[0].base, ups[1].base)))
    async with _keyless(ups, tmp_path, config=path) as (c, gw):
        path.write_bytes(b"\xff\xfe\x00garbage\x80")
        r = await c.post("/admin/reload")
        assert r.status_code == 400 and r.headers["content-type"] == "application/json"
        err = _err(r)
        assert err["code"] == "config_invalid"
        assert str(path) in err["message"] and "UTF-8" in err["message"]
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200
        # SIGHUP's reload: one logged line, no exception left in its task
        caplog.set_level(logging.ERROR)
        await _reload_logged(gw)
        lines = [rec.getMessage() for rec in caplog.records]
        assert any("reload on SIGHUP failed, keeping the running configuration" in m and
                   str(path) in m and "UTF-8" in m for m in lines), lines
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200


async def test_an_unexpected_reload_failure_answers_json_and_logs(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config(ups[0].base, ups[1].base)))

    def boom(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("no policy set today")

    async with _keyless(ups, tmp_path, config=path) as (c, gw):
        old = gw.policy_set
        monkeypatch.setattr("gateway.app.build_policy_set", boom)
        caplog.set_level(logging.ERROR)
        r = await c.post("/admin/reload")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        err = _err(r)
        assert err["code"] == "reload_failed"
        assert "RuntimeError: no policy set today" in err["message"]
        assert str(path) in err["message"]
        await _reload_logged(gw)
        assert any("reload on SIGHUP" in rec.getMessage() and "RuntimeError" in
                   rec.getMessage() for rec in caplog.records)
        assert gw.policy_set is old
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        assert r.status_code == 200


async def test_a_bug_in_an_endpoint_is_an_openai_shaped_500(ups, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    def broken() -> Any:
        raise KeyError("oops")

    async with _keyless(ups, tmp_path, raise_app_exceptions=False) as (c, gw):
        monkeypatch.setattr(gw.dispatcher, "replica_states", broken)
        r = await c.get("/admin/state")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert _err(r)["code"] == "internal_error" and "oops" not in r.text


# --------------------------------------------------------------------------- D15 auth


def _keys_cfg(ups: Any) -> dict[str, Any]:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "secret", "api_base": ups[0].base, "timeout_s": 2})
    cfg["policies"].append({"name": "vault", "routes": [
        {"name": "all", "expert": "secret", "examples": ROUTES[0]["examples"]}]})
    cfg["api_keys"] = [
        {"name": "team", "sha256": hash_key(TENANT), "policies": ["auto"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "admin": True},
    ]
    return cfg


async def test_an_unknown_model_is_a_404_for_a_restricted_key(ups, tmp_path: Path) -> None:
    async with gateway_client(_keys_cfg(ups), tmp_path) as (c, _):
        for key in (TENANT, ADMIN):
            r = await c.post("/v1/chat/completions", json=chat("nosuch", "hi"),
                             headers=_auth(key))
            assert r.status_code == 404, (key, r.text)
            assert _err(r)["code"] == "model_not_found"
        # a model that exists but is outside the key's allow-lists reads the same
        for model in ("secret", "vault"):
            r = await c.post("/v1/chat/completions", json=chat(model, "hi"),
                             headers=_auth(TENANT))
            assert r.status_code == 404, (model, r.text)
            assert _err(r)["code"] == "model_not_found"
        r = await c.post("/v1/route", json={"model": "nosuch", "text": "hi"},
                         headers=_auth(TENANT))
        assert r.status_code == 404


#: a request naming MODEL on each endpoint that takes a model
_NAMING = (("/v1/chat/completions", chat("MODEL", "fix this bug in my code")),
           ("/v1/completions", {"model": "MODEL", "prompt": "fix this bug"}),
           ("/v1/embeddings", {"model": "MODEL", "input": "fix this bug"}),
           ("/v1/route", {"model": "MODEL", "text": "fix this bug in my code"}))

#: headers whose values differ from one request to the next whatever the model (and the
#: length, which follows the name's)
_PER_REQUEST = frozenset({"x-request-id", "x-ratelimit-remaining-requests",
                          "x-ratelimit-reset-requests", "x-ratelimit-remaining-tokens",
                          "x-ratelimit-reset-tokens", "content-length"})


async def test_a_hidden_model_reads_exactly_as_a_missing_one(ups, tmp_path: Path) -> None:
    """OpenAI answers a model the key may not use as one that does not exist (404
    ``model_not_found``, "does not exist or you do not have access to it"); so does the
    gateway, on every endpoint that names a model and on GET /v1/models/{id}: the same
    status, body (apart from the name) and headers, so a restricted key cannot tell another
    tenant's expert or policy from a missing name. Only the routing log tells them apart."""
    cfg = _keys_cfg(ups)
    cfg["api_keys"][0].update(requests_per_minute=1000, tokens_per_minute=1_000_000)
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path, body in _NAMING:
            got = {}
            for model in ("nosuch", "secret", "vault"):
                req = orjson.loads(orjson.dumps(body).replace(b"MODEL", model.encode()))
                got[model] = await c.post(path, json=req, headers=_auth(TENANT))
            missing = got["nosuch"]
            assert missing.status_code == 404, (path, missing.text)
            assert _err(missing) == {
                "message": "The model `nosuch` does not exist or you do not have access to "
                           "it (GET /v1/models lists the models you may use)",
                "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
            for hidden in ("secret", "vault"):
                r = got[hidden]
                assert r.status_code == 404, (path, hidden, r.text)
                assert r.content.replace(hidden.encode(), b"nosuch") == missing.content
                assert set(r.headers) == set(missing.headers)  # the token budget's too
                assert {k: v.replace(hidden, "nosuch") for k, v in r.headers.items()
                        if k not in _PER_REQUEST} == \
                    {k: v for k, v in missing.headers.items() if k not in _PER_REQUEST}
        for method in ("GET", "HEAD"):
            missing = await c.request(method, "/v1/models/nosuch", headers=_auth(TENANT))
            assert missing.status_code == 404
            for hidden in ("secret", "vault"):
                r = await c.request(method, f"/v1/models/{hidden}", headers=_auth(TENANT))
                assert r.status_code == 404
                assert r.content.replace(hidden.encode(), b"nosuch") == missing.content
                assert {k: v for k, v in r.headers.items() if k not in _PER_REQUEST} == \
                    {k: v for k, v in missing.headers.items() if k not in _PER_REQUEST}
        r = await c.get("/v1/models/nosuch", headers=_auth(TENANT))
        assert b"does not exist or you do not have access to it" in r.content
    generated = [orjson.loads(x) for x in (tmp_path / "log.jsonl").read_bytes().splitlines()]
    assert [(x["endpoint"], x["error_type"]) for x in generated] == [
        (e, code) for e in ("chat", "completions", "embeddings")
        for code in ("model_not_found", "model_not_permitted", "model_not_permitted")]
    assert all(x["http_status"] == 404 and x["policy"] is None for x in generated)


async def test_models_lists_only_what_the_key_may_use(ups, tmp_path: Path) -> None:
    async with gateway_client(_keys_cfg(ups), tmp_path) as (c, _):
        r = await c.get("/v1/models", headers=_auth(TENANT))
        assert r.status_code == 200
        assert sorted(m["id"] for m in r.json()["data"]) == ["auto", "chatter", "coder"]
        assert (await c.get("/v1/models/auto", headers=_auth(TENANT))).status_code == 200
        for hidden in ("secret", "vault"):
            r = await c.get(f"/v1/models/{hidden}", headers=_auth(TENANT))
            assert r.status_code == 404 and _err(r)["code"] == "model_not_found"
        r = await c.get("/v1/models", headers=_auth(ADMIN))
        assert sorted(m["id"] for m in r.json()["data"]) == \
            ["auto", "chatter", "coder", "secret", "vault"]
    async with _keyless(ups, tmp_path / "open") as (c, _):
        r = await c.get("/v1/models")
        assert sorted(m["id"] for m in r.json()["data"]) == ["auto", "chatter", "coder"]


async def test_a_basic_header_before_x_api_key_does_not_hide_the_key(ups,
                                                                    tmp_path: Path) -> None:
    basic = "Basic " + base64.b64encode(b"proxy:user").decode()
    async with gateway_client(_keys_cfg(ups), tmp_path) as (c, _):
        # the header list in this order: Authorization first, then x-api-key
        headers = [("authorization", basic), ("x-api-key", ADMIN)]
        for path in ("/admin/state", "/v1/models", "/metrics"):
            r = await c.get(path, headers=headers)
            assert r.status_code == 200, (path, r.text)
        r = await c.post("/v1/chat/completions", json=chat("coder", "hi"), headers=headers)
        assert r.status_code == 200, r.text
        # a Bearer key still comes first
        r = await c.get("/admin/state", headers=[("authorization", f"Bearer {TENANT}"),
                                                 ("x-api-key", ADMIN)])
        assert r.status_code == 403


def test_a_litellm_provider_refusing_the_key_is_an_auth_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import ExpertConfig
    from gateway.upstreams import _litellm_failure

    monkeypatch.setenv("EG_H2_UPSTREAM_KEY", UPSTREAM_KEY)
    expert = ExpertConfig.model_validate({"name": "hosted", "kind": "litellm",
                                          "model": "openai/gpt-4o-mini",
                                          "api_key_env": "EG_H2_UPSTREAM_KEY"})

    class AuthenticationError(Exception):
        status_code = 401

    class BadRequestError(Exception):
        status_code = 400

    f = _litellm_failure(expert, AuthenticationError(f"Incorrect API key provided: "
                                                     f"{UPSTREAM_KEY}"), 5.0)
    assert f.kind == "auth" and f.retryable and f.status == 401
    assert UPSTREAM_KEY not in str(f) and UPSTREAM_KEY not in f.public
    f = _litellm_failure(expert, BadRequestError(f"bad request with key {UPSTREAM_KEY}"), 5.0)
    assert f.kind == "status" and not f.retryable and f.body is not None
    assert UPSTREAM_KEY not in f.body.decode()
