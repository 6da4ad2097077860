"""API keys: 401/404 as OpenAI errors, keys in Redis without restart, secrets never logged."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import httpx
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from expertgate.cli import keys as keys_cli
from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client

SECRET = "sk-test-7f3a9c1e2b4d-very-secret"
PROMPT = "zebra-unicorn-password-4411 fix this bug in my code"


def _cfg(ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], **key: object) -> dict:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "team-a", "sha256": hash_key(SECRET), **key}]
    return cfg


def _err(r: httpx.Response) -> dict[str, object]:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_missing_and_invalid_keys_are_401(ups, tmp_path: Path) -> None:
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"))
        assert r.status_code == 401 and _err(r)["type"] == "authentication_error"
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"),
                         headers={"authorization": "Bearer sk-wrong"})
        assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
        assert "sk-wrong" not in r.text
        r = await c.get("/v1/models")
        assert r.status_code == 401
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers={"x-api-key": SECRET})
        assert r.status_code == 200
    assert ups[0].received == [] and len(ups[1].received) == 1


async def test_forbidden_policy_and_expert_are_404_as_missing_ones(ups, tmp_path: Path
                                                                    ) -> None:
    cfg = _cfg(ups, policies=[], experts=["chatter"])
    auth = {"authorization": f"Bearer {SECRET}"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "hi"), headers=auth)
        assert r.status_code == 404
        e = _err(r)
        assert e["type"] == "invalid_request_error" and e["param"] == "model"
        assert e["code"] == "model_not_found" and "model `auto` does not exist" in str(
            e["message"])
        r = await c.post("/v1/chat/completions", json=chat("coder", "hi"), headers=auth)
        assert r.status_code == 404 and "model `coder`" in str(_err(r)["message"])
        r = await c.post("/v1/chat/completions", json=chat("chatter", "hi"), headers=auth)
        assert r.status_code == 200
    assert ups[0].received == []


async def test_keys_and_prompts_never_reach_the_logs(ups, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    coder, chatter = ups
    await coder.stop()  # a failing upstream: the warning paths log too
    auth = {"authorization": f"Bearer {SECRET}"}
    async with gateway_client(_cfg(ups), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", PROMPT), headers=auth)
        assert r.status_code == 200 and r.headers["x-expertgate-expert"] == "chatter"
        chatter.mode = "status"
        r = await c.post("/v1/chat/completions", json=chat("auto", PROMPT, stream=True),
                         headers=auth)
        assert r.status_code == 502
        r = await c.post("/v1/chat/completions", json=chat("auto", PROMPT),
                         headers={"authorization": f"Bearer {SECRET}x"})
        assert r.status_code == 401
        r = await c.post("/v1/route", json={"model": "auto", "text": PROMPT}, headers=auth)
        assert r.status_code == 200
    logged = (tmp_path / "log.jsonl").read_text()
    assert logged.count("\n") == 3
    assert "team-a" in logged  # the tenant is logged, by name
    assert caplog.records, "the failing upstream should have logged warnings"
    for text in (logged, caplog.text):
        assert SECRET not in text and SECRET[3:20] not in text
        assert "zebra-unicorn" not in text


async def test_prompts_are_logged_only_where_the_policy_allows(ups, tmp_path: Path) -> None:
    cfg = _cfg(ups)
    cfg["policies"][0]["log_prompts"] = True
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", PROMPT),
                         headers={"authorization": f"Bearer {SECRET}"})
        assert r.status_code == 200
    logged = (tmp_path / "log.jsonl").read_text()
    assert "zebra-unicorn" in logged and SECRET not in logged


def test_cli_hash_prints_the_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.cmd_hash(argparse.Namespace(key=SECRET, generate=False)) == 0
    assert capsys.readouterr().out.strip() == hash_key(SECRET)
