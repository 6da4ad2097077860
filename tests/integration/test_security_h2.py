"""The report-h2 security fixes against a real ``expertgate serve`` on 127.0.0.1 (what the
unit tests cannot show: the address uvicorn reports for the socket, the process log, a real
SIGHUP): the keyless loopback admin refuses a rebound Host and a cross-site POST, a config
file that is not UTF-8 is refused on reload and on SIGHUP with one clear line and the old
configuration keeps serving, and an upstream's 401 quoting the gateway's key reaches neither
the tenant nor the process log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.procs import GatewayServer
from tests.unit.gateway_helpers import base_config, chat
from tests.unit.test_security_h2 import UPSTREAM_KEY, _EchoAuthDouble

pytestmark = pytest.mark.integration


def _wait_for(path: Path, text: str, timeout_s: float = 10.0) -> str:
    end = time.monotonic() + timeout_s
    while True:
        out = path.read_text(errors="replace")
        if text in out or time.monotonic() > end:
            return out
        time.sleep(0.1)


async def test_real_serve_keyless_admin_reload_and_upstream_401(ups, tmp_path: Path) -> None:
    up = _EchoAuthDouble()
    async with up.running():
        cfg = base_config(ups[0].base, ups[1].base)
        cfg["experts"].append({"name": "e401", "api_base": f"http://127.0.0.1:{up.port}/v1",
                               "timeout_s": 2, "api_key_env": "EG_H2_UPSTREAM_KEY"})
        conf = tmp_path / "gw.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        out = tmp_path / "gw.out"
        gw = GatewayServer(conf, routing_log=tmp_path / "log.jsonl", log_path=out,
                           check_upstreams=False, env={"EG_H2_UPSTREAM_KEY": UPSTREAM_KEY})
        await asyncio.to_thread(gw.start)
        try:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as c:
                # D13: a DNS-rebinding page (Host: its own name) and a cross-site POST
                rebound = {"host": f"attacker.example:{gw.port}"}
                for path in ("/admin/state", "/ui/api/summary", "/metrics"):
                    r = await c.get(path, headers=rebound)
                    assert r.status_code == 403, (path, r.text)
                    assert r.json()["error"]["code"] == "untrusted_host"
                r = await c.post("/admin/reload", content=b"x",
                                 headers={"origin": "http://attacker.example",
                                          "content-type": "text/plain"})
                assert r.status_code == 403
                assert r.json()["error"]["code"] == "cross_site_request"
                for host in (f"127.0.0.1:{gw.port}", f"localhost:{gw.port}"):
                    r = await c.get("/admin/state", headers={"host": host})
                    assert r.status_code == 200, (host, r.text)

                # D1: the upstream refuses the gateway's key, quoting it
                r = await c.post("/v1/chat/completions", json=chat("e401", "hi"))
                assert r.status_code == 502, r.text
                assert r.json()["error"]["code"] == "upstream_auth_failed"
                assert UPSTREAM_KEY not in r.text
                assert up.seen == [f"Bearer {UPSTREAM_KEY}"]

                # D6: a config file that is not UTF-8
                conf.write_bytes(b"\xff\xfe\x00garbage\x80")
                r = await c.post("/admin/reload")
                assert r.status_code == 400 and \
                    r.headers["content-type"] == "application/json"
                err = r.json()["error"]
                assert err["code"] == "config_invalid" and str(conf) in err["message"]
                assert gw.pid is not None
                os.kill(gw.pid, signal.SIGHUP)
                log_text = await asyncio.to_thread(_wait_for, out, "reload on SIGHUP")
                assert "reload on SIGHUP failed, keeping the running configuration" in log_text
                r = await c.post("/v1/chat/completions", json=chat("coder", "hi"))
                assert r.status_code == 200, r.text
        finally:
            await asyncio.to_thread(gw.stop)
    log_text = out.read_text(errors="replace")
    assert "Task exception was never retrieved" not in log_text
    assert "refused the gateway's credentials" in log_text
    assert UPSTREAM_KEY not in log_text
