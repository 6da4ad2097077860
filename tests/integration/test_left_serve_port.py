"""`expertgate serve --start-experts` on a port another process holds: one line, exit 2,
and no expert started (it started both llama.cpp experts, loaded them for seconds, then
found its own port busy)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from expertgate.procs import free_port, local_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_busy_port_is_refused_before_any_expert_starts(tmp_path: Path) -> None:
    ports = {"smollm2": free_port(), "gemma3": free_port()}
    cfg = local_config(ROOT / "examples" / "demo-local.yaml", tmp_path / "demo.yaml", ports)
    env = {k: v for k, v in os.environ.items()
           if k not in ("EXPERTGATE_REDIS_URL", "EXPERTGATE_CONFIG")}
    env.update({"HF_HUB_OFFLINE": "1", "EXPERTGATE_LOG_PATH": str(tmp_path / "log.jsonl")})
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        p = subprocess.run(
            [sys.executable, "-m", "expertgate", "serve", "--config", str(cfg), "--port",
             str(port), "--start-experts"], cwd=tmp_path, env=env, capture_output=True,
            text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert str(port) in p.stderr and "address already in use" in p.stderr.lower(), p.stderr
    assert "starting expert" not in p.stderr, p.stderr
    assert not (tmp_path / "runs" / "serve").exists()  # no expert log: none was started
