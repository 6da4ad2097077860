"""A key with a character outside ASCII (``sk-clé-1``), stored by ``expertgate keys hash`` /
``keys add`` as the sha256 of its UTF-8 bytes: a client sending those bytes (curl, any
UTF-8 client) always got 401 ``invalid API key``, because the gateway read the header as
latin-1 and hashed that text's UTF-8 encoding, other bytes. The digest is now of the bytes
the client sent; ASCII keys are unchanged."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, chat, gateway_client

KEY = "sk-clé-1"


async def test_a_utf8_key_authenticates_on_every_endpoint(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "t", "sha256": hash_key(KEY)},
                       {"name": "a", "sha256": hash_key("sk-ascii-1")}]
    utf8 = [("authorization", f"Bearer {KEY}".encode())]
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.get("/v1/models", headers=utf8)
        assert r.status_code == 200, r.text
        r = await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"),
                         headers=[*utf8, ("content-type", "application/json")])
        assert r.status_code == 200, r.text
        r = await c.get("/v1/models", headers=[("x-api-key", KEY.encode())])
        assert r.status_code == 200, r.text
        # ASCII keys as before; a wrong key still 401
        r = await c.get("/v1/models", headers={"authorization": "Bearer sk-ascii-1"})
        assert r.status_code == 200
        r = await c.get("/v1/models", headers=[("authorization", "Bearer sk-clé-2".encode())])
        assert r.status_code == 401
