"""``expertgate logs export --feedback-path``: a file the user names is a file to read."""

from __future__ import annotations

import json
from pathlib import Path

from expertgate.cli import main


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_named_feedback_file_that_does_not_exist_is_a_usage_error(tmp_path: Path,
                                                                    capsys) -> None:
    """``--feedback-path MISSING`` exited 0 with a note (every rating unjoined), and a
    misspelt file among several rotated ones was dropped without a word: both exit 2 now,
    naming the file, and write nothing. The default feedback file may still be absent."""
    log = _write(tmp_path / "routing-log.jsonl",
                 [{"request_id": f"r{i}", "tenant": "t", "ts": 1.0 + i, "endpoint": "chat",
                   "policy": "auto", "expert": "a", "status": "ok"} for i in range(2)])
    live = _write(tmp_path / "routing-log.feedback.jsonl",
                  [{"request_id": "r0", "tenant": "t", "score": 1.0, "ts": 5.0}])
    out = tmp_path / "out.parquet"
    missing = tmp_path / "nope.feedback.jsonl"
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out),
                 "--feedback-path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

    typo = tmp_path / "routing-log.feedback.jsonl.l"  # meant .1
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out),
                 "--feedback-path", str(typo), str(live)]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith(f"no such file: {typo}")
    assert not out.exists()

    assert main(["logs", "export", "--log-path", str(log), "--out", str(out),
                 "--feedback-path", str(live)]) == 0
    assert "1 rating(s) joined" in capsys.readouterr().out
    live.unlink()  # the default file, not named: a gateway with no rating yet
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    assert "no feedback file at" in capsys.readouterr().out


def test_files_named_beside_a_redis_url_are_not_dropped_silently(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """With a Redis URL the export reads the log and the ratings from Redis: --log-path and
    --feedback-path were accepted and never read. Named with --redis-url they are a usage
    error; named while the URL comes only from EXPERTGATE_REDIS_URL (the operator's shell),
    the files the user names are read."""
    log = _write(tmp_path / "routing-log.jsonl",
                 [{"request_id": "r0", "tenant": "t", "ts": 1.0, "endpoint": "chat",
                   "policy": "auto", "expert": "a", "status": "ok"}])
    out = tmp_path / "out.jsonl"
    unreachable = "redis://127.0.0.1:1/0"
    assert main(["logs", "export", "--redis-url", unreachable, "--log-path", str(log),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--log-path" in err and "--redis-url" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", unreachable)
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    assert "wrote 1 record(s)" in capsys.readouterr().out
