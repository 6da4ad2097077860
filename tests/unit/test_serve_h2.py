"""`expertgate serve` start-up failures of report h2: one line naming what is wrong and
exit 2, before anything serves; a multi-worker serve whose workers fail exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.cli import main as cli
from expertgate.procs import free_port

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, **over: Any) -> Path:
    port = free_port()
    d: dict[str, Any] = {
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "a", "api_base": f"http://127.0.0.1:{port}/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r1", "expert": "a", "examples": ["hello"]}]}],
    }
    d.update(over)
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _serve(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    rc = cli(["serve", "--config", str(path), "--port", str(free_port()), *extra])
    return rc, capsys.readouterr().err


def test_require_auth_without_keys_or_redis_is_refused(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    rc, err = _serve(_cfg(tmp_path, require_auth=True), capsys)
    assert rc == 2 and "require_auth: true" in err and "no api_keys and no Redis" in err


def test_bad_embedder_options_name_the_file_and_key(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    path = _cfg(tmp_path, embedder={"kind": "hashing", "options": {"bogus": 1}})
    rc, err = _serve(path, capsys)
    assert rc == 2 and f"{path}: embedder.options" in err and "bogus" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_router_params_stop_serve_before_it_starts(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    pol = {"name": "auto", "params": {"threshold": 5},
           "routes": [{"name": "r1", "expert": "a", "examples": ["hello"]}]}
    rc, err = _serve(_cfg(tmp_path, policies=[pol]), capsys, "--workers", "2")
    assert rc == 2 and "policy 'auto': params: semantic: threshold" in err


@pytest.mark.parametrize("env, flag, expect", [
    ({"EXPERTGATE_WORKERS": "0"}, (), "EXPERTGATE_WORKERS: "),
    ({"EXPERTGATE_MAX_BODY_BYTES": "-1"}, (), "EXPERTGATE_MAX_BODY_BYTES: "),
    ({"EXPERTGATE_LOG_LEVEL": "bogus"}, (), "EXPERTGATE_LOG_LEVEL: "),
    ({}, ("--workers", "0"), "--workers: "),
])
def test_bad_settings_name_the_variable_or_option(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str],
                                                 env: dict[str, str], flag: tuple[str, ...],
                                                 expect: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc, err = _serve(_cfg(tmp_path), capsys, *flag)
    assert rc == 2 and f"expertgate serve: {expect}" in err


def test_an_unset_api_key_env_is_a_start_up_warning(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import load_config, missing_credentials

    monkeypatch.delenv("EG_H2_DOES_NOT_EXIST", raising=False)
    path = _cfg(tmp_path, experts=[{"name": "k", "api_base": "http://127.0.0.1:1/v1",
                                    "api_key_env": "EG_H2_DOES_NOT_EXIST"}],
                policies=[])
    lines = missing_credentials(load_config(path))
    assert lines == [lines[0]] and lines[0].startswith(
        "experts[0](k).api_key_env: the variable EG_H2_DOES_NOT_EXIST is not set")
    monkeypatch.setenv("EG_H2_DOES_NOT_EXIST", "sk-x")
    assert missing_credentials(load_config(path)) == []


def _serve_proc(path: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "EXPERTGATE_LOG_PATH": str(path.parent / "log.jsonl"), **env}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from expertgate.cli import main; sys.exit(main())",
         "serve", "--config", str(path), "--port", str(free_port()), *extra],
        cwd=ROOT, env=full, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_worker_start_up_failure_exits_2_and_says_why_once(tmp_path: Path,
                                                             workers: str) -> None:
    # a routing log that is a folder fails in the gateway's start-up (after the config;
    # a folder that cannot be written is refused before: test_s20_serve_log_folder)
    (tmp_path / "log-folder").mkdir()
    p = _serve_proc(_cfg(tmp_path), "--workers", workers,
                    env={"EXPERTGATE_LOG_PATH": str(tmp_path / "log-folder")})
    assert p.returncode == 2, p.stderr
    if workers == "1":
        assert p.stderr.count("start-up failed") == 1 and "log-folder" in p.stderr, p.stderr
    else:
        assert "a worker failed to start" in p.stderr
    # a Redis URL with a wrong scheme is refused before any worker starts
    p = _serve_proc(_cfg(tmp_path), "--workers", workers,
                    env={"EXPERTGATE_REDIS_URL": "nosuch://127.0.0.1:1/0"})
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("EXPERTGATE_REDIS_URL: not a Redis URL") == 1, p.stderr
    assert "worker" not in p.stderr, p.stderr


@pytest.mark.parametrize("argv, option", [
    (["--name", ""], "--name: "),
    (["--name", "t", "--requests-per-minute", "0"], "--requests-per-minute: "),
    (["--name", "t", "--tokens-per-minute", "-1"], "--tokens-per-minute: "),
])
def test_keys_add_errors_name_the_option(capsys: pytest.CaptureFixture[str],
                                         argv: list[str], option: str) -> None:
    rc = cli(["keys", "add", "--redis-url", f"redis://127.0.0.1:{free_port()}/0",
              "--key", "sk-test", *argv])
    assert rc == 2 and f"expertgate keys add: {option}" in capsys.readouterr().err
