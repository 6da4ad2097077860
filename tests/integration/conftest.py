"""Real processes for the integration tier: redis-server and the two llama.cpp experts.

The launchers are :mod:`expertgate.procs` (the ones the demo and the benchmarks use); each
process is started on a free loopback port and stopped by the PID this session started
(never by name). redis-server comes from the Debian package that ``scripts/setup.sh``
installs; the experts are SmolLM2-135M-Instruct and Gemma-3-270M from PyPI packages, on one
thread each.

A missing real component is a failure under CI (``CI=true``): this tier exists to run
against the real thing, so it must never pass by skipping. Outside CI it is a skip that
says what to install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import (
    GatewayServer,
    LlamaServer,
    LocalExpertError,
    RedisServer,
    model_path,
)

__all__ = ["LocalExperts", "RedisServer", "require_llama", "require_redis", "serve_coder"]


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} (CI=true: the integration tier never skips a real component)")
    pytest.skip(what)


def require_redis() -> str:
    """The redis-server binary; fails under CI, skips elsewhere, when it is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not installed: apt-get install -y redis-server "
                 "(scripts/setup.sh does it when run as root)")
    assert binary is not None
    return binary


def require_llama(*models: str) -> None:
    """llama-cpp-python and the model files; fails under CI, skips elsewhere, when missing."""
    try:
        import llama_cpp.server  # noqa: F401

        for m in models:
            model_path(m)
    except (ImportError, LocalExpertError) as e:
        _missing(f"the llama.cpp experts are not installed ({e}): pip install "
                 "'.[experts]' (make setup)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    binary = require_redis()
    srv = RedisServer(log_path=tmp_path_factory.mktemp("redis") / "redis.log", binary=binary)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's Redis, running and empty (a test may have stopped or killed it)."""
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
    require_llama("smollm2", "gemma3")
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


@pytest.fixture(scope="module")
def client(gateway: GatewayServer) -> Iterator[openai.OpenAI]:
    """The OpenAI SDK in front of the module's own ``gateway`` fixture (a real ``serve``),
    without retries: a test sees each answer as the gateway gave it."""
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", timeout=120.0,
                      max_retries=0)
    yield c
    c.close()


@contextlib.contextmanager
def serve_coder(tmp_path: Path, **double: Any) -> Iterator[tuple[GatewayServer, ThreadedDouble]]:
    """A real ``expertgate serve`` on a free loopback port in front of one upstream double
    (``coder``; ``double``: the double's options), its routing log beside it; both stopped
    by the PIDs started here."""
    up = ThreadedDouble("coder", **double)
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({"experts": [{"name": "coder", "api_base": up.base}]}))
    try:
        with GatewayServer(cfg, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                           check_upstreams=False) as gw:
            yield gw, up
    finally:
        up.stop()
