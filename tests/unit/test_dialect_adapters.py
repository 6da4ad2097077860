"""A LoRA adapter (``parent:``) is served by its parent's server, so it speaks its parent's
dialect: an adapter of a llama-cpp-python expert got the client's body unadapted (the
server's 500 for a developer role) because its own dialect defaulted to openai."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config


def _cfg(**adapter: Any) -> dict[str, Any]:
    return {"experts": [{"name": "base", "api_base": "http://127.0.0.1:9/v1",
                         "dialect": "llama-cpp-python"},
                        {"name": "sql", "parent": "base", **adapter}]}


def test_an_adapter_speaks_its_parents_dialect() -> None:
    cfg = parse_config(_cfg(), "t.yaml")
    assert {e.name: e.dialect for e in cfg.experts} == {"base": "llama-cpp-python",
                                                        "sql": "llama-cpp-python"}
    # written the same as the parent's: fine
    cfg = parse_config(_cfg(dialect="llama-cpp-python"), "t.yaml")
    assert cfg.experts[1].dialect == "llama-cpp-python"


def test_an_adapter_on_its_parents_server_cannot_speak_another_dialect() -> None:
    with pytest.raises(ConfigError, match="parent's server"):
        parse_config(_cfg(dialect="openai"), "t.yaml")


def test_an_adapter_with_servers_of_its_own_keeps_its_own_dialect() -> None:
    cfg = parse_config(_cfg(api_base="http://127.0.0.1:10/v1", dialect="openai"), "t.yaml")
    assert cfg.experts[1].dialect == "openai"
