"""A configuration whose names do not match (a route, a fallback, ``models:``, ``on_reject``
naming an expert the file lacks; an adapter's parent; a name used twice) names the field
that holds the bad name, as every other problem does, and lists every such problem at once.
An operator read ``gw.yaml: invalid configuration: (top level): Value error, policy 'auto':
fallback names unknown expert 'chatterx'`` (at start, in ``serve --check``, in a reload's
answer and the SIGHUP log line), fixed it, and met the next one on the next try."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.cli import main as cli
from gateway.config import ConfigError, load_config

GOOD: dict[str, Any] = {
    "embedder": {"kind": "hashing"},
    "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"},
                {"name": "sql-lora", "parent": "coder"}],
    "policies": [{"name": "auto", "routes": [
        {"name": "code", "expert": "coder", "examples": ["write python code"]},
        {"name": "chat", "expert": "chatter", "examples": ["hi there"]}]}],
}


def _refused(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    first, *lines = str(e.value).splitlines()
    assert first == f"{p}: invalid configuration:", first
    for ln in lines:
        assert "(top level)" not in ln and "Value error" not in ln, ln
    return [ln.strip() for ln in lines]


def test_every_unknown_expert_is_named_at_its_field(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    pol = data["policies"][0]
    pol["routes"][1]["expert"] = "chatterx"
    pol["fallback"] = ["chatter", "coderx"]
    pol["models"] = {"gpt-4": "gpt4-expert"}
    pol["on_reject"] = {"action": "fallback", "expert": "nobody"}
    data["experts"][2]["parent"] = "ghost"
    known = "(experts: coder, chatter, sql-lora)"
    assert _refused(tmp_path, data) == [
        f"experts[2](sql-lora).parent: no expert named 'ghost' {known}",
        f"policies[0](auto).routes[1](chat).expert: no expert named 'chatterx' {known}",
        f"policies[0](auto).fallback[1]: no expert named 'coderx' {known}",
        f"policies[0](auto).models.gpt-4: no expert named 'gpt4-expert' {known}",
        f"policies[0](auto).on_reject.expert: no expert named 'nobody' {known}",
    ]


def test_a_name_used_twice_names_both_places(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["experts"].append({"name": "chatter", "api_base": "http://127.0.0.1:8/v1"})
    data["policies"].append({"name": "auto", "routes": GOOD["policies"][0]["routes"]})
    data["policies"].append({"name": "coder", "routes": GOOD["policies"][0]["routes"]})
    assert _refused(tmp_path, data) == [
        "experts[3](chatter).name: the same name as experts[1]; each expert needs its own",
        "policies[1](auto).name: the same name as policies[0]; each policy needs its own",
        "policies[2](coder).name: the name of experts[0] too: a request's model would name "
        "both; rename one",
    ]


def test_a_field_problem_reads_without_pydantics_prefix(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["policies"][0]["on_reject"] = {"action": "fallback"}
    assert _refused(tmp_path, data) == [
        "policies[0](auto).on_reject: on_reject.action 'fallback' needs on_reject.expert"]


def test_serve_check_lists_each_problem_on_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = copy.deepcopy(GOOD)
    data["policies"][0]["fallback"] = ["chatterx", "coderx"]
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(data))
    assert cli(["serve", "--config", str(p), "--check"]) == 2
    err = capsys.readouterr().err
    assert "policies[0](auto).fallback[0]: no expert named 'chatterx'" in err, err
    assert "policies[0](auto).fallback[1]: no expert named 'coderx'" in err, err
