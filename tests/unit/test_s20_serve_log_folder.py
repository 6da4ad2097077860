"""Without Redis the gateway writes its routing log (and ratings, and the request-id secret)
beside ``EXPERTGATE_LOG_PATH``. A folder that cannot be made or written there (a path below
a file, ``/dev/null/...``, a read-only mount) was found only once the embedder and every
policy had loaded and the server had started: ``start-up failed: [Errno 17] File exists:
'.../a-file'`` (with ``--workers N``: ``a worker failed to start``), naming no setting, and
``serve --check`` said the gateway would start. Both say it first, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from expertgate.cli import main as cli
from expertgate.procs import free_port
from tests.unit.gateway_helpers import semantic_config_file

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path) -> Path:
    return semantic_config_file(tmp_path)


@pytest.mark.parametrize("variable", ["EXPERTGATE_LOG_PATH", "EXPERTGATE_FEEDBACK_PATH"])
def test_serve_check_names_a_log_folder_it_cannot_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        variable: str) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "x.jsonl"
    monkeypatch.setenv("EXPERTGATE_LOG_PATH", str(tmp_path / "log.jsonl"))
    monkeypatch.setenv(variable, str(target))
    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    assert cli(["serve", "--config", str(_config(tmp_path)), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"problem: {variable}: cannot write {target}" in err, err
    # with Redis the log, the ratings and the secret live there: no file is written
    assert cli(["serve", "--config", str(_config(tmp_path)), "--check",
                "--redis-url", "redis://127.0.0.1:9/0"]) == 0
    assert variable not in capsys.readouterr().err


def test_serve_refuses_a_log_folder_it_cannot_write_before_it_loads_anything(
        tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    target = tmp_path / "a-file" / "log.jsonl"
    env = {**os.environ, "EXPERTGATE_LOG_PATH": str(target), "EXPERTGATE_HOST_CHECK": "false"}
    env.pop("EXPERTGATE_REDIS_URL", None)
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from expertgate.cli import main; sys.exit(main())",
         "serve", "--config", str(_config(tmp_path)), "--port", str(free_port()),
         "--workers", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"expertgate serve: EXPERTGATE_LOG_PATH: cannot write {target}" in p.stderr, p.stderr
    assert "worker" not in p.stderr and "start-up failed" not in p.stderr, p.stderr
