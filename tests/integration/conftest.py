"""Real processes for the integration tier: one redis-server and two llama.cpp experts.

Each is started once per test session on a free loopback port and stopped by the PID this
session started (never by name). redis-server comes from the Debian package that
``scripts/setup.sh`` installs; the two experts are SmolLM2-135M-Instruct and Gemma-3-270M
from PyPI packages, on one thread each.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from gateway.local_experts import ChildServer, LlamaServer, LocalExpertError, free_port

__all__ = ["LocalExperts", "RedisServer"]


class RedisServer(ChildServer):
    """``redis-server`` in the foreground as a child process: no persistence, loopback only.

    ``stop`` asks it to shut down (``redis-cli -p P shutdown nosave``) and falls back to
    signalling its PID; ``start`` again reuses the same port, so clients see the same URL
    come back.
    """

    kind = "redis"

    def __init__(self, binary: str, cli: str | None, port: int | None = None,
                 log_path: Path | None = None) -> None:
        super().__init__("redis", port, log_path, start_timeout_s=20.0, stop_grace_s=5.0)
        self.binary = binary
        self.cli = cli

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "yes"]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc is None or self.proc.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise LocalExpertError(f"redis-server exited before it was ready:\n{tail}")
            with contextlib.suppress(redis.RedisError):
                r = redis.Redis(port=self.port, socket_timeout=1.0)
                try:
                    if r.ping():
                        return
                finally:
                    r.close()
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise LocalExpertError(f"redis-server not ready on port {self.port}:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.running and self.cli is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run([self.cli, "-p", str(self.port), "shutdown", "nosave"],
                               timeout=5, capture_output=True, check=False)
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(self.stop_grace_s)
        super().stop()  # by PID, if it is still there

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: the integration tier needs it. Install "
                    "the Debian package (apt-get install -y redis-server), which "
                    "scripts/setup.sh (`make setup`) does when run as root.")
    logs = tmp_path_factory.mktemp("redis")
    srv = RedisServer(binary, shutil.which("redis-cli"), free_port(), logs / "redis.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, running and empty (a test may have stopped it)."""
    if not redis_server.running:
        redis_server.start()
    r = redis_server.client()
    r.flushall()
    r.close()
    yield redis_server


class LocalExperts:
    """The two llama.cpp experts of this session, by name."""

    def __init__(self, servers: dict[str, LlamaServer]) -> None:
        self.servers = servers

    def __getitem__(self, name: str) -> LlamaServer:
        return self.servers[name]

    @property
    def ports(self) -> dict[str, int]:
        return {n: s.port for n, s in self.servers.items()}

    def ensure_running(self) -> None:
        for s in self.servers.values():
            if not s.running:
                s.start()


@pytest.fixture(scope="session")
def llama_experts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalExperts]:
    logs = tmp_path_factory.mktemp("llama")
    servers = {m: LlamaServer.for_model(m, n_threads=1, log_path=logs / f"{m}.log")
               for m in ("smollm2", "gemma3")}
    try:
        for s in servers.values():
            s.start(wait=False)  # load both at once
        for s in servers.values():
            s.wait_ready()
        yield LocalExperts(servers)
    finally:
        for s in servers.values():
            s.stop()
