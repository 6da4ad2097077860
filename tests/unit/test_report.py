"""``expertgate eval report``: Markdown, PNGs and figures.json from routing and guard JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from evals import report as R
from evals import routing_eval as RE
from routers.base import RoutingTable


def _routing_run(two: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 80
    models = ["strong", "weak"] if two else ["a", "b", "c"]
    scores = (rng.uniform(size=(n, len(models))) < np.linspace(0.8, 0.3, len(models))
              ).astype(float)
    costs = np.tile(np.linspace(10.0, 1.0, len(models)), (n, 1))
    table = RoutingTable([str(i) for i in range(n)], [f"q{i}" for i in range(n)], models,
                         scores, costs, ["x" if i % 2 else "y" for i in range(n)])
    X = rng.normal(size=(n, 8)).astype(np.float32)
    res = RE.evaluate(table, X, routers=["knn"], seeds=[0, 1], progress=False)
    return {"data": "synthetic.csv", "command": "expertgate eval routing --data synthetic.csv",
            "embedder": "test", **res}


GUARD = {"suite": "clinc150", "command": "expertgate eval guard --suite clinc150", "seed": 0,
         "methods": {"knn": {"in_domain_accuracy": 0.9, "ood_accuracy": 0.8,
                             "ood_accuracy_by_set": {"webq": 0.8}, "gqr_score": 0.85,
                             "false_rejection_rate": 0.05, "latency_p50_ms": 1.0,
                             "latency_p99_ms": 2.0,
                             "score_histogram": {"edges": [0, 0.5, 1], "in_domain": [9, 1],
                                                 "ood": [2, 8]}}}}


def test_report_renders_routing_and_guard_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "two.json").write_text(json.dumps(_routing_run(True)))
    (runs / "three.json").write_text(json.dumps(_routing_run(False)))
    (runs / "guard.json").write_text(json.dumps(GUARD))
    (runs / "other.json").write_text(json.dumps({"hello": 1}))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(["--runs", str(runs), "--out", str(out), "--docs"])
    assert args.func(args) == 0
    md = (out / "report.md").read_text()
    assert "expertgate eval routing --data synthetic.csv" in md
    assert "expertgate eval guard --suite clinc150" in md
    assert "| knn |" in md and "*oracle* (baseline)" in md
    for png in ("two-deferral.png", "two-pareto.png", "three-pareto.png",
                "guard-guard-hist.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert not (out / "three-deferral.png").exists()  # N experts: no RouteLLM curve
    figs = json.loads((out / "figures.json").read_text())
    assert set(figs["two-deferral.png"]) >= {"knn", "random", "oracle"}
    assert figs["guard.table"]["knn"]["ood:webq"] == 0.8


def test_report_without_runs_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        R.write_report(tmp_path / "nothing", tmp_path / "out")
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(["--runs", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert args.func(args) == 2


def test_every_generated_figure_block_in_the_docs_is_up_to_date(monkeypatch) -> None:
    """README and docs/ carry no hand-typed figure tables: each generated block equals what
    `expertgate eval report` renders from the committed run JSON it names."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert R.update_docs(R.DEFAULT_DOCS, check=True) == []
