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


@pytest.mark.parametrize("expert", [
    {"replicas": ["http://10.0.0.5:8000/v1", "http://10.0.0.6:8000/v1",
                  "http://10.0.0.5:8000/v1/"]},
    {"replicas": ["http://10.0.0.5:8000/v1", "http://10.0.0.5:8000/v1"]},
])
def test_a_replica_listed_twice_is_refused(expert: dict[str, Any]) -> None:
    # one server listed twice (a copy-paste) was two replicas: twice the share of traffic,
    # a retry "on another replica" sent to the same server, /readyz counting "2/2 replicas
    # up" for one, and two circuit breakers reporting into one metric series
    cfg = _cfg()
    cfg["experts"][0].pop("api_base")
    cfg["experts"][0].update(expert)
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "gw.yaml")
    msg = str(e.value)
    assert "experts[0](hosted)" in msg and "http://10.0.0.5:8000/v1" in msg, msg
    assert "more than once" in msg, msg


def test_api_base_repeated_in_replicas_is_one_replica() -> None:
    # api_base and replicas may both name a server; with a trailing '/' on one of them it
    # was two replicas of one server
    cfg = _cfg(api_base="http://10.0.0.5:8000/v1", replicas=["http://10.0.0.5:8000/v1/"])
    assert parse_config(cfg, "gw.yaml").experts[0].bases == ["http://10.0.0.5:8000/v1"]


@pytest.mark.parametrize("url", ["http://vllm:8000/v1/chat/completions",
                                 "http://vllm:8000/v1/completions/",
                                 "https://api.example.com/v1/embeddings"])
def test_an_endpoint_url_for_api_base_is_refused(url: str) -> None:
    # the endpoint pasted for the base: every call went to .../chat/completions/chat/completions
    # (404) and the expert failed over on every request
    with pytest.raises(ConfigError) as e:
        parse_config(_cfg(api_base=url), "gw.yaml")
    msg = str(e.value)
    assert "experts[0](hosted)" in msg and "base" in msg and "/v1" in msg, msg
