"""``api_keys[].sha256`` as an operator writes it: a digest printed by another tool in upper
case (PowerShell's Get-FileHash, certutil), which ``keys revoke --sha256`` already takes,
was refused with ``String should match pattern '^[0-9a-f]{64}$'``; so was the key itself
pasted there, with nothing on what the field wants. An upper-case digest is the digest; any
other value is refused saying what the field holds, without repeating it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.auth import hash_key
from gateway.config import ConfigError, GatewayConfig, load_config

EXPERTS = [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"}]


def _load(tmp_path: Path, sha256: object) -> GatewayConfig:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({"experts": EXPERTS,
                                 "api_keys": [{"name": "ops", "sha256": sha256}]}))
    return load_config(p)


def test_an_upper_case_digest_is_the_digest(tmp_path: Path) -> None:
    cfg = _load(tmp_path, hash_key("sk-ops").upper() + "\n")
    assert cfg.api_keys[0].sha256 == hash_key("sk-ops")


@pytest.mark.parametrize("value", ["sk-ops-pasted-key", "abc", hash_key("x")[:63]])
def test_anything_else_says_what_the_field_holds(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, value)
    msg = str(e.value)
    assert ("api_keys[0](ops).sha256: the key's sha256 digest is needed, 64 hex digits "
            "(expertgate keys hash prints it), never the key itself") in msg, msg
    assert value not in msg, msg
