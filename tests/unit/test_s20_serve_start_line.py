"""``expertgate serve`` started with uvicorn's lines alone: nothing said which file it
served, which policies, or where the decision cache, rate limits and routing log live. A
Redis URL set under a wrong name (``EXPERTGATE_REDIS=...``) left a fleet each limiting and
logging in its own process, without a word at start. One line says it all, Redis or not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from expertgate.cli.serve import start_summary
from expertgate.procs import free_port
from gateway.auth import hash_key
from gateway.config import Settings, load_config

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, **extra: object) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump({
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                    {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r", "expert": "coder", "examples": ["write python code"]}]}],
        **extra}))
    return p


def test_the_line_says_what_is_served_and_where_state_lives(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    line = start_summary(cfg, Settings(log_path=tmp_path / "log.jsonl"))
    assert line.startswith(f"serving {tmp_path / 'gw.yaml'}: 2 expert(s), policies auto "
                           "(semantic); embedder hashing;"), line
    assert (f"decision cache, rate limits and routing log in this process (no Redis URL: "
            f"--redis-url or EXPERTGATE_REDIS_URL; log {tmp_path / 'log.jsonl'})") in line
    assert "API keys: none, every client is served" in line, line
    cfg = load_config(_config(tmp_path, api_keys=[{"name": "ops", "sha256": hash_key("k"),
                                                   "admin": True}]))
    line = start_summary(cfg, Settings(redis_url="redis://:s3cret@127.0.0.1:6390/0"))
    assert "decision cache, rate limits and routing log in Redis redis://***@127.0.0.1:6390/0"\
        in line, line
    assert "s3cret" not in line and "API keys: 1 in the file, and any in Redis" in line, line


def test_serve_says_it_when_it_starts(tmp_path: Path) -> None:
    env = {**os.environ, "EXPERTGATE_LOG_PATH": str(tmp_path / "log.jsonl"),
           "EXPERTGATE_HOST_CHECK": "false"}
    env.pop("EXPERTGATE_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from expertgate.cli import main; sys.exit(main())",
         "serve", "--config", str(_config(tmp_path)), "--port", str(free_port())],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stderr is not None
        for line in proc.stderr:  # ends when the process does (a failed start)
            seen.append(line)
            if "expertgate serve: serving " in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    assert any("expertgate serve: serving " in ln and "policies auto (semantic)" in ln
               and "in this process" in ln for ln in seen), seen


def test_serve_check_says_it_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main as cli

    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    monkeypatch.setenv("EXPERTGATE_LOG_PATH", str(tmp_path / "log.jsonl"))
    assert cli(["serve", "--config", str(_config(tmp_path)), "--check"]) == 0
    out = capsys.readouterr().out
    assert "information: serving " in out and "in this process" in out, out
