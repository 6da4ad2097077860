"""An upstream key read from a file (a Kubernetes secret, ``echo KEY > file``) ends with a
line break. In ``api_key_env`` it made every call's ``Authorization`` header invalid: the
expert failed as "misconfigured" on every request, with no word at start-up. The key is
taken without the whitespace around it; one that holds whitespace or a control character
inside is a start-up (and reload) warning that never repeats it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import missing_credentials, parse_config
from tests.unit.gateway_helpers import chat, gateway_client
from tests.unit.test_security import _BasicAuthDouble

VAR = "EG_SEC_UPSTREAM_KEY"


def _cfg(port: int) -> dict:
    return {"embedder": {"kind": "hashing", "micro_batch": False},
            "experts": [{"name": "hosted", "api_base": f"http://127.0.0.1:{port}/v1",
                         "timeout_s": 2, "api_key_env": VAR}]}


@pytest.mark.parametrize("value", ["sk-up-123\n", "sk-up-123\r\n", "  sk-up-123\t"])
async def test_a_key_with_a_trailing_line_break_is_sent_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(VAR, value)
    up = _BasicAuthDouble()
    async with up.running():
        cfg = _cfg(up.port)
        assert missing_credentials(parse_config(cfg, "gw.yaml")) == []
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("hosted", "hi"))
            assert r.status_code == 200, r.text
    assert up.seen == ["Bearer sk-up-123"]


def test_a_key_with_a_line_break_inside_is_a_warning_that_does_not_show_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "sk-up-123\r\nX-Injected: yes")
    lines = missing_credentials(parse_config(_cfg(9), "gw.yaml"))
    assert len(lines) == 1
    assert f"experts[0](hosted).api_key_env: the variable {VAR} holds whitespace" in lines[0]
    assert "sk-up" not in lines[0] and "Injected" not in lines[0]


def test_a_key_of_whitespace_only_is_not_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, " \n")
    lines = missing_credentials(parse_config(_cfg(9), "gw.yaml"))
    assert len(lines) == 1 and f"the variable {VAR} is not set" in lines[0]


async def test_a_litellm_expert_gets_the_key_without_its_line_break(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LiteLLM's own call read the variable as it is: its key kept the line break
    monkeypatch.setenv(VAR, "sk-up-123\n")
    up = _BasicAuthDouble()
    async with up.running():
        cfg = {"embedder": {"kind": "hashing", "micro_batch": False},
               "experts": [{"name": "lite", "kind": "litellm", "model": "openai/m",
                            "api_base": f"http://127.0.0.1:{up.port}/v1", "timeout_s": 5,
                            "api_key_env": VAR}]}
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("lite", "hi"))
            assert r.status_code == 200, r.text
    assert up.seen == ["Bearer sk-up-123"]
