"""The lora family in the routing evaluation: ``eval routing --routers lora --params
'{"lora": {"base_model": "base"}}'`` said 'lora was not evaluated: RouterError: router 'lora':
predict_quality gave shape (n, 3)' and exited 1: its predict_quality scores the adapters
while the evaluation lined the columns up with experts_, which also names the base model.
Every caller now lines them up with Router.quality_experts() (lora: its adapters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from expertgate.cli import main
from routers.base import RoutingTable, make_router
from routers.embed import HashingEmbedder


def _table() -> RoutingTable:
    prompts = [f"question {i} about {'maths' if i % 2 else 'poems'} number {i * 7}"
               for i in range(40)]
    S = np.array([[i % 2, (i + 1) % 2, float(i % 3 == 0)] for i in range(40)], dtype=float)
    C = np.tile([0.1, 0.01, 0.05], (40, 1))
    return RoutingTable([str(i) for i in range(40)], prompts, ["maths-lora", "poems-lora",
                                                               "other-lora"], S, C)


def test_predict_quality_names_the_experts_its_columns_follow() -> None:
    t = _table()
    X = HashingEmbedder().embed(t.prompts)
    r = make_router("lora", base_model="base").fit(X, t)
    Q = r.predict_quality(X[:5], t.prompts[:5])
    assert r.experts_ == ["maths-lora", "poems-lora", "other-lora", "base"]
    assert r.quality_experts() == ["maths-lora", "poems-lora", "other-lora"]
    assert Q.shape == (5, 3)
    knn = make_router("knn").fit(X, t)
    assert knn.quality_experts() == knn.experts_


def test_eval_routing_evaluates_the_lora_family(tmp_path: Path, capsys) -> None:
    t = _table()
    data = tmp_path / "t.csv"
    data.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{t.prompt_ids[i]},"{t.prompts[i]}",{m},{t.scores[i, j]},{t.costs[i, j]}\n'
        for i in range(len(t)) for j, m in enumerate(t.models)))
    out = tmp_path / "ev.json"
    rc = main(["eval", "routing", "--data", str(data), "--routers", "lora", "--params",
               json.dumps({"lora": {"base_model": "base"}}), "--seeds", "1", "--embedder",
               "hashing", "--quiet", "--cache-dir", str(tmp_path / "c"), "--json", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "not evaluated" not in err
    assert "lora" in json.loads(out.read_text())["routers"]
