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


@pytest.mark.parametrize("url, var", [
    ("http://${VLLM_HOST}:8000/v1", "${VLLM_HOST}"),
    ("${VLLM_URL}", "${VLLM_URL}"),
    ("http://vllm:${VLLM_PORT:-8000}/v1", "${VLLM_PORT:-8000}"),
    ("http://u:s3cret@${HOST}/v1", "${HOST}"),
])
def test_an_environment_variable_in_an_expert_url_is_refused_as_not_expanded(
        url: str, var: str) -> None:
    # the file is not expanded (as docker compose expands its own): 'http://${VLLM_HOST}:8000'
    # was accepted with the host '${vllm_host}', and every call to the expert failed to
    # resolve it; '${VLLM_URL}' was refused as "must start with http://"
    for where in ("api_base", "replicas"):
        with pytest.raises(ConfigError) as e:
            parse_config(_cfg(**{where: url if where == "api_base" else [url]}), "gw.yaml")
        msg = str(e.value)
        assert "experts[0](hosted)" in msg and var in msg, msg
        assert "not expanded" in msg and "s3cret" not in msg, msg
