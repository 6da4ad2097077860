"""An expert served over https with a certificate from the operator's own CA.

The gateway checks https upstreams against the system's trusted CAs and has no option to
turn the check off. An operator writing LiteLLM's ``ssl_verify: false`` (or ``verify_ssl``,
``ca_bundle``) under an expert got only "Extra inputs are not permitted", and nothing said how
to trust an internal CA: ``SSL_CERT_FILE`` in the gateway's environment, which OpenSSL's
default verify paths read. Real TLS on 127.0.0.1 (aiohttp with a certificate made here by
``openssl``), a real gateway in process.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.config import ConfigError, parse_config
from tests.unit.gateway_helpers import chat, gateway_client

pytestmark = pytest.mark.integration


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp / "ca.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
async def tls_upstream(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    cert, key = _self_signed(tmp_path)
    double = OpenAIUpstreamDouble("internal")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(double._app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", double.port, ssl_context=ctx).start()
    try:
        yield f"https://127.0.0.1:{double.port}/v1", cert
    finally:
        await runner.cleanup()


def _cfg(base: str) -> dict[str, object]:
    return {"embedder": {"kind": "hashing", "micro_batch": False},
            "experts": [{"name": "internal", "api_base": base, "timeout_s": 5}],
            "policies": []}


async def test_an_internal_ca_is_trusted_through_ssl_cert_file(
        tls_upstream: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, ca = tls_upstream
    async with gateway_client(_cfg(base), tmp_path / "a") as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("internal", "hi"))
        assert r.status_code == 502, r.text  # not trusted: the check is never skipped
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with gateway_client(_cfg(base), tmp_path / "b") as (c, _gw):
        r = await c.post("/v1/chat/completions", json=chat("internal", "hi"))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-expert"] == "internal"


@pytest.mark.parametrize("field, value", [("ssl_verify", False), ("verify_ssl", False),
                                          ("ca_bundle", "/etc/ssl/internal.pem")])
def test_a_tls_option_under_an_expert_says_how_to_trust_a_ca(field: str, value: object) -> None:
    cfg = _cfg("https://vllm.internal:8443/v1")
    cfg["experts"][0][field] = value  # type: ignore[index]
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, "gw.yaml")
    msg = str(e.value)
    assert f"experts[0](internal).{field}" in msg and "SSL_CERT_FILE" in msg, msg
