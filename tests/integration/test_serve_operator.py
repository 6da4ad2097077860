"""``expertgate serve`` as an operator runs it, on 127.0.0.1 (bounded: a few dozen requests):
start-up and reload failures are one line naming what is wrong, never a traceback, with the
documented exit code, and a refused reload leaves the running workers serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer, free_port
from tests.integration.test_workers_reload import _workers
from tests.unit.gateway_helpers import base_config, chat

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


def test_sighup_to_the_supervisor_with_a_bad_config_keeps_the_workers(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "gw.log"
    gw = GatewayServer(path, log_path=log, routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False, env={"EXPERTGATE_WORKERS": "2"})
    gw.start()
    try:
        assert gw.pid is not None
        before = _workers(gw.pid)
        assert len(before) == 2
        bad = base_config(coder.base, chatter.base)
        bad["experts"][0]["timeout_s"] = -1
        path.write_text(yaml.safe_dump(bad))
        os.kill(gw.pid, signal.SIGHUP)
        end = time.monotonic() + 30
        while "timeout_s" not in log.read_text() and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(1)  # anything the refusal would still write
        text = log.read_text()
        assert "experts[0](coder).timeout_s" in text, text  # named, as at start-up
        assert "Traceback" not in text, text
        assert "not ready in time" not in text, text  # the supervisor's misleading guess
        assert _workers(gw.pid) == before  # no worker replaced, none started for nothing
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=30) as c:
            for _ in range(6):
                r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={"connection": "close"})
                assert r.status_code == 200
        # a file that loads but fails a worker's start-up (a policy's missing artifact):
        # the new worker exits, said in one line, and the running workers stay
        unbuildable = base_config(coder.base, chatter.base)
        unbuildable["policies"].append({"name": "learned", "router": "knn",
                                        "artifact": str(tmp_path / "missing")})
        path.write_text(yaml.safe_dump(unbuildable))
        os.kill(gw.pid, signal.SIGHUP)
        while "keeping worker" not in log.read_text() and time.monotonic() < end + 30:
            time.sleep(0.2)
        time.sleep(0.5)  # an echo of the failure would follow it
        text = log.read_text()
        assert "exited (status 3)" in text and "Traceback" not in text, text
        said = [ln for ln in text.splitlines() if "does not exist" in ln]
        assert len(said) == 1, text  # the gateway's line, without uvicorn's echo of it
        assert str(tmp_path / "missing") in said[0], text
        assert _workers(gw.pid) == before
        # the file fixed: the next SIGHUP replaces both workers
        path.write_text(yaml.safe_dump(cfg))
        os.kill(gw.pid, signal.SIGHUP)
        while _workers(gw.pid) & before and time.monotonic() < end + 60:
            time.sleep(0.2)
        assert not _workers(gw.pid) & before
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()


def test_a_reload_waits_for_workers_slower_to_start_than_uvicorns_5s(tmp_path: Path) -> None:
    # a worker that builds MiniLM (the compose file's embedder) and warms every policy up
    # takes more than uvicorn's 5 s worker healthcheck on a busy machine: the supervisor
    # gave up on it, kept the old worker, and after a 200 from /admin/reload one worker
    # served the old file (a revoked key still answered on it). A sitecustomize makes every
    # worker started after the marker exists take 7 s, deterministically.
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "slow"
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    time.sleep(7)\n")
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "gw.log"
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    gw = GatewayServer(path, log_path=log, routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False,
                       env={"EXPERTGATE_WORKERS": "2", "PYTHONPATH": pythonpath})
    gw.start()
    try:
        assert gw.pid is not None
        before = _workers(gw.pid)
        assert len(before) == 2
        marker.touch()
        for route in cfg["policies"][0]["routes"]:  # jokes now go to the coder
            route["expert"] = "coder"
        path.write_text(yaml.safe_dump(cfg))
        with httpx.Client(base_url=f"http://127.0.0.1:{gw.port}", timeout=30) as c:
            assert c.post("/admin/reload").status_code == 200
            end = time.monotonic() + 90
            while _workers(gw.pid) & before and time.monotonic() < end:
                time.sleep(0.5)
            assert not _workers(gw.pid) & before, log.read_text()
            got = set()
            for _ in range(12):  # a new connection each: the kernel spreads them
                r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                           headers={"connection": "close"})
                assert r.status_code == 200
                got.add(r.headers["x-expertgate-expert"])
            assert got == {"coder"}
        assert "not ready in time" not in log.read_text()
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()


def test_a_worker_whose_config_no_longer_loads_says_so_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # the file changed between the supervisor's check and a new worker's start
    from gateway import asgi

    bad = _config(tmp_path)
    bad.write_text(bad.read_text().replace("name: a\n", "name: a\n  timeout_s: -1\n", 1))
    monkeypatch.setenv("EXPERTGATE_CONFIG", str(bad))
    with pytest.raises(SystemExit) as exc:
        asgi.app()
    assert exc.value.code == 3  # uvicorn's STARTUP_FAILURE: the supervisor stops retrying
    assert "start-up failed" in caplog.text and "timeout_s" in caplog.text


def test_a_request_on_a_kept_alive_connection_just_after_sigterm_is_answered(
        tmp_path: Path) -> None:
    # a reload with --workers N retires each old worker as a SIGTERM does; a pooled client
    # connection that was idle at that instant was closed at once, so a request the client
    # was just sending on it got a reset (2 of 3,000 requests under six reloads): no answer,
    # and the client cannot tell whether it ran. Now it is answered, with connection: close
    up = ThreadedDouble("coder")
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "coder", "api_base": up.base}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False)
    gw.start()
    body = b'{"model": "coder", "messages": [{"role": "user", "content": "hi"}]}'
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
               b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
               % (len(body), body))
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(request)
            first = s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            assert gw.pid is not None
            os.kill(gw.pid, signal.SIGTERM)
            time.sleep(0.3)  # the server has begun its shutdown: this connection is idle
            # the head, then the body in another segment (as httpx writes them): a body still
            # arriving was cut at once with a 503 shutting_down; now after _IDLE_DRAIN_S
            head, _, rest = request.partition(b"\r\n\r\n")
            s.sendall(head + b"\r\n\r\n")
            time.sleep(0.2)
            s.sendall(rest)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert b"connection: close" in answer.lower(), answer
        assert gw.wait(15) in (0, -signal.SIGTERM)
    finally:
        gw.stop()
        up.stop()
