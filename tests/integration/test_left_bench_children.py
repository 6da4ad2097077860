"""A benchmark that ends early (an error, Ctrl-C, SIGTERM) stops every child it started.

Seven orphans (parent PID 1: ``expertgate serve`` gateways, the floor, upstream doubles,
redis) ran for 45 minutes after benchmarks died: SIGTERM ended the bench without running a
``finally``, and Ctrl-C during a server's readiness wait left that server out of every
``finally``. Each test starts real processes and checks them gone by the PID it saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from expertgate.bench import servers


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                out.append((int(d.name), cmd))
    return out


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return not _alive(pid)


def test_sigterm_to_bench_soak_stops_its_gateway(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "expertgate", "bench", "soak", "--minutes", "1",
         "--sample-s", "2", "--out", str(tmp_path / "soak.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    gw: int | None = None
    try:
        deadline = time.monotonic() + 90
        while gw is None and time.monotonic() < deadline and bench.poll() is None:
            gw = next((p for p, cmd in _children(bench.pid) if " serve " in cmd), None)
            time.sleep(0.2)
        assert gw is not None, "the soak never started its gateway"
        bench.send_signal(signal.SIGTERM)
        rc = bench.wait(60)
        assert rc != 0  # ended by the signal, not a finished soak
        assert _gone_within(gw, 10), f"the bench's gateway (pid {gw}) outlived it"
        assert not (tmp_path / "soak.json").exists()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        if gw is not None and _alive(gw):
            os.kill(gw, signal.SIGKILL)  # only the pid this test saw started


def test_ctrl_c_during_a_servers_readiness_wait_stops_that_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []

    def interrupted(port: int, timeout_s: float = 30.0, proc: Any = None,
                    what: str = "process") -> None:
        started.append(proc)
        raise KeyboardInterrupt

    monkeypatch.setattr(servers, "wait_port", interrupted)

    class _Stub:
        port = 9  # the floor connects to its upstream only when a request comes

    try:
        with pytest.raises(KeyboardInterrupt):
            servers.start_floor(_Stub(), tmp_path)  # type: ignore[arg-type]
        assert len(started) == 1
        assert started[0].poll() is not None, "the floor kept running after Ctrl-C"
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(10)
