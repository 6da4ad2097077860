"""The servers the overhead benchmark puts between the load generator and the stub.

Each is a subprocess on 127.0.0.1, started and stopped by its own PID:

* ``floor`` — :mod:`expertgate.bench.floor`, the least a Python pass-through adds;
* ``expertgate`` — ``python -m expertgate serve`` with a config written to a temp folder;
* ``litellm`` — the LiteLLM proxy (``litellm[proxy]==1.106.2``), installed on first use in
  its own venv (its pins conflict with ours), 1 worker, no database.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from expertgate.bench.proc import process_tree
from expertgate.bench.upstream_stub import UpstreamStub
from expertgate.procs import LocalExpertError, free_port, track_child, untrack_child, wait_port

__all__ = [
    "EXPLORE_POLICY",
    "LEARNED_POLICY",
    "LITELLM_VERSION",
    "ROUTED_POLICY",
    "SHADOW_POLICY",
    "Server",
    "ServerError",
    "ensure_litellm_proxy",
    "expertgate_config",
    "gateway_available",
    "shadow_artifact",
    "start_expertgate",
    "start_floor",
    "start_litellm",
]

LITELLM_VERSION = "1.106.2"
ROUTED_POLICY = "auto"
_REPO = Path(__file__).resolve().parents[2]  # the repository (expertgate/bench/servers.py)


class ServerError(RuntimeError):
    """A benchmarked server could not be installed or started."""


class Server:
    """A started server process; a context manager that stops it (and only it) on exit."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path,
                 tmp: Path | None = None) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        self.tmp = tmp
        track_child(proc.pid, self.stop)
        #: headers every request to this server needs (the LiteLLM proxy's key)
        self.headers: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        untrack_child(self.proc.pid)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _start(name: str, cmd: list[str], port: int, workdir: Path, env: dict[str, str],
           ready_path: str, ready_timeout_s: float) -> Server:
    log = workdir / f"{name}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(_REPO),
                            start_new_session=True)
    fh.close()
    srv = Server(name, proc, port, log, workdir)
    try:
        wait_port(port, ready_timeout_s, proc)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            try:
                with urllib.request.urlopen(srv.url + ready_path, timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise ServerError(f"{name} is not ready at {ready_path}")
            time.sleep(0.2)
    except (LocalExpertError, ServerError) as e:
        srv.stop()
        raise ServerError(f"{name} did not start: {e}\n--- log tail ---\n{srv.log_tail()}"
                          ) from None
    except BaseException:
        srv.stop()  # Ctrl-C, a signal or a bug during the wait: the child must not outlive it
        raise
    return srv


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(_REPO) + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    # one BLAS/OpenMP thread per server: the machine's cores are shared with the load
    # generator and the stub, and oversubscription ruins tail latency
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra)
    return env


def start_floor(stub: UpstreamStub, workdir: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "expertgate.bench.floor", "--port", str(port),
           "--upstream", f"http://127.0.0.1:{stub.port}"]
    log = workdir / "floor.log"
    fh = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_child_env(),
                            cwd=str(_REPO), start_new_session=True)
    fh.close()
    srv = Server("floor", proc, port, log, workdir)
    try:
        # the floor has no GET endpoint: a listening port means its lifespan has run
        wait_port(port, 30.0, proc)
    except LocalExpertError as e:
        srv.stop()
        raise ServerError(f"floor did not start: {e}\n{srv.log_tail()}") from None
    except BaseException:
        srv.stop()
        raise
    return srv


def gateway_available() -> str | None:
    """None if the gateway can be started, else why not."""
    try:
        import gateway.app
        import gateway.config  # noqa: F401
    except ImportError as e:
        return f"the gateway is not importable yet ({e})"
    return None


EXPLORE_POLICY = "auto-explore"
SHADOW_POLICY = "auto-shadow"
LEARNED_POLICY = "auto-learned"


def _routes(general_expert: str) -> list[dict[str, Any]]:
    """The bench's two semantic routes: code to ``stub``, the rest to ``general_expert``."""
    return [
        {"name": "code", "expert": "stub",
         "examples": ["fix this python function", "why does my rust code not compile",
                      "write a sql query that joins two tables"]},
        {"name": "general", "expert": general_expert,
         "examples": ["explain the french revolution", "tips for marathon training",
                      "what is photosynthesis"]},
    ]


_ROUTES = _routes("stub-b")


def shadow_artifact(workdir: Path, embedder: str) -> Path:
    """A knn router over the routes' examples (stub vs stub-b), saved for the shadow policy."""
    import numpy as np

    from routers.base import RoutingTable, make_router
    from routers.embed import make_embedder

    e = make_embedder(embedder, **({"threads": 1} if embedder in ("onnx", "minilm") else {}))
    texts = [t for r in _ROUTES for t in r["examples"]]
    S = np.array([[1.0, 0.0] if r["expert"] == "stub" else [0.0, 1.0]
                  for r in _ROUTES for _ in r["examples"]])
    t = RoutingTable([f"e{i}" for i in range(len(texts))], texts, ["stub", "stub-b"], S,
                     np.zeros_like(S))
    return make_router("knn", k=3).fit(e.embed(texts), t).save(workdir / "shadow-knn",
                                                                embedder=e.name)


def learned_policy(artifact: Path) -> dict[str, object]:
    """A policy served by a trained router artifact (``expertgate train --out``): its table's
    models mapped in turn to ``stub`` and ``stub-b`` (the same upstream), so the benchmark
    times the learned decision on every request."""
    from routers.artifacts import read_manifest

    m = read_manifest(artifact)
    experts = list((m.get("json_state") or {}).get("experts_") or [])
    return {"name": LEARNED_POLICY, "router": m["type"], "artifact": str(artifact),
            "models": {e: ("stub", "stub-b")[i % 2] for i, e in enumerate(experts)},
            "on_reject": {"action": "fallback", "expert": "stub"}, "cache_ttl_s": 3600}


def expertgate_config(stub: UpstreamStub, *, embedder: str = "onnx",
                      shadow: Path | None = None,
                      learned: Path | None = None) -> dict[str, object]:
    """The gateway config the benchmark uses: concrete experts and routed policies.

    The routed policy's threshold is -1 (cosine's minimum) so every prompt routes, and a
    rejection would fall back to ``stub`` anyway: the point is to time the decision, and a
    400 would count as an error in the figures. ``auto-explore`` and ``auto-shadow`` are the
    same kind of policy with exploration (rate 0.1 between ``stub`` and ``stub-b``, the same
    upstream) and with a shadow candidate router (``shadow`` artifact), so that their added
    latency is compared with the plain policy's in one run. ``learned``: a trained router
    artifact served by one more policy (:func:`learned_policy`).
    """
    learn = {"router": "semantic", "params": {"threshold": -1.0},
             "on_reject": {"action": "fallback", "expert": "stub"}, "routes": _ROUTES,
             "cache_ttl_s": 3600}
    policies: list[dict[str, object]] = [
        {"name": EXPLORE_POLICY, **learn, "explore": {"rate": 0.1, "method": "epsilon"}}]
    if shadow is not None:
        policies.append({"name": SHADOW_POLICY, **learn,
                         "candidate": {"router": "knn", "artifact": str(shadow),
                                       "mode": "shadow"}})
    if learned is not None:
        policies.append(learned_policy(learned))
    return {
        "experts": [
            {"name": "stub", "api_base": stub.base_url, "timeout_s": 30},
            {"name": "stub-b", "api_base": stub.base_url, "model": "stub", "timeout_s": 30},
            {"name": "stub-sse", "api_base": stub.sse_base_url, "model": "stub",
             "timeout_s": 30},
        ],
        "policies": [*policies, {
            "name": ROUTED_POLICY,
            "router": "semantic",
            "params": {"threshold": -1.0},
            "on_reject": {"action": "fallback", "expert": "stub"},
            "routes": _routes("stub"),
            "cache_ttl_s": 3600,
        }],
        "embedder": {"kind": embedder,
                     "options": {"threads": 1} if embedder in ("onnx", "minilm") else {},
                     "micro_batch": True, "max_batch": 32},
    }


def start_expertgate(stub: UpstreamStub, workdir: Path, *, embedder: str = "onnx",
                     redis_url: str | None = None, shadow: Path | None = None,
                     learned: Path | None = None) -> Server:
    why = gateway_available()
    if why is not None:
        raise ServerError(why)
    port = free_port()
    cfg = workdir / "expertgate.yaml"
    cfg.write_text(yaml.safe_dump(expertgate_config(stub, embedder=embedder, shadow=shadow,
                                                    learned=learned), sort_keys=False))
    cmd = [sys.executable, "-m", "expertgate", "serve", "--config", str(cfg),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    env = _child_env(EXPERTGATE_LOG_PATH=str(workdir / "routing-log.jsonl"))
    # the first start may export the ONNX graph (tens of seconds on a busy 2-core machine)
    return _start("expertgate", cmd, port, workdir, env, "/v1/models", 240.0)


def litellm_venv() -> Path:
    base = os.environ.get("EXPERTGATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "expertgate")
    return Path(base) / "litellm-proxy-venv"


def ensure_litellm_proxy() -> Path:
    """The ``litellm`` proxy executable, installing it in its own venv on first use."""
    venv = litellm_venv()
    exe = venv / "bin" / "litellm"
    stamp = venv / ".expertgate-litellm"
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_VERSION:
        return exe
    print(f"bench: installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once)",
          file=sys.stderr)
    py = sys.executable
    if not (venv / "bin" / "python").exists():
        base_py = getattr(sys, "_base_executable", None) or py
        subprocess.run([base_py, "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"litellm[proxy]=={LITELLM_VERSION}"], capture_output=True, text=True)
    if r.returncode != 0 or not exe.exists():
        raise ServerError(f"installing the LiteLLM proxy failed:\n{r.stderr[-2000:]}")
    stamp.write_text(LITELLM_VERSION)
    return exe


def start_litellm(stub: UpstreamStub, workdir: Path) -> Server:
    exe = ensure_litellm_proxy()
    port = free_port()
    cfg = {
        "model_list": [
            {"model_name": "stub", "litellm_params": {
                "model": "openai/stub", "api_base": stub.base_url, "api_key": "none"}},
            {"model_name": "stub-sse", "litellm_params": {
                "model": "openai/stub", "api_base": stub.sse_base_url, "api_key": "none"}},
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
    }
    path = workdir / "litellm.yaml"
    path.write_text(json.dumps(cfg))
    # 1.106 refuses to start without a master key; a random one, sent by the load generator,
    # is checked against the config without a database (the cheapest auth it offers)
    key = "sk-bench-" + secrets.token_hex(16)
    env = _child_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
                     LITELLM_MASTER_KEY=key)
    env.pop("DATABASE_URL", None)
    env.pop("PYTHONPATH", None)
    cmd = [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    srv = _start("litellm", cmd, port, workdir, env, "/health/liveliness", 180.0)
    srv.headers = {"authorization": f"Bearer {key}"}
    return srv
