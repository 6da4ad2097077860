"""A table where one model is at least as good as every other on every prompt and no dearer
(a free local model that answers everything, a table whose cost column was filled for the
wrong model): no router can beat calling it alone. ``eval routing`` ran, every method scored
AIQ 1.0, 'knn' was selected by the order of a tie, and ``selected.vs_simple`` was null and
every 'cost at the best single model's quality' figure null (in units of a free model's
cost), with nothing said. It now says so before the embedding."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals import routing_eval as RE
from evals.datasets.routing import load_table


def _table(tmp_path: Path, big_cost: float) -> Path:
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i}",{m},{s},{c}\n' for i in range(40) for m, s, c in (
            ("small", float(i % 2), 0.001), ("mid", float(i % 3 == 0), 0.01),
            ("big", 1.0, big_cost))))
    return p


def test_a_model_best_everywhere_and_cheapest_is_said(tmp_path: Path) -> None:
    notes = RE.check_table(load_table(_table(tmp_path, 0.0), "long"))
    said = [n for n in notes if "'big'" in n]
    assert len(said) == 1 and "every prompt" in said[0] and "no router can" in said[0]


def test_a_best_model_that_costs_more_is_routing_as_usual(tmp_path: Path) -> None:
    notes = RE.check_table(load_table(_table(tmp_path, 0.1), "long"))
    assert not any("no router can" in n for n in notes)


def test_the_command_prints_the_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    from expertgate.cli import main

    assert main(["eval", "routing", "--data", str(_table(tmp_path, 0.0)), "--embedder",
                 "hashing", "--seeds", "1", "--routers", "knn", "--quiet"]) == 0
    assert "note: 'big'" in capsys.readouterr().err
