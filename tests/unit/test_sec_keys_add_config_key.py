"""``expertgate keys add --config FILE`` for a key the file already lists: the gateways take
a config key's record over Redis's, so the record was stored, reported ("stored ... for admin
ops") and never used: an operator who made a tenant's key an admin key this way still had a
tenant key. The command refuses it before storing anything, naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main as cli
from expertgate.procs import free_port
from gateway.auth import hash_key
from tests.unit.gateway_helpers import semantic_config_file


def _config(tmp_path: Path) -> Path:
    return semantic_config_file(tmp_path, api_keys=[
        {"name": "team-a", "sha256": hash_key("sk-team-a"), "policies": ["auto"]}])


def test_keys_add_refuses_a_key_the_config_already_has(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    cfg = _config(tmp_path)
    # no Redis answers there: the refusal comes before any Redis call
    rc = cli(["keys", "add", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
              "--config", str(cfg), "--name", "ops", "--admin", "--key", "sk-team-a"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"already in {cfg} as api_keys[0](team-a)" in err
    assert "never be used" in err and "sk-team-a" not in err


def test_keys_revoke_refuses_a_digest_that_is_not_one(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    # it deleted eg:apikey:<whatever was typed> (nothing) and said "no such key"
    rc = cli(["keys", "revoke", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
              "--sha256", "sk-team-a"])
    err = capsys.readouterr().err
    assert rc == 2 and "--sha256: not a sha256 digest (64 hex digits)" in err


def test_keys_hash_on_a_terminal_asks_for_the_key_without_showing_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # it waited on readline() without a prompt (the command looked hung), echoing the key
    import getpass
    import io

    asked: list[str] = []

    class _Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    def fake_getpass(prompt: str = "") -> str:
        asked.append(prompt)
        return "sk-typed-1\n"

    monkeypatch.setattr("sys.stdin", _Tty(""))
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert cli(["keys", "hash"]) == 0
    assert asked and "not shown" in asked[0]
    assert capsys.readouterr().out.strip() == hash_key("sk-typed-1")
