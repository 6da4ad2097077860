"""A checker's own table without a category column (a 2-model strong/weak table, an
11-model table without eval_name), run with the default routers: every run ended in
'warning: category was not evaluated: RouterError: category router needs a 'category'
column' and listed it under 'skipped', as if something had failed, for a family the table
could never run. The defaults leave it out on such a table, said once on stderr
(check_table's note) and under 'left_out' in the result; named in --routers, it is still
tried and reported as skipped."""

from __future__ import annotations

from evals import routing_eval as RE
from routers.base import RoutingTable


def _plain(n: int = 300) -> RoutingTable:
    t = RE.load_routing_table(f"synthetic:{n}x2")
    return RoutingTable(t.prompt_ids, t.prompts, t.models, t.scores, t.costs, None)


def test_defaults_leave_out_the_category_family_on_a_table_without_categories() -> None:
    from routers.embed import make_embedder

    table = _plain()
    notes = RE.check_table(table)
    assert any("category" in n and "left out" in n for n in notes)
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, seeds=[0], progress=False, refit="never")
    assert "category" not in res["skipped"] and "category" not in res["routers"]
    assert "category column" in res["left_out"]["category"]
    assert res["selected"]["method"] in res["routers"]


def test_named_it_is_still_tried() -> None:
    from routers.embed import make_embedder

    table = _plain()
    assert not any("left out" in n for n in RE.check_table(table, routers=["category", "knn"]))
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["category", "knn"], seeds=[0], progress=False,
                      refit="never")
    assert "category" in res["skipped"] and res["left_out"] == {}


def test_a_table_with_categories_runs_it_by_default() -> None:
    table = RE.load_routing_table("synthetic:300x2")
    assert table.categories is not None
    assert "category" in RE.default_routers_for(table)
