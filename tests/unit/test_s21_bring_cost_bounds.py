"""Costs no query has: a column of 1e300 (a pasted id, an exponent typed twice) passed every
check, the evaluation squared them into infinity, and after the whole run the result JSON
could not be written: 'error: ValueError: Out of range float values are not JSON compliant:
inf' (exit 1, nothing written). A cost above :data:`MAX_COST` per query is now an error
naming the rows, as an infinite one is, in long, wide and log tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import MAX_COST, load_table
from expertgate.cli import main
from routers.base import RouterError


def _long(tmp_path: Path, big: float) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i}",{m},{float((i + j) % 2)},{big if (i, m) == (4, "big") else c}\n'
        for i in range(30) for j, (m, c) in enumerate((("small", 1.0), ("big", 2e12)))))
    return p


def test_a_long_table_cost_past_the_bound_names_its_row(tmp_path: Path) -> None:
    with pytest.raises(RouterError) as e:
        load_table(_long(tmp_path, 3e300), "long")
    msg = str(e.value)
    assert "row 10 " in msg and "'p4'" in msg and f"{MAX_COST:g}" in msg


def test_large_but_possible_costs_still_load(tmp_path: Path) -> None:
    # two trillion a query: no price, but figures stay finite (tokens of a long log, say)
    assert load_table(_long(tmp_path, 3e12), "long").costs.max() == 3e12


def test_a_wide_table_names_the_files_row(tmp_path: Path) -> None:
    p = tmp_path / "w.csv"
    p.write_text("prompt,a,a|total_cost,b,b|total_cost\n" + "".join(
        f'"question {i}",{i % 2},{1e200 if i == 6 else 0.1},{(i + 1) % 2},0.01\n'
        for i in range(12)))
    with pytest.raises(RouterError, match=r"'a\|total_cost'.*row 7 "):
        load_table(p, "wide")


def test_a_log_export_names_the_request(tmp_path: Path) -> None:
    p = tmp_path / "logs.jsonl"
    p.write_text("".join(json.dumps({"request_id": f"r{i}", "text": f"question {i}",
                                     "expert": "ab"[i % 2], "feedback_score": 1.0,
                                     "cost_usd": 1e300 if i == 5 else 0.01}) + "\n"
                         for i in range(20)))
    with pytest.raises(RouterError, match=r"cost_usd.*r5"):
        load_table(p, "logs")


def test_eval_routing_ends_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from evals import routing_eval as RE

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("embedded a table of costs that overflow")

    monkeypatch.setattr(RE, "embed_table", refuse)
    assert main(["eval", "routing", "--data", str(_long(tmp_path, 3e300)), "--embedder",
                 "hashing", "--seeds", "1", "--quiet", "--json",
                 str(tmp_path / "r.json")]) == 2
    assert "cost" in capsys.readouterr().err
