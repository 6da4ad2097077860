"""``expertgate policy promote --url URL --redis-url R``: the end recorded in Redis made the
gateway read the rewritten file within its sync interval, often before the command's own
``POST /admin/reload``, which then answered ``changed: []``; the command printed
``reloaded: changed []``, which an operator read as "the promotion did nothing". It says
that the policy was already served from the rewritten file."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config
from tests.unit.test_shadow_canary import _always_coder

pytestmark = pytest.mark.integration


def _reloaded(config: Path) -> type[BaseHTTPRequestHandler]:
    class Reloaded(BaseHTTPRequestHandler):
        """A gateway that had read the file already: its reload changes nothing."""

        def do_POST(self) -> None:
            body = json.dumps({"object": "reload", "config": str(config.resolve()),
                               "policies": {"auto": "v2"}, "changed": [],
                               "warnings": []}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Reloaded


@pytest.fixture
def config(tmp_path: Path) -> Path:
    art = _always_coder(tmp_path / "cand")
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                                            candidate={"router": "knn", "artifact": str(art),
                                                       "mode": "canary", "share": 0.5})))
    return p


@pytest.fixture
def gateway_url(config: Path) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _reloaded(config))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_a_reload_after_the_redis_record_says_the_policy_was_already_served(
        redis_clean: RedisServer, config: Path, gateway_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["policy", "promote", "auto", "--config", str(config), "--url", gateway_url,
                "--redis-url", redis_clean.url]) == 0
    out = capsys.readouterr().out
    assert ("reloaded: changed [] (policy 'auto' was already served from the rewritten file: "
            "the end recorded in Redis reached the gateway first)") in out, out
