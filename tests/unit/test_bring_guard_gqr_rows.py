"""A GQR-Bench export folder with a row the loader cannot read: one line naming the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_guard_eval import _run_cli


def _folder(root: Path, bad: dict[str, Any]) -> Path:
    def write(name: str, rows: list[dict[str, Any]]) -> None:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("train.jsonl", [{"text": f"law question {i}", "label": 0} for i in range(12)]
          + [{"text": f"money question {i}", "label": 1} for i in range(12)] + [bad])
    write("eval.jsonl", [{"text": f"law check {i}", "label": i % 2} for i in range(6)])
    write("test.jsonl", [{"text": f"law test {i}", "label": i % 2} for i in range(6)])
    write("ood_test.jsonl", [{"text": f"pizza {i}", "label": 3, "dataset": "web_questions"}
                             for i in range(4)])
    return root


@pytest.mark.parametrize(("bad", "says"), [
    # a domain GQR-Bench has no integer for: "error: KeyError: 7" on the crash path (exit 1)
    ({"text": "a tax question", "label": 7}, "row 25 has no domain and label 7"),
    # "invalid literal for int() with base 10: 'tax'", naming no file or row
    ({"text": "a tax question", "label": "tax"}, "row 25 has no domain and label 'tax'"),
    # "error: KeyError: 'text'" on the crash path
    ({"label": 1}, "row 25 has no text"),
])
def test_an_unreadable_row_is_named(bad: dict[str, Any], says: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path, bad)
    assert _run_cli(["--data", str(folder), "--embedder", "hashing", "--latency-sample", "0",
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'train.jsonl'}: {says}" in err
    assert "KeyError" not in err and "invalid literal" not in err


def test_a_domain_column_names_other_domains(tmp_path: Path) -> None:
    from evals.datasets.guard import load_gqr_bench

    d = load_gqr_bench(_folder(tmp_path, {"text": "a tax question", "label": 7,
                                          "domain": "tax"}))
    assert d.labels == ["finance", "law", "tax"]
