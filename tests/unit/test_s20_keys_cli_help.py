"""``expertgate keys`` as an operator meets it: ``keys add --help`` listed
``--requests-per-minute`` and ``--tokens-per-minute`` with no word on what they limit or
their default, and an empty key (an empty ``--key``, an empty line or nothing on stdin)
ended with ``expertgate keys: empty key`` and exit 1, the code of a failure, naming neither
the command nor where the key was read."""

from __future__ import annotations

import io

import pytest

from expertgate.cli import main as cli


def test_keys_add_help_says_what_each_limit_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli(["keys", "add", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "store an API key in Redis" in out, out
    for flag in ("--requests-per-minute", "--tokens-per-minute"):
        assert f"{flag} N" in out, out
    assert "requests a minute this key may make" in out, out
    assert "tokens a minute" in out and "default: no limit" in out, out


@pytest.mark.parametrize("argv, stdin, where", [
    (["keys", "hash", "--key", "  "], "", "--key is empty"),
    (["keys", "hash"], "\n", "stdin gave an empty line"),
    (["keys", "add", "--redis-url", "redis://127.0.0.1:9/0", "--name", "t"], "",
     "stdin gave an empty line"),
    (["keys", "revoke", "--redis-url", "redis://127.0.0.1:9/0", "--key", ""], "",
     "--key is empty"),
])
def test_an_empty_key_is_a_usage_error_naming_the_command(
        argv: list[str], stdin: str, where: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"expertgate keys {argv[1]}: no key: {where}" in err, err
