"""``expertgate policy promote|revert --url`` against a gateway with API keys, run as README
shows it (no key): it printed ``reload answered 401: {"error": ...}`` (the raw JSON, no
command named, nothing on what to do), while the file was already rewritten. It says which
command, the gateway's message, that an admin key goes in ``--api-key`` or
EXPERTGATE_API_KEY, and that the file is written and how to reload; exit 1 as before."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from tests.unit.gateway_helpers import semantic_config_file


class _Refusing(BaseHTTPRequestHandler):
    """A gateway's /admin/reload for a caller without an admin key."""

    def do_POST(self) -> None:
        key = self.headers.get("authorization")
        status, message, code = ((401, "missing API key: send 'Authorization: Bearer <key>'",
                                  "invalid_api_key") if key is None else
                                 (403, "this API key is not an admin key", "admin_required"))
        body = json.dumps({"error": {"message": message, "type": "authentication_error",
                                     "param": None, "code": code}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway_url() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _config(tmp_path: Path) -> Path:
    return semantic_config_file(tmp_path, {"candidate": {"router": "knn", "artifact": "art",
                                                         "mode": "shadow"}})


@pytest.mark.parametrize("key, status, said", [
    ([], 401, "missing API key"), (["--api-key", "sk-tenant"], 403, "not an admin key")])
def test_a_refused_reload_says_what_to_do(
        tmp_path: Path, gateway_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], key: list[str], status: int, said: str) -> None:
    monkeypatch.delenv("EXPERTGATE_API_KEY", raising=False)
    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    cfg = _config(tmp_path)
    assert cli(["policy", "revert", "auto", "--config", str(cfg), "--url", gateway_url,
                *key]) == 1
    err = capsys.readouterr().err
    assert f"expertgate policy revert: the reload at {gateway_url} answered {status}" in err
    assert said in err and '{"error"' not in err, err
    assert "--api-key KEY or EXPERTGATE_API_KEY" in err, err
    assert "the file is written: reload with SIGHUP or POST /admin/reload" in err, err
    assert "candidate" not in yaml.safe_load(cfg.read_text())["policies"][0]
