"""``expertgate policy promote --config FILE --url URL`` where the gateway at URL serves
another file than FILE (a checkout's copy, another path): the gateway reloaded its own,
unchanged file, the command printed "reloaded" and exited 0, and the canary went on
serving. The reload answer names the file it read; the command compares and says so. A
``--url`` given as an OpenAI client's base URL (``.../v1``) reaches the same gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main
from expertgate.procs import GatewayServer
from gateway.auth import hash_key
from tests.unit.gateway_helpers import base_config, knn_artifact

pytestmark = pytest.mark.integration

ADMIN = "sk-sec-promote-admin-7c2e"


async def test_promote_against_a_gateway_on_another_file_fails_naming_it(
        ups, tmp_path: Path, capsys) -> None:
    art = knn_artifact(tmp_path / "cand", ["coder", "chatter"], [[1.0, 0.0], [0.0, 1.0]],
                       ("fix this bug", "tell me a joke"))
    cfg = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(art), "mode": "canary", "share": 0.5})
    cfg["api_keys"] = [{"name": "ops", "sha256": hash_key(ADMIN), "admin": True}]
    served, copy = tmp_path / "served.yaml", tmp_path / "copy.yaml"
    served.write_text(yaml.safe_dump(cfg))
    copy.write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(served, routing_log=tmp_path / "log.jsonl",
                       log_path=tmp_path / "gw.out", check_upstreams=False)
    await asyncio.to_thread(gw.start)
    try:
        args = ["policy", "promote", "auto", "--url", gw.url, "--api-key", ADMIN]
        rc = await asyncio.to_thread(main, [*args, "--config", str(copy)])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert f"serves {served.resolve()}, not {copy.resolve()}" in err
        # the right file: promoted and reloaded, exit 0; --url an OpenAI client's base URL
        # (it was POST /v1/admin/reload: a 404 after the file was written)
        args[args.index(gw.url)] = gw.url + "/v1/"
        rc = await asyncio.to_thread(main, [*args, "--config", str(served)])
        out = capsys.readouterr()
        assert rc == 0, out.err
        assert "reloaded: changed ['auto']" in out.out
    finally:
        await asyncio.to_thread(gw.stop)
