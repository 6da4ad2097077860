"""The routing log moved or removed under a running ``expertgate serve`` (logrotate's default
``create`` mode: rename, then the program should write a new file): records go on into a new
file at the configured path, none into the renamed one or an unlinked inode. Real gateway on
127.0.0.1 in front of an upstream double; bounded: a few dozen requests."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.integration.conftest import serve_coder

pytestmark = pytest.mark.integration


def _ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {orjson.loads(line)["client_request_id"] for line in path.read_bytes().splitlines()}


def _send(client: httpx.Client, prefix: str, n: int) -> None:
    for i in range(n):
        r = client.post("/v1/chat/completions", headers={"x-request-id": f"{prefix}{i}"},
                        json={"model": "coder", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200


def _wait_for(path: Path, want: set[str], timeout_s: float = 10) -> set[str]:
    end = time.monotonic() + timeout_s
    while not want <= _ids(path) and time.monotonic() < end:
        time.sleep(0.05)
    return _ids(path)


def test_a_moved_or_removed_routing_log_is_written_anew_at_its_path(tmp_path: Path) -> None:
    with serve_coder(tmp_path) as (gw, _up), \
            httpx.Client(base_url=gw.url, timeout=10) as c:
        live = gw.routing_log
        _send(c, "before", 10)
        assert _wait_for(live, {f"before{i}" for i in range(10)}) >= {
            f"before{i}" for i in range(10)}
        live.rename(live.with_name(live.name + ".1"))  # logrotate: move, then a new file
        _send(c, "moved", 10)
        moved = {f"moved{i}" for i in range(10)}
        assert _wait_for(live, moved) == moved
        assert not _ids(live.with_name(live.name + ".1")) & moved
        live.unlink()  # removed by hand: records must not vanish into the deleted inode
        _send(c, "removed", 10)
        removed = {f"removed{i}" for i in range(10)}
        assert _wait_for(live, removed) == removed
