"""Config mistakes an operator makes, refused at load with the key named (start-up and reload
use the same loader)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config


def _cfg() -> dict[str, Any]:
    return {
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                    {"name": "other", "api_base": "http://127.0.0.1:9/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r", "expert": "coder", "examples": ["write python code"]},
            {"name": "r", "expert": "other", "examples": ["tell me a joke"]}]}],
    }


def test_two_routes_of_one_policy_with_the_same_name_are_refused() -> None:
    # they were accepted, and the semantic router kept one route per name: "tell me a joke",
    # an example of the second route (to 'other'), was routed to 'coder'
    with pytest.raises(ConfigError) as e:
        parse_config(_cfg(), "gw.yaml")
    msg = str(e.value)
    assert "policies[0](auto)" in msg and "routes[1](r).name" in msg and "routes[0]" in msg


def _valid() -> dict[str, Any]:
    cfg = _cfg()
    cfg["policies"][0]["routes"][1]["name"] = "r2"
    cfg["api_keys"] = [{"name": "k", "sha256": "a" * 64}]
    return cfg


@pytest.mark.parametrize("where, key", [
    (("experts", 0), "timeout_s"), (("experts", 0), "connect_timeout_s"),
    (("experts", 0), "max_concurrency"), (("policies", 0), "max_attempts"),
    (("policies", 0), "cache_ttl_s"), (("policies", 0), "max_tokens_cap"),
    (("api_keys", 0), "requests_per_minute"), (("api_keys", 0), "tokens_per_minute"),
])
def test_true_or_false_for_a_number_is_refused_naming_the_key(where: tuple[str, int],
                                                              key: str) -> None:
    # `requests_per_minute: yes` (YAML 1.1's true) was a limit of 1 request a minute, and
    # `timeout_s: true` a 1 s timeout, without a word
    cfg = _valid()
    parse_config(cfg, "gw.yaml")
    cfg[where[0]][where[1]][key] = True
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "gw.yaml")
    assert f".{key}: " in str(e.value) and "true/false" in str(e.value), str(e.value)
