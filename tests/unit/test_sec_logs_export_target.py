"""``expertgate logs export --out`` naming the routing log it reads (or its ratings file):
the export was renamed over it, so a live gateway went on writing into the old, unlinked
file (its records lost) and the log became an export. Refused, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertgate.cli import main as cli


def _log(tmp_path: Path) -> Path:
    log = tmp_path / "routing-log.jsonl"
    log.write_text(json.dumps({"request_id": "a" * 48, "ts": 1.0, "tenant": "t",
                               "endpoint": "chat", "status": "ok"}) + "\n")
    (tmp_path / "routing-log.feedback.jsonl").write_text(
        json.dumps({"request_id": "a" * 48, "score": 1.0}) + "\n")
    return log


@pytest.mark.parametrize("target", ["routing-log.jsonl", "routing-log.feedback.jsonl",
                                    "./sub/../routing-log.jsonl"])
def test_export_refuses_to_write_over_a_file_it_reads(tmp_path: Path, target: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    log = _log(tmp_path)
    (tmp_path / "sub").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")}
    out = tmp_path / target
    rc = cli(["logs", "export", "--log-path", str(log), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "is a file the export reads" in err
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.jsonl")} == before


def test_export_to_another_file_still_works(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path)
    assert cli(["logs", "export", "--log-path", str(log),
                "--out", str(tmp_path / "export.jsonl")]) == 0, capsys.readouterr().err
    assert "wrote 1 record(s)" in capsys.readouterr().out
