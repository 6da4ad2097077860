"""A long request's unsafe scan (the gateway's scan thread, ``Pipeline._scan_whole``) stops
within one chunk once its request is answered 504 or goes away: it no longer reads the rest
of a megabyte while the next long request waits for the thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from gateway.errors import DeadlineExceeded
from gateway.pipeline import routing_text
from routers import guard
from tests.unit.gateway_helpers import base_config, gateway_client
from tests.unit.test_guarded_policy import _code_chat_guard
from tests.unit.test_s20_guard_whole_text import PAD, UNSAFE

#: 14 chunks of harmless text, the unsafe phrase at the end (read last)
LONG = f"{PAD * 11}{UNSAFE}"


class _HeldScan:
    """``routers.guard._match_starts`` that counts the chunks read and holds the second one
    until released: the request's fate is settled while its scan is mid-text."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.read: list[int] = []
        self.holding = threading.Event()
        self.release = threading.Event()
        real = guard._match_starts

        def held(text: str, lo: int, hi: int) -> list[tuple[int, int]] | None:
            self.read.append(lo)
            if len(self.read) == 2:
                self.holding.set()
                assert self.release.wait(30)
            return real(text, lo, hi)

        monkeypatch.setattr(guard, "_match_starts", held)


async def _scan_thread_idle(gw) -> None:  # type: ignore[no-untyped-def]
    """Returns once the scan thread has finished what it was given."""
    ex = gw.pipeline._scan_executor
    assert ex is not None
    await asyncio.wait_for(asyncio.wrap_future(ex.submit(lambda: None)), 30)


async def test_a_scan_past_its_request_deadline_stops_within_one_chunk(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _HeldScan(monkeypatch)
    cfg = base_config(ups[0].base, ups[1].base,
                      guard={"artifact": str(_code_chat_guard(tmp_path))})
    async with gateway_client(cfg, tmp_path) as (_, gw):
        p = gw.pipeline
        rt = p.policies.policies["auto"]
        text = routing_text([("user", LONG)], "last_user")
        assert len(" ".join(LONG.split())) > 13 * guard.UNSAFE_CHUNK
        # the deadline passes while the thread reads the second chunk (it is held there
        # until then): a 504, as before
        with pytest.raises(DeadlineExceeded) as e:
            await p.decide(rt, text, [], deadline=time.monotonic() + 0.5)
        assert e.value.status == 504
        held.release.set()
        await _scan_thread_idle(gw)
        # ... and the thread stopped before the third chunk, not after the fourteenth (on a
        # machine too slow to reach the second within 0.5 s, before that)
        assert held.read == [0, guard.UNSAFE_CHUNK][: len(held.read)]
        read = len(held.read)
        # the thread is free: the next long request is read whole, and rejected
        d = await p.decide(rt, routing_text([("user", LONG)], "last_user"), [])
        assert d.mode == "reject" and d.guard is not None and d.guard.reject_reason == "unsafe"
        assert len(held.read) == read + 14


async def test_a_scan_whose_request_went_away_stops_within_one_chunk(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a client that disconnects cancels its request's task: no deadline passed, the scan
    # stops anyway
    held = _HeldScan(monkeypatch)
    cfg = base_config(ups[0].base, ups[1].base,
                      guard={"artifact": str(_code_chat_guard(tmp_path))})
    async with gateway_client(cfg, tmp_path) as (_, gw):
        p = gw.pipeline
        rt = p.policies.policies["auto"]
        task = asyncio.create_task(p.decide(rt, routing_text([("user", LONG)], "last_user"),
                                            []))
        assert await asyncio.to_thread(held.holding.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held.release.set()
        await _scan_thread_idle(gw)
        assert held.read == [0, guard.UNSAFE_CHUNK]
