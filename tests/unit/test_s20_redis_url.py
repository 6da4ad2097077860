"""A Redis URL redis-py cannot read (``http://...``, ``localhost:6379`` without a scheme, a
port that is no number) is the operator's mistake, said as one: the flag or variable that
gave it, why, exit 2, before anything is done. It ended in the crash path of every command
that takes one (``error: ValueError: Redis URL must specify one of the following schemes``,
exit 1; ``policy revert`` after it had rewritten the file), and ``serve`` loaded the embedder
and every policy before its start-up failed naming neither ``--redis-url`` nor the variable.
An unrelated bad ``EXPERTGATE_*`` variable (``EXPERTGATE_PORT=abc`` set for ``serve``) made
``keys``, ``policy`` and ``logs export`` end in ``error: ValidationError: 1 validation error
for Settings``, naming neither."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from expertgate.cli import main as cli
from gateway.config import Settings, settings_errors
from tests.unit.gateway_helpers import semantic_config_file

BAD = ["http://127.0.0.1:6379/0", "localhost:6379", "redis://:s3cret@127.0.0.1:abc/0"]


@pytest.mark.parametrize("url", BAD)
def test_settings_refuse_a_redis_url_redis_cannot_read(url: str) -> None:
    with pytest.raises(ValidationError) as e:
        Settings(redis_url=url)
    (line,) = settings_errors(e.value)
    assert line.startswith("EXPERTGATE_REDIS_URL: ") and "not a Redis URL" in line, line
    assert "redis://" in line and "s3cret" not in line, line


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h:6380",
                                 "unix:///run/redis.sock", "redis://:pw@h/1"])
def test_settings_take_a_redis_url_redis_reads(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


def test_an_empty_redis_url_is_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "")
    assert Settings().redis_url is None


def _config(tmp_path: Path) -> Path:
    return semantic_config_file(tmp_path, {"candidate": {"router": "knn", "artifact": "art",
                                                         "mode": "shadow"}})


def _commands(cfg: Path, out: Path) -> list[list[str]]:
    return [["keys", "add", "--name", "team-a", "--key", "sk-a"],
            ["keys", "revoke", "--key", "sk-a"],
            ["logs", "export", "--out", str(out)],
            ["policy", "revert", "auto", "--config", str(cfg)]]


@pytest.mark.parametrize("i", range(4), ids=["keys add", "keys revoke", "logs export",
                                             "policy revert"])
def test_a_bad_redis_url_flag_is_named_and_nothing_is_done(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], i: int) -> None:
    cfg = _config(tmp_path)
    before = cfg.read_text()
    argv = _commands(cfg, tmp_path / "out.jsonl")[i] + ["--redis-url", "http://127.0.0.1:6379"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "--redis-url: not a Redis URL" in err and "redis://" in err, err
    assert "ValueError" not in err and "EXPERTGATE_DEBUG" not in err, err
    assert cfg.read_text() == before  # policy revert wrote nothing
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("i", range(4), ids=["keys add", "keys revoke", "logs export",
                                             "policy revert"])
def test_a_bad_redis_url_variable_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        i: int) -> None:
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "localhost:6379")
    cfg = _config(tmp_path)
    before = cfg.read_text()
    assert cli(_commands(cfg, tmp_path / "out.jsonl")[i]) == 2
    err = capsys.readouterr().err
    assert "EXPERTGATE_REDIS_URL: " in err and "not a Redis URL" in err, err
    assert "ValidationError" not in err and "EXPERTGATE_DEBUG" not in err, err
    assert cfg.read_text() == before


@pytest.mark.parametrize("i", range(4), ids=["keys add", "keys revoke", "logs export",
                                             "policy revert"])
def test_another_bad_variable_is_named_not_a_validation_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        i: int) -> None:
    monkeypatch.setenv("EXPERTGATE_PORT", "abc")
    cfg = _config(tmp_path)
    before = cfg.read_text()
    assert cli(_commands(cfg, tmp_path / "out.jsonl")[i]) == 2
    err = capsys.readouterr().err
    assert "EXPERTGATE_PORT: " in err and "'abc'" in err, err
    assert "ValidationError" not in err and "EXPERTGATE_DEBUG" not in err, err
    assert cfg.read_text() == before


def test_serve_names_a_bad_redis_url_before_it_loads_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    monkeypatch.setenv("EXPERTGATE_HOST_CHECK", "false")  # serve would not write it anyway
    for argv, name in ((["--redis-url", "http://127.0.0.1:6379"], "--redis-url"),
                       (["--check"], "EXPERTGATE_REDIS_URL")):
        if name.startswith("EXPERTGATE"):
            monkeypatch.setenv("EXPERTGATE_REDIS_URL", "localhost:6379")
        assert cli(["serve", "--config", str(cfg), "--port", "0", *argv]) == 2
        err = capsys.readouterr().err
        assert f"expertgate serve: {name}: " in err and "not a Redis URL" in err, err
        assert "embedder" not in err and "ValueError" not in err, err


def test_a_bad_variable_beside_a_good_flag_is_named_as_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # keys add reads EXPERTGATE_CONFIG through the settings, which refuse the variable's URL
    # even when --redis-url gave a good one: the variable is at fault, not the flag
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "localhost:6379")
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)
    assert cli(["keys", "add", "--name", "t", "--key", "k",
                "--redis-url", "redis://127.0.0.1:9/0"]) == 2
    err = capsys.readouterr().err
    assert "EXPERTGATE_REDIS_URL: not a Redis URL" in err and "--redis-url" not in err, err
