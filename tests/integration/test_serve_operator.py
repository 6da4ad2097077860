"""``expertgate serve`` as an operator runs it, on 127.0.0.1 (bounded: a few dozen requests):
start-up and reload failures are one line naming what is wrong, never a traceback, with the
documented exit code, and a refused reload leaves the running workers serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.procs import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _serve(config: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("EXPERTGATE_REDIS_URL", "EXPERTGATE_CONFIG")}
    env.update({"HF_HUB_OFFLINE": "1", "EXPERTGATE_LOG_PATH": str(config.parent / "log.jsonl")})
    return subprocess.run(
        [sys.executable, "-m", "expertgate", "serve", "--config", str(config), *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path) -> Path:
    port = free_port()  # nothing listens there: serve starts anyway, with a warning
    cfg: dict[str, Any] = {
        "embedder": {"kind": "hashing"},
        "experts": [{"name": "a", "api_base": f"http://127.0.0.1:{port}/v1"}],
        "policies": [{"name": "auto", "routes": [
            {"name": "r1", "expert": "a", "examples": ["hello"]}]}],
    }
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_2_with_any_worker_count(tmp_path: Path,
                                                                    workers: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = _serve(_config(tmp_path), "--port", str(port), "--workers", workers)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    # which address, not only errno 98
    assert str(port) in p.stderr and "address already in use" in p.stderr.lower(), p.stderr
