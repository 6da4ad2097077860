"""Arbitrary configuration files and structures give ConfigError with a message, or a valid
config; never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from tests.unit.gateway_helpers import base_config

EXAMPLES = 300

scalars = (st.none() | st.booleans() | st.integers() | st.floats() |
           st.text(max_size=20) | st.binary(max_size=8))
keys = st.sampled_from(["experts", "policies", "name", "api_base", "routes", "expert",
                        "examples", "api_keys", "sha256", "fallback", "embedder", "kind",
                        "on_reject", "action", "timeout_s", "replicas", "parent"]) | st.text(
    max_size=10) | st.integers()
structures = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) |
                          st.dictionaries(keys, kids, max_size=5), max_leaves=25)

VALID = base_config("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
VALID["api_keys"] = [{"name": "k", "sha256": "0" * 64, "requests_per_minute": 5}]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(VALID) if p]


def _assert_config_or_config_error(data: Any) -> None:
    try:
        cfg = parse_config(data, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml"), str(e)
        assert len(str(e)) > len("fuzz.yaml: ")
        return
    assert isinstance(cfg, GatewayConfig) and cfg.experts


@given(data=structures)
@settings(max_examples=EXAMPLES, deadline=None)
def test_arbitrary_structures(data: Any) -> None:
    _assert_config_or_config_error(data)


@given(path=st.sampled_from(ALL_PATHS), value=structures, delete=st.booleans())
@settings(max_examples=EXAMPLES, deadline=None)
def test_one_field_of_a_valid_config_replaced_or_deleted(path: tuple[Any, ...], value: Any,
                                                         delete: bool) -> None:
    data = copy.deepcopy(VALID)
    node = data
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    _assert_config_or_config_error(data)


yaml_text = st.text(max_size=300) | st.lists(
    st.sampled_from(["experts:", "  - name: a", "    api_base: http://x", "policies:",
                     "  - name: p", "    routes: [", "  {", "- ", "name: !!binary aGk=",
                     "x: &a [*a]", "? [1, 2]\n: 3", "k: !!python/object:os.system x",
                     "k: 2001-12-14", "\t", "%YAML 1.1", "---", "...", "k: !!set {a, b}"]),
    max_size=12).map("\n".join)


@given(text=yaml_text)
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_arbitrary_yaml_files(tmp_path: Path, text: str) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(p)
    except ConfigError as e:
        assert str(e).startswith(str(p)) and len(str(e)) > len(str(p)) + 2
        return
    assert isinstance(cfg, GatewayConfig)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    try:
        load_config(tmp_path / "absent.yaml")
    except ConfigError as e:
        assert "cannot read" in str(e)
    else:
        raise AssertionError("a missing file must be a ConfigError")


@pytest.mark.parametrize("params", [{"a": {1: 2}}, {"big": 10**30}])
def test_free_form_fields_that_json_cannot_hold(params: dict[str, Any]) -> None:
    data = copy.deepcopy(VALID)
    data["policies"][0]["params"] = params
    _assert_config_or_config_error(data)
