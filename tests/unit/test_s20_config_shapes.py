"""A list item or section written as a plain value where the file needs a mapping (an API
key pasted under ``api_keys``, an expert written as its name, ``on_reject: error``) was
refused with pydantic's ``Input should be a valid dictionary or instance of APIKeyConfig``:
a class name the operator never wrote, and nothing on what the entry looks like. The line
says what was found and what the entry holds; under ``api_keys`` that the file holds a
key's digest (``expertgate keys hash``), never the key, and the key is not repeated."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config

EXPERT = {"name": "coder", "api_base": "http://127.0.0.1:9/v1"}
ROUTES = [{"name": "r", "expert": "coder", "examples": ["write python code"]}]


@pytest.mark.parametrize("data, line", [
    ({"experts": [EXPERT], "api_keys": ["sk-pasted-key-123"]},
     "api_keys[0]: a mapping is needed, not a string: an API key entry is {name, sha256, ...}"
     " where sha256 is the key's digest (expertgate keys hash), never the key itself"),
    ({"experts": ["coder"]},
     "experts[0]: a mapping is needed, not a string: an expert is {name, api_base or "
     "replicas, ...}"),
    ({"experts": [EXPERT], "policies": [{"name": "p", "routes": ROUTES,
                                          "on_reject": "error"}]},
     "policies[0](p).on_reject: a mapping is needed, not a string: on_reject is {action, "
     "message, ...}"),
])
def test_a_plain_value_where_a_mapping_belongs_says_what_the_entry_holds(
        tmp_path: Path, data: dict, line: str) -> None:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"  {line}" in msg.splitlines(), msg
    assert "instance of" not in msg and "sk-pasted-key-123" not in msg, msg
