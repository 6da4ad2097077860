"""Candidates tied on validation: the selection goes to a servable guard, not a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.guard_eval import select_candidate
from tests.unit.test_guard_eval import _run_cli, _write_csv


def _val(gqr: float, idacc: float = 1.0, ood: float = 1.0) -> dict[str, float]:
    return {"gqr_score": gqr, "in_domain_accuracy": idacc, "ood_accuracy": ood}


@pytest.mark.parametrize("spec", ["gqr", "in_domain_accuracy@ood_accuracy>=0.8"])
def test_a_tie_goes_to_a_guard_before_the_baselines(spec: str) -> None:
    # the default method order puts baseline-tfidf-svm first, and ties went to the first
    # given: on a small validation set where every candidate scored 1.0 the TF-IDF baseline
    # was selected, which the gateway cannot serve (--save-selected: exit 1)
    val = {"baseline-tfidf-svm": _val(1.0), "baseline-lr-knn": _val(1.0),
           "guard-knn": _val(1.0), "guard-mahalanobis": _val(1.0)}
    assert select_candidate(val, spec)["method"] == "guard-knn"
    del val["guard-knn"], val["guard-mahalanobis"]
    assert select_candidate(val, spec)["method"] == "baseline-lr-knn"


def test_the_tie_break_reads_variant_and_operating_point_names() -> None:
    val = {"frozen:baseline-tfidf-svm@0.05": _val(0.9), "frozen:guard-fused@0.05": _val(0.9),
           "finetuned-e2:guard-knn@0.02": _val(0.8)}
    assert select_candidate(val, "gqr")["method"] == "frozen:guard-fused@0.05"


def test_a_better_baseline_is_still_selected() -> None:
    val = {"guard-knn": _val(0.7), "baseline-tfidf-svm": _val(0.71)}
    assert select_candidate(val, "gqr")["method"] == "baseline-tfidf-svm"


def test_a_tied_run_saves_a_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "res.json"
    rc = _run_cli(["--data", str(_write_csv(tmp_path / "g.csv")), "--json", str(out),
                   "--embedder", "hashing", "--methods", "baseline-tfidf-svm,guard-knn",
                   "--latency-sample", "0", "--quiet", "--save-selected",
                   str(tmp_path / "sel")])
    res = json.loads(out.read_text())
    v = {k: r["validation"]["gqr_score"] for k, r in res["methods"].items()}
    assert v["baseline-tfidf-svm"] == v["guard-knn"]  # this small set ties them
    assert rc == 0 and res["selected"]["method"] == "guard-knn"
    assert res["selected"]["saved"]["path"] == str(tmp_path / "sel")
