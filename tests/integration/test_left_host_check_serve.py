"""``expertgate serve`` (keyless, on 127.0.0.1) refuses a request whose Host is a DNS-rebinding
page's name, and serves loopback names and EXPERTGATE_ALLOWED_HOSTS (a reverse proxy's)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.unit.gateway_helpers import base_config, chat

pytestmark = pytest.mark.integration


def test_serve_refuses_a_rebound_host(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(base_config(coder.base, chatter.base)))
    gw = GatewayServer(path, log_path=tmp_path / "gw.log", routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False,
                       env={"EXPERTGATE_ALLOWED_HOSTS": "gateway.example.com"})
    gw.start()
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            body = chat("auto", "tell me a joke")
            r = c.post("/v1/chat/completions", json=body,
                       headers={"host": f"attacker.example:{gw.port}"})
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "untrusted_host"
            assert c.get("/v1/models", headers={"host": "attacker.example"}).status_code == 403
            assert c.post("/v1/chat/completions", json=body).status_code == 200
            assert c.post("/v1/chat/completions", json=body,
                          headers={"host": f"localhost:{gw.port}"}).status_code == 200
            assert c.get("/v1/models",
                         headers={"host": "gateway.example.com"}).status_code == 200
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
