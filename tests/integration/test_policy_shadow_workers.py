"""A real ``expertgate serve --workers 2`` on a real redis-server (free port, stopped by its
PID), a policy with a shadow candidate: every chat request gets one routing-log record and
one shadow record naming it, across a reload that has the supervisor replace both workers
(the replaced workers dropped the shadow decisions still queued: 59 for 60 requests), and a
decision cached in Redis is served by either worker to its own tenant only."""

from __future__ import annotations

import collections
import hashlib
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.conftest import RedisServer
from tests.unit.gateway_helpers import base_config, chat
from tests.unit.test_shadow_canary import _always_coder

pytestmark = pytest.mark.integration

TEXTS = ["tell me a joke", "fix this bug in my code", "how are you today",
         "refactor this class"]


def _log(redis: RedisServer, want: int) -> list[dict]:
    r = redis.client()
    try:
        deadline = time.monotonic() + 10
        while True:  # the log is written in batches (at most 20 ms late), shadows after
            recs = [orjson.loads(next(iter(v.values()))) for _, v in r.xrange("eg:log")]
            if len(recs) >= want or time.monotonic() > deadline:
                return recs
            time.sleep(0.1)
    finally:
        r.close()


def test_every_request_has_one_record_and_one_shadow_record_across_a_reload(
        redis_clean: RedisServer, tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base, candidate={
        "router": "knn", "artifact": str(_always_coder(tmp_path / "cand")), "mode": "shadow"})
    cfg["api_keys"] = [{"name": n, "sha256": hashlib.sha256(n.encode()).hexdigest(),
                        "admin": n == "ops"} for n in ("tenant-a", "tenant-b", "ops")]
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    gw = GatewayServer(path, redis_url=redis_clean.url, log_path=tmp_path / "gw.log",
                       check_upstreams=False, start_timeout_s=90, stop_grace_s=15,
                       env={"EXPERTGATE_WORKERS": "2"})
    ids: list[str] = []
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, timeout=10) as c:
            def ask(tenant: str, text: str) -> httpx.Response:
                r = c.post("/v1/chat/completions", json=chat("auto", text),
                           headers={"authorization": f"Bearer {tenant}"})
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-request-id"])
                return r

            cache = collections.Counter(ask("tenant-a", TEXTS[i % 4]).headers[
                "x-expertgate-cache"] for i in range(16))
            assert cache == {"miss": 4, "hit": 12}  # shared by both workers, in Redis
            # another tenant finds none of tenant-a's decisions
            assert [ask("tenant-b", t).headers["x-expertgate-cache"] for t in TEXTS] == \
                ["miss"] * 4
            cfg["policies"][0]["fallback"] = ["coder"]  # a changed policy: a new version
            path.write_text(yaml.safe_dump(cfg))
            r = c.post("/admin/reload", headers={"authorization": "Bearer ops"})
            assert r.status_code == 200 and r.json()["workers"]["count"] == 2, r.text
            for i in range(20):  # while the supervisor replaces the workers
                ask("tenant-a", TEXTS[i % 4])
                time.sleep(0.05)
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
    recs = _log(redis_clean, 2 * len(ids))
    chats = collections.Counter(r["request_id"] for r in recs if r["endpoint"] == "chat")
    shadows = collections.Counter(r["request_id"] for r in recs if r["endpoint"] == "shadow")
    assert chats == shadows == collections.Counter(ids)  # each once
