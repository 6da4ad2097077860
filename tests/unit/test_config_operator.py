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
