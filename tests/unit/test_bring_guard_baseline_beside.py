"""``selected.baseline``: the TF-IDF + SVM baseline's figures beside the selected guard's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_guard_eval import _run_cli, _write_csv


def test_selected_names_the_tfidf_baseline_at_its_operating_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a checker reading only `selected` had its method and validation score, but to compare
    # it with the TF-IDF + SVM baseline had to find the baseline's row among the methods
    # (named baseline-tfidf-svm@0.02 or frozen:baseline-tfidf-svm@0.05 in other runs)
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res.json"
    assert _run_cli(["--data", str(_write_csv(tmp_path / "g.csv")), "--json", str(out),
                     "--embedder", "hashing", "--methods", "baseline-tfidf-svm,guard-knn",
                     "--target-frr", "0.05,0.2", "--latency-sample", "0", "--quiet"]) == 0
    res = json.loads(out.read_text())
    sel = res["selected"]
    pick = res["methods"][sel["method"]]
    base = sel["baseline"]
    frr = pick["target_frr"]
    assert base["method"] == f"baseline-tfidf-svm@{frr:g}"
    row = res["methods"][base["method"]]
    assert base["validation_gqr_score"] == row["validation"]["gqr_score"]
    assert base["selected_validation_gqr_score"] == pick["validation"]["gqr_score"]
    assert base["validation_gqr_diff"] == pytest.approx(
        pick["validation"]["gqr_score"] - row["validation"]["gqr_score"])
    assert base["test_gqr_score"] == row["gqr_score"]
    assert base["selected_test_gqr_score"] == pick["gqr_score"]


def test_no_baseline_entry_without_the_baseline(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res.json"
    assert _run_cli(["--data", str(_write_csv(tmp_path / "g.csv")), "--json", str(out),
                     "--embedder", "hashing", "--methods", "guard-knn,guard-mahalanobis",
                     "--latency-sample", "0", "--quiet"]) == 0
    assert "baseline" not in json.loads(out.read_text())["selected"]
