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


@pytest.mark.parametrize("value", ["", " , "])
def test_an_empty_policies_list_is_refused_unless_experts_are_named(
        value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # `--policies "$POLICIES"` with the variable unset stored a key that may use nothing:
    # every request with it a 404, nothing said
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    argv = ["keys", "add", "--redis-url", "redis://127.0.0.1:9/0", "--name", "t",
            "--key", "sk-t", "--policies", value]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "expertgate keys add: --policies names no policy" in err, err
    assert "'*' for all" in err, err


@pytest.mark.parametrize("extra", [["--experts", "coder"], ["--admin"]])
def test_no_policies_with_experts_or_admin_is_a_key_of_its_own(
        extra: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # experts by name only, or /admin only: passed on to Redis (unreachable here)
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    assert cli(["keys", "add", "--redis-url", "redis://127.0.0.1:9/0", "--name", "t",
                "--key", "sk-t", "--policies", "", *extra]) == 2
    err = capsys.readouterr().err
    assert "names no policy" not in err and "the key is not stored" in err, err
