"""``expertgate eval guard --data FOLDER``: a GQR-Bench export (docs/guard.md, Data) is read
by :func:`evals.datasets.guard.load_gqr_bench`, as the docs say it is."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.unit.test_guard_eval import _run_cli, _write_csv


def _gqr_folder(tmp_path: Path) -> Path:
    """The four frames of the ``gqr`` package as JSONL (text, domain, label[, dataset])."""
    rows = list(csv.DictReader(_write_csv(tmp_path / "g.csv").open()))
    out = tmp_path / "gqr"
    out.mkdir()
    label = {"banking": 1, "weather": 0, "music": 2}
    name = {0: "law", 1: "finance", 2: "healthcare"}
    parts: dict[str, list[dict[str, object]]] = {"train": [], "eval": [], "test": [],
                                                  "ood_test": []}
    for r in rows:
        if r["label"] in label:
            n = label[r["label"]]
            split = {"validation": "eval"}.get(r["split"], r["split"])
            parts[split].append({"text": r["text"], "domain": name[n], "label": n})
        else:
            parts["ood_test"].append({"text": r["text"], "domain": "ood", "label": 3,
                                      "dataset": "web_questions"})
    for stem, rs in parts.items():
        (out / f"{stem}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return out


def test_a_gqr_bench_export_folder_is_evaluated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --data FOLDER answered "guard table not found: FOLDER": load_gqr_bench, which the
    # docs give as the way to read GQR-Bench's data, was reachable from no command
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    folder, out = _gqr_folder(tmp_path), tmp_path / "res.json"
    assert _run_cli(["--data", str(folder), "--embedder", "hashing", "--methods",
                     "guard-knn", "--latency-sample", "0", "--quiet",
                     "--json", str(out)]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["suite"] == "gqr-bench"
    assert res["data"]["n_labels"] == 3 and res["data"]["n_test_in_domain"] == 30
    assert set(res["methods"]["guard-knn"]["ood_accuracy_by_set"]) == {"web_questions"}
    assert len(res["provenance"]["data"]) == 4  # each of the four files, hashed
    # a folder that is not such an export says what it lacks
    (folder / "eval.jsonl").unlink()
    assert _run_cli(["--data", str(folder), "--embedder", "hashing", "--quiet"]) == 2
    assert "has no eval" in capsys.readouterr().err
