"""A real ``expertgate serve`` refuses a chat message whose media URL names an inward host
(``EXPERTGATE_MEDIA_URLS``, default ``public``) before its expert gets anything, and
forwards an allowed one; the setting reaches every worker of ``--workers N`` from the
environment. 127.0.0.1 only: an upstream double, short runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer

pytestmark = pytest.mark.integration

META = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"


@pytest.fixture
def upstream() -> Iterator[ThreadedDouble]:
    d = ThreadedDouble("vision")
    yield d
    d.stop()


def _serve(tmp_path: Path, upstream: ThreadedDouble, name: str, **env: str
           ) -> GatewayServer:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"experts": [
        {"name": "vision", "api_base": upstream.base, "timeout_s": 5}]}))
    return GatewayServer(cfg, log_path=tmp_path / f"{name}.log",
                         routing_log=tmp_path / f"{name}.jsonl", check_upstreams=False,
                         start_timeout_s=120, stop_grace_s=10, env=env)


def _chat(url: str) -> dict[str, Any]:
    return {"model": "vision", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": url}}]}]}


def test_serve_refuses_an_inward_media_url_and_forwards_a_public_one(
        tmp_path: Path, upstream: ThreadedDouble) -> None:
    gw = _serve(tmp_path, upstream, "public")
    gw.start()
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            for url in (META, "http://[::ffff:169.254.169.254]/", "http://2852039166/",
                        "http://metadata.google.internal/computeMetadata/v1/"):
                r = c.post("/v1/chat/completions", json=_chat(url))
                assert r.status_code == 400, r.text
                err = r.json()["error"]
                assert err["code"] == "media_url_not_allowed", err
                assert err["param"] == "messages.0.content.1.image_url.url"
            assert upstream.double.received == []
            r = c.post("/v1/chat/completions", json=_chat("https://example.com/cat.png"))
            assert r.status_code == 200, r.text
            assert upstream.double.received == [_chat("https://example.com/cat.png")]
            metrics = c.get("/metrics").text
    finally:
        gw.stop()
    refused = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^expertgate_media_urls_refused_total\{reason="([^"]+)"\} (\S+)$', metrics, re.M)}
    assert refused == {"link-local": 3.0, "internal-name": 1.0}


def test_the_setting_reaches_every_worker(tmp_path: Path, upstream: ThreadedDouble) -> None:
    gw = _serve(tmp_path, upstream, "data-only", EXPERTGATE_MEDIA_URLS="data-only",
                EXPERTGATE_WORKERS="2")
    gw.start()
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as c:
            # several connections: the kernel spreads them over both workers
            for _ in range(8):
                with httpx.Client(base_url=gw.url, timeout=30) as one:
                    r = one.post("/v1/chat/completions",
                                 json=_chat("https://example.com/cat.png"))
                    assert r.status_code == 400, r.text
                    assert "EXPERTGATE_MEDIA_URLS=data-only" in r.json()["error"]["message"]
            assert upstream.double.received == []
            r = c.post("/v1/chat/completions", json=_chat("data:image/png;base64,AAAA"))
            assert r.status_code == 200, r.text
    finally:
        gw.stop()
