"""A fast fixed-answer OpenAI-compatible upstream for the overhead benchmark.

The benchmark measures what a proxy *adds*, so the upstream must never be the bottleneck: it
has to serve far more requests per second than any proxy in front of it. A Python server
cannot (a few thousand req/s on one core); nginx (Debian ``nginx-light``) with fixed bodies
serves tens of thousands. nginx cannot branch on the JSON body's ``stream`` flag, so the
streaming answer lives under its own base URL:

* ``{base_url}/chat/completions``     -> a fixed ``chat.completion`` JSON
* ``{sse_base_url}/chat/completions`` -> a fixed SSE stream (3 chunks + ``[DONE]``)
* ``.../models``                       -> the model list (health checks)

``base_url`` is ``http://127.0.0.1:PORT/v1`` and ``sse_base_url`` ``.../sse/v1``. The
server runs from a config written to a temporary folder (no system files touched), on
loopback only, one worker process, and is stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from expertgate.procs import LocalExpertError, free_port, track_child, untrack_child, wait_port

__all__ = ["CHAT_BODY", "SSE_BODY", "StubError", "UpstreamStub"]

MODEL = "stub"

CHAT_BODY = json.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 1700000000, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the stub."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
}, separators=(",", ":"))


def _chunk(delta: dict[str, str], finish: str | None) -> str:
    return json.dumps({
        "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1700000000,
        "model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }, separators=(",", ":"))


SSE_BODY = "".join(f"data: {c}\n\n" for c in (
    _chunk({"role": "assistant", "content": "Hello"}, None),
    _chunk({"content": " from the stub."}, None),
    _chunk({}, "stop"),
)) + "data: [DONE]\n\n"

MODELS_BODY = json.dumps({"object": "list", "data": [
    {"id": MODEL, "object": "model", "created": 1700000000, "owned_by": "stub"}]})


class StubError(LocalExpertError):
    """The stub could not be started (nginx missing, port busy, bad config)."""


def _nginx_string(s: str) -> str:
    # nginx quoted strings: escape backslashes and the quote; newlines may stay literal
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _config(prefix: Path, port: int) -> str:
    temps = "\n".join(f"  {k}_temp_path {prefix / k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
worker_processes 1;
daemon off;
master_process on;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
  access_log off;
{temps}
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_max_body_size 8m;
  # read the whole request body into memory before answering, as a real server does
  client_body_buffer_size 1m;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /v1/chat/completions {{
      default_type application/json;
      return 200 {_nginx_string(CHAT_BODY)};
    }}
    location = /sse/v1/chat/completions {{
      default_type text/event-stream;
      add_header cache-control no-cache;
      return 200 {_nginx_string(SSE_BODY)};
    }}
    location ~ ^(/sse)?/v1/models$ {{
      default_type application/json;
      return 200 {_nginx_string(MODELS_BODY)};
    }}
    location / {{ return 404; }}
  }}
}}
"""


class UpstreamStub:
    """nginx serving fixed OpenAI-shaped answers on 127.0.0.1; a context manager."""

    def __init__(self, port: int | None = None, nginx: str | None = None) -> None:
        self.port = port or free_port()
        self.nginx = nginx or shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def sse_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sse/v1"

    def start(self) -> UpstreamStub:
        if self.nginx is None:
            raise StubError("nginx is not installed: the benchmark's upstream stub needs it "
                            "(Debian: apt-get install nginx-light; scripts/setup.sh does it)")
        self._dir = tempfile.TemporaryDirectory(prefix="expertgate-stub-")
        prefix = Path(self._dir.name)
        # the worker may drop to an unprivileged user: it must be able to enter the folder
        os.chmod(prefix, 0o755)
        conf = prefix / "nginx.conf"
        conf.write_text(_config(prefix, self.port))
        self.proc = subprocess.Popen(
            [self.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        track_child(self.proc.pid, self.stop)
        try:
            wait_port(self.port, 15.0, self.proc, "nginx")
        except LocalExpertError as e:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.stop()
            raise StubError(f"nginx stub did not start: {e}\n{err}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> list[int]:
        """The master's PID and its workers' (for CPU and RSS accounting)."""
        if self.proc is None:
            return []
        from expertgate.bench.proc import process_tree

        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGQUIT is nginx's graceful stop; its workers exit with the master
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            untrack_child(self.proc.pid)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> UpstreamStub:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
