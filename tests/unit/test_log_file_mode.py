"""The routing log and the feedback file a gateway creates are readable by their owner only:
with ``log_prompts`` they hold every prompt (and always the keys' names, costs and request
ids), and the process umask (often 022) would make them world-readable. A file that already
exists (logrotate's ``create 0640 ...``, an operator's chmod) keeps its mode."""
from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from gateway.logs import JsonlSink


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_new_log_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        sink = JsonlSink(tmp_path / "log.jsonl", tmp_path / "fb.jsonl")
        asyncio.run(sink.write([b'{"a": 1}']))
        asyncio.run(sink.write_feedback(b'{"b": 2}'))
        asyncio.run(sink.close())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "log.jsonl") == 0o600
    assert _mode(tmp_path / "fb.jsonl") == 0o600
    assert (tmp_path / "log.jsonl").read_bytes() == b'{"a": 1}\n'
    assert (tmp_path / "fb.jsonl").read_bytes() == b'{"b": 2}\n'


def test_a_log_moved_away_is_recreated_owner_only(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "log.jsonl", tmp_path / "fb.jsonl")
    (tmp_path / "log.jsonl").rename(tmp_path / "log.jsonl.1")
    asyncio.run(sink.write([b"{}"]))
    asyncio.run(sink.close())
    assert _mode(tmp_path / "log.jsonl") == 0o600


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    p = tmp_path / "log.jsonl"
    p.write_bytes(b"")
    p.chmod(0o640)
    sink = JsonlSink(p, tmp_path / "fb.jsonl")
    asyncio.run(sink.write([b"{}"]))
    asyncio.run(sink.close())
    assert _mode(p) == 0o640 and p.read_bytes() == b"{}\n"
