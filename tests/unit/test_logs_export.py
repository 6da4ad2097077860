"""``expertgate logs export`` on the logs a deployment has: rotated or compressed copies,
ratings for requests of another file, bad ratings, damaged lines (report h3 D4, D5)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from expertgate.cli import main
from gateway.logs import export_routing_log, feedback_path_for


def _rec(i: int) -> dict:
    return {"request_id": f"r{i}", "tenant": "t", "ts": 1.0 + i, "endpoint": "chat",
            "policy": "auto", "expert": "a", "status": "ok", "text": f"question {i}"}


def _rating(rid: str, score: object) -> dict:
    return {"request_id": rid, "tenant": "t", "score": score, "ts": 5.0, "comment": None}


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n"
                            for x in lines))
    return path


@pytest.mark.parametrize("name,feedback", [
    ("routing-log.jsonl", "routing-log.feedback.jsonl"),
    ("routing-log.jsonl.gz", "routing-log.feedback.jsonl"),
    ("routing-log.1.jsonl", "routing-log.feedback.jsonl"),
    ("routing-log.jsonl.1", "routing-log.feedback.jsonl"),
    ("routing-log.jsonl.2.gz", "routing-log.feedback.jsonl"),
    ("my.log.jsonl", "my.log.feedback.jsonl"),  # the gateway's own rule: the stem
    ("routing-log", "routing-log.feedback.jsonl"),
])
def test_feedback_file_of_a_live_rotated_or_compressed_log(name: str, feedback: str) -> None:
    assert feedback_path_for(Path("runs") / name) == Path("runs") / feedback


def test_export_counts_joined_unmatched_and_skipped(tmp_path: Path, capsys) -> None:
    """Report h3 D4: 160 of 220 ratings were dropped without a word; D5: a null or
    non-numeric score aborted the whole export with a bare TypeError/ValueError."""
    log = _write(tmp_path / "routing-log.jsonl",
                 [_rec(i) for i in range(6)] + ['{"request_id": "r9", "tru'])
    _write(tmp_path / "routing-log.feedback.jsonl", [
        _rating("r0", 1.0), _rating("r1", 0.5),
        _rating("r2", None), _rating("r3", "great"), _rating("r4", 2.0),  # skipped
        {"tenant": "t", "score": 1.0},  # no request id
        _rating("elsewhere", 1.0), _rating("unknown", 0.0),  # match no record here
        "not json"])
    out = tmp_path / "out.parquet"
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 record(s)" in printed
    assert "feedback: 2 rating(s) joined; 2 rating(s) match no exported record" in printed
    assert "skipped 1 malformed log line(s); 4 invalid rating(s)" in printed
    assert "1 malformed feedback line(s)" in printed
    df = pd.read_parquet(out).set_index("request_id")
    assert df.loc["r0", "feedback_score"] == 1.0 and df.loc["r1", "feedback_score"] == 0.5
    assert df["feedback_score"].isna().sum() == 4
    st = export_routing_log(tmp_path / "o.jsonl", log_path=log,
                            feedback_path=tmp_path / "routing-log.feedback.jsonl")
    assert (st.written, st.ratings, st.joined, st.unmatched, st.bad_ratings,
            st.malformed_lines, st.malformed_feedback_lines) == (6, 4, 2, 2, 4, 1, 1)


def test_export_reads_rotated_and_gzip_logs_with_the_live_feedback(tmp_path: Path,
                                                                    capsys) -> None:
    """Report h3 D4: a .gz log gave one warning per line and "wrote 0" with exit 0; a rotated
    routing-log.1.jsonl looked for routing-log.1.feedback.jsonl and joined nothing."""
    lines = "".join(json.dumps(_rec(i)) + "\n" for i in range(5)).encode()
    gz = tmp_path / "routing-log.jsonl.gz"
    gz.write_bytes(gzip.compress(lines))
    rot = tmp_path / "routing-log.1.jsonl"
    rot.write_bytes(lines)
    _write(tmp_path / "routing-log.feedback.jsonl", [_rating("r1", 0.25)])
    for log in (gz, rot):
        out = tmp_path / f"{log.name}.parquet"
        assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "wrote 5 record(s)" in printed and "1 rating(s) joined" in printed
        assert pd.read_parquet(out)["feedback_score"].notna().sum() == 1
    # a compressed log cut short (still being written): what was read is exported
    gz.write_bytes(gzip.compress(lines)[:-12])
    assert main(["logs", "export", "--log-path", str(gz), "--out",
                 str(tmp_path / "cut.parquet")]) == 0
    assert "skipped 1 malformed log line(s)" in capsys.readouterr().out
    # ".gz" that is no gzip: one line, exit 2
    bad = _write(tmp_path / "plain.jsonl.gz", [_rec(0)])
    assert main(["logs", "export", "--log-path", str(bad), "--out",
                 str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {bad}" in err and len(err.strip().splitlines()) == 1


def test_export_names_a_missing_feedback_file_and_fails_on_nothing(tmp_path: Path,
                                                                    capsys) -> None:
    log = _write(tmp_path / "routing-log.jsonl", [_rec(0), _rec(1)])
    out = tmp_path / "out.parquet"
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (f"no feedback file at {tmp_path / 'routing-log.feedback.jsonl'}: no record has "
            "a rating") in printed
    # nothing to write: a clear line, a non-zero exit, no empty file
    junk = _write(tmp_path / "junk.jsonl", ["not json", "[1, 2]"])
    empty = tmp_path / "empty.parquet"
    assert main(["logs", "export", "--log-path", str(junk), "--out", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no record to write" in err and "skipped 2 malformed log line(s)" in err
    assert not empty.exists()
    assert main(["logs", "export", "--log-path", str(log), "--out", str(empty),
                 "--tenant", "other"]) == 1
    assert "for tenant other" in capsys.readouterr().err
