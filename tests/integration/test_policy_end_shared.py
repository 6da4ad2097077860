"""``expertgate policy revert --url`` ends a canary on every gateway sharing its Redis, not
only on the one it reloads: two real ``expertgate serve`` processes, each with its own copy of
the configuration, on one real redis-server (started on a free port, stopped by its PID); the
CLI reloads the first and records the end in Redis, and the second stops serving the canary
within its sync interval. A third gateway started afterwards from a stale copy never serves
it (gateway/canary_sync.py, ``record_end``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat
from tests.unit.test_shadow_canary import _always_coder

pytestmark = pytest.mark.integration

SYNC_S = 0.2


def _arms(base: str, n: int) -> list[str | None]:
    out = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for _ in range(n):
            r = c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
            assert r.status_code == 200, r.text
            out.append(r.headers.get("x-expertgate-arm"))
    return out


def _gateway(tmp_path: Path, name: str, cfg: dict, redis_url: str) -> GatewayServer:
    d = tmp_path / name
    d.mkdir()
    path = d / "gw.yaml"  # each its own file: only Redis connects them
    path.write_text(yaml.safe_dump(cfg))
    return GatewayServer(path, redis_url=redis_url, log_path=d / "gw.log",
                         routing_log=d / "log.jsonl", check_upstreams=False,
                         start_timeout_s=60, stop_grace_s=10,
                         env={"EXPERTGATE_CANARY_SYNC_S": str(SYNC_S)})


def test_a_revert_through_one_gateway_stops_the_canary_on_every_gateway_of_its_redis(
        redis_clean: RedisServer, tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    art = _always_coder(tmp_path / "cand")
    cfg = base_config(coder.base, chatter.base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                 "share": 0.5, "auto_revert": {"min_samples": 10_000}})
    a = _gateway(tmp_path, "a", cfg, redis_clean.url)
    b = _gateway(tmp_path, "b", cfg, redis_clean.url)
    late = _gateway(tmp_path, "c", cfg, redis_clean.url)
    try:
        a.start()
        b.start()
        assert "canary" in _arms(b.url, 16)  # the second serves the canary before

        env = {k: v for k, v in os.environ.items() if k != "EXPERTGATE_REDIS_URL"}
        out = subprocess.run(
            [sys.executable, "-m", "expertgate", "policy", "revert", "auto",
             "--config", str(a.config), "--url", a.url, "--redis-url", redis_clean.url],
            capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert f"reverted the candidate of policy 'auto' in {a.config}" in out.stdout
        assert "revertd" not in out.stdout
        assert "recorded in Redis" in out.stdout

        # the second gateway, never reloaded and with the candidate still in its file, drops
        # it within a few sync intervals
        deadline = time.monotonic() + 20 * SYNC_S
        with httpx.Client(base_url=b.url, timeout=10) as c:
            while True:
                state = c.get("/admin/state").json()
                if "auto" not in state.get("canaries", {}):
                    break
                assert time.monotonic() < deadline, state.get("canaries")
                time.sleep(SYNC_S / 2)
        assert _arms(b.url, 8) == [None] * 8
        assert _arms(a.url, 8) == [None] * 8
        assert "candidate" in yaml.safe_load((tmp_path / "b" / "gw.yaml").read_text())[
            "policies"][0]
        assert "still names the candidate" in b.log_tail()

        # a gateway that was down meanwhile reads the record before it serves
        late.start()
        assert _arms(late.url, 8) == [None] * 8
    finally:
        for g in (late, b, a):
            g.stop()
        coder.stop()
        chatter.stop()


async def test_a_promotion_reaches_a_gateway_on_the_same_file_and_a_shadow_ends_too(
        redis_clean: RedisServer, ups, tmp_path: Path, capsys) -> None:
    """In-process gateways on one real Redis, no --url: a promotion recorded there makes a
    gateway that reads the same file serve the promoted router (it reads the file again);
    a reverted shadow stops on a gateway whose own file still names it."""
    import asyncio

    from expertgate.cli import main
    from tests.unit.gateway_helpers import gateway_client

    art = _always_coder(tmp_path / "cand")
    canary = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(art), "mode": "canary", "share": 0.5})
    shadow = base_config(ups[0].base, ups[1].base, candidate={
        "router": "knn", "artifact": str(art), "mode": "shadow"})
    shared, own = tmp_path / "shared.yaml", tmp_path / "own.yaml"
    shared.write_text(yaml.safe_dump(canary))
    own.write_text(yaml.safe_dump(shadow))
    kw = {"redis_url": redis_clean.url, "canary_sync_s": 60}  # exchanges by hand
    async with gateway_client(canary, tmp_path / "a", config=shared, **kw) as (c1, gw1), \
            gateway_client(shadow, tmp_path / "b", config=own, **kw) as (_, gw2):
        assert main(["policy", "promote", "auto", "--config", str(shared),
                     "--redis-url", redis_clean.url]) == 0
        assert "promoted the candidate of policy 'auto'" in capsys.readouterr().out
        await gw1._canary_exchange()
        assert gw1.policy_set.policies["auto"].candidate is None  # at once
        await asyncio.wait_for(gw1._ended_reload, 30)  # then the file, read again
        assert gw1.policy_set.policies["auto"].config.router == "knn"
        r = await c1.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        # the promoted router's choice (the incumbent's is chatter)
        assert r.headers["x-expertgate-expert"] == "coder"
        assert "x-expertgate-arm" not in r.headers

        assert main(["policy", "revert", "auto", "--config", str(own),
                     "--redis-url", redis_clean.url]) == 0
        own.write_text(yaml.safe_dump(shadow))  # gw2's file still names the shadow
        await gw2._canary_exchange()
        assert gw2.policy_set.policies["auto"].candidate is None
        await asyncio.wait_for(gw2._ended_reload, 30)
        assert gw2.policy_set.policies["auto"].candidate is None  # the reload kept it off
