"""README step 1, for real: `expertgate serve --config examples/demo-local.yaml
--start-experts` starts both llama.cpp experts, serves routed requests through them, and
stops them when the gateway stops (SIGINT, as Ctrl-C). The config is copied with free ports
so nothing else listening on 8101/8102 interferes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from expertgate.procs import free_port, local_config
from tests.integration.conftest import require_llama

ROOT = Path(__file__).resolve().parents[2]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _get(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, str], dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, dict(r.headers), json.loads(r.read())


def test_serve_start_experts_serves_and_stops_them(tmp_path: Path) -> None:
    require_llama("smollm2", "gemma3")
    ports = {"smollm2": free_port(), "gemma3": free_port()}
    cfg = local_config(ROOT / "examples" / "demo-local.yaml", tmp_path / "demo.yaml", ports)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "expertgate", "serve", "--config", str(cfg), "--port", str(port),
         "--start-experts"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "EXPERTGATE_LOG_PATH": str(tmp_path / "routing.jsonl")})
    try:
        deadline = time.monotonic() + 240
        while not _listening(port):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.3)
        status, _, ready = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and ready["status"] == "ready", ready
        assert all(ready["checks"]["experts"][m]["ready"] for m in ports)
        status, headers, out = _get(f"http://127.0.0.1:{port}/v1/chat/completions", {
            "model": "auto", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi! How are you doing today?"}]})
        assert status == 200 and headers["x-expertgate-expert"] == "smollm2"
        assert out["choices"][0]["message"]["content"].strip()
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert rc == 0, text
    assert "not reachable" not in text  # the experts were up before the gateway
    for m, p in ports.items():
        assert f"stopped expert {m}" in text
        assert not _listening(p), f"{m} still listens on {p}"
