"""Mistakes made while deploying a config (secrets, environment), refused at load."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, missing_credentials, parse_config


def _cfg(**expert: Any) -> dict[str, Any]:
    return {
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "hosted", "api_base": "https://api.example.com/v1", **expert}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r", "expert": "hosted", "examples": ["write python code"]}]}],
    }


@pytest.mark.parametrize("value", ["sk-proj-Abc123xyz987", "Bearer abc", "MY KEY", "1KEY"])
def test_api_key_env_that_is_not_a_variable_name_is_refused_without_echoing_it(
        value: str) -> None:
    # the key itself written where the variable's name goes was accepted; every start-up
    # then logged it (missing_credentials: "the variable sk-proj-... is not set") and the
    # upstream was called without credentials
    with pytest.raises(ConfigError) as e:
        parse_config(_cfg(api_key_env=value), "gw.yaml")
    msg = str(e.value)
    assert "experts[0](hosted).api_key_env" in msg and "name of an environment variable" in msg
    assert value not in msg


def test_a_variable_name_is_accepted() -> None:
    cfg = parse_config(_cfg(api_key_env="OPENAI_API_KEY_2"), "gw.yaml")
    assert cfg.experts[0].api_key_env == "OPENAI_API_KEY_2"
    assert missing_credentials(cfg) == [
        "experts[0](hosted).api_key_env: the variable OPENAI_API_KEY_2 is not set: calls to "
        "'hosted' go without credentials until it is (and a restart)"]
