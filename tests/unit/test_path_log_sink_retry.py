"""The routing log's Redis sink when a write's reply is lost (request path, logs)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from gateway.logs import RedisStreamSink


class _Stream:
    """A Redis stand-in with one stream: ``xadd`` through a pipeline, ``xrange``; the next
    ``lose`` executions run every command and then raise (the reply came after the client's
    socket timeout), ``refuse`` ones raise before running any (Redis down)."""

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.lose = 0
        self.refuse = 0
        self._seq = 0

    def pipeline(self, transaction: bool = True) -> Any:
        stream = self

        class Pipe:
            def __init__(self) -> None:
                self.cmds: list[bytes] = []

            def xadd(self, name: str, fields: dict[str, bytes], **_: Any) -> None:
                self.cmds.append(fields["r"])

            async def execute(self) -> None:
                if stream.refuse:
                    stream.refuse -= 1
                    raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
                for rec in self.cmds:
                    stream._seq += 1
                    sid = f"{int(time.time() * 1000)}-{stream._seq}".encode()
                    stream.entries.append((sid, {b"r": rec}))
                if stream.lose:
                    stream.lose -= 1
                    raise TimeoutError("Timeout reading from 127.0.0.1:6379")

        return Pipe()

    async def xrange(self, name: str, min: str = "-", max: str = "+",
                     count: int | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        def key(sid: bytes) -> tuple[int, int]:
            ms, seq = sid.split(b"-")
            return int(ms), int(seq)

        exclusive = min.startswith("(")
        lo = key(min.lstrip("(").encode()) if min != "-" else (0, 0)
        out = [e for e in self.entries
               if (key(e[0]) > lo if exclusive else key(e[0]) >= lo)]
        return out[:count] if count else out


def _recs(n: int, start: int = 0) -> list[bytes]:
    return [orjson.dumps({"request_id": f"r{i}", "expert": "coder"})
            for i in range(start, start + n)]


def _ids(s: _Stream) -> list[str]:
    return [orjson.loads(f[b"r"])["request_id"] for _, f in s.entries]


async def test_a_batch_whose_reply_was_lost_is_not_written_twice() -> None:
    # A Redis that stalled past the client's socket timeout (a slow command, a fork) ran the
    # batch's XADDs and answered too late; the routing log wrote the batch again, so those
    # requests were in the log twice (seen through serve: 134 records for 120 requests
    # after six stalls), and a router trained on the log counted them twice
    s = _Stream()
    sink = RedisStreamSink(s)
    batch = _recs(5)
    s.lose = 1
    with pytest.raises(TimeoutError):
        await sink.write(batch)
    await sink.write(batch + _recs(2, 5))  # the retry, with records queued since
    assert _ids(s) == [f"r{i}" for i in range(7)]
    await sink.write(_recs(1, 7))
    assert _ids(s) == [f"r{i}" for i in range(8)]


async def test_a_batch_redis_never_ran_is_written_on_the_retry() -> None:
    s = _Stream()
    sink = RedisStreamSink(s)
    s.refuse = 2
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await sink.write(_recs(3))
    await sink.write(_recs(3))
    assert _ids(s) == ["r0", "r1", "r2"]
