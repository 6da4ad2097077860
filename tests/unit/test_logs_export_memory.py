"""``expertgate logs export`` on a log much larger than memory should hold: it streams."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gateway import logs
from gateway.logs import export_routing_log


def _big_log(tmp_path: Path, n: int) -> tuple[Path, Path]:
    log, fb = tmp_path / "routing-log.jsonl", tmp_path / "routing-log.feedback.jsonl"
    with log.open("w") as f, fb.open("w") as g:
        for i in range(n):
            rec = {"request_id": f"r{i}", "tenant": "t", "ts": 1.0 + i, "endpoint": "chat",
                   "policy": "auto", "policy_version": "v1", "text": f"question number {i} "
                   + "padding " * 40, "mode": "single", "expert": "ab"[i % 2],
                   "targets": ["a", "b"], "scores": [0.5, 0.25],
                   "guard": {"label": "x", "ood_score": 0.1}, "status": "ok",
                   "http_status": 200, "cost_usd": 1e-5, "fallback": False,
                   "action_probs": {"ab"[i % 2]: 1.0}, "propensity": 1.0}
            if i % 1000 == 7:  # a shadow decision: other fields, no request id
                rec = {"ts": 1.0 + i, "endpoint": "shadow", "policy": "auto",
                       "router_version": "v2", "mode": "single", "expert": "b",
                       "served_expert": "a", "agrees": False, "reason": None,
                       "targets": ["b"], "cache": "miss", "decision_ms": 0.2}
            f.write(json.dumps(rec) + "\n")
            if i % 3 == 0 and "request_id" in rec:
                g.write(json.dumps({"request_id": f"r{i}", "tenant": "t", "score": 1.0,
                                    "ts": 9.0, "comment": None}) + "\n")
    return log, fb


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_export_memory_does_not_grow_with_the_log(tmp_path: Path, suffix: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # the export held every record as a dict, then a DataFrame of them (~9x the log's size
    # at its peak: 575 MB for a 64 MB log), so a few days of a busy gateway's log could not be
    # exported on the machine that served it
    monkeypatch.setattr(logs, "EXPORT_CHUNK_ROWS", 500)
    n = 12_000
    log, fb = _big_log(tmp_path, n)
    out = tmp_path / f"export{suffix}"
    tracemalloc.start()
    try:
        st = export_routing_log(out, log_path=log, feedback_path=fb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rated = [i for i in range(n) if i % 3 == 0 and i % 1000 != 7]
    assert st.written == n and st.joined == len(rated) and st.unmatched == 0
    assert peak < log.stat().st_size / 2, (peak, log.stat().st_size)
    df = pd.read_parquet(out) if suffix == ".parquet" else pd.read_json(out, lines=True)
    assert len(df) == n and int(df["feedback_score"].notna().sum()) == st.joined
    row = df[df["request_id"] == "r3"].iloc[0]
    assert row["feedback_score"] == 1.0 and json.loads(row["guard"])["label"] == "x"
    assert json.loads(row["targets"]) == ["a", "b"]
    shadow = df[df["endpoint"] == "shadow"].iloc[0]
    assert shadow["served_expert"] == "a" and not shadow["agrees"]


def test_an_export_that_fails_midway_leaves_nothing_under_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # written in place, a crash (or a full disk) midway left half an export that train and
    # eval offpolicy would read as the whole log
    monkeypatch.setattr(logs, "EXPORT_CHUNK_ROWS", 100)
    log, fb = _big_log(tmp_path, 1000)
    out = tmp_path / "export.parquet"
    out.write_bytes(b"the previous export")
    real = logs._ParquetChunks.write
    calls = []

    def failing(self: object, rows: list) -> None:
        calls.append(len(rows))
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(logs._ParquetChunks, "write", failing)
    with pytest.raises(OSError):
        export_routing_log(out, log_path=log, feedback_path=fb)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "export.parquet", "routing-log.feedback.jsonl", "routing-log.jsonl"]
    monkeypatch.setattr(logs._ParquetChunks, "write", real)
    assert export_routing_log(out, log_path=log, feedback_path=fb).written == 1000
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    old = os.umask(0)
    os.umask(old)
    return old


def test_a_bool_in_a_number_field_is_a_mistyped_record_not_a_failed_export(
        tmp_path: Path) -> None:
    log, fb = _big_log(tmp_path, 30)
    with log.open("a") as f:
        f.write(json.dumps({"request_id": "odd", "endpoint": "chat", "http_status": True,
                            "expert": "a", "text": "x"}) + "\n")
    st = export_routing_log(tmp_path / "e.parquet", log_path=log, feedback_path=fb)
    assert (st.written, st.mistyped) == (30, 1)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_training_reads_a_large_export_in_bounded_memory(
        tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # load_logs read every column of the export at once (pandas.read_json of the whole
    # file: 690 MB peak to train on a 63 MB JSONL export), though training needs a few
    from evals.datasets import routing
    from evals.offpolicy import load_logged

    monkeypatch.setattr(routing, "EXPORT_READ_ROWS", 500)
    log, fb = _big_log(tmp_path, 6000)
    out = tmp_path / f"export{suffix}"
    export_routing_log(out, log_path=log, feedback_path=fb)
    tracemalloc.start()
    try:
        table = routing.load_logs(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(table.prompts) == 2000 - 2  # the rated requests (two shadow rows replaced two)
    if suffix == ".jsonl":  # was 10x the file (Parquet's own buffers are not traced)
        assert peak < out.stat().st_size * 2, peak
    assert len(load_logged(out, lambda t: np.zeros((len(t), 2))).actions) == 1998
