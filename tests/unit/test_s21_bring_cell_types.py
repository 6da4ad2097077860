"""A JSONL (or LLMRouter JSON) table whose cells are not plain values: a prompt given as a
list of turns, an object where a model name should be, a prompt id written as a list.

A list or object prompt ended ``eval routing`` with 'error: TypeError: unhashable type:
'list'' (exit 1, the crash path) and ``train`` with the same words; a prompt id written as
``["x"]`` became the new prompt ``"['x']"`` without a word. A prompt that is a list of texts
is now the turns joined by blank lines (as a wide table's is); any other list or object in
the prompt, prompt_id, model or category is an error naming the rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evals.datasets.routing import load_table
from expertgate.cli import main
from routers.base import RouterError


def _write(tmp_path: Path, edit: dict[str, Any] | None = None, rows: int = 2,
           name: str = "t.jsonl") -> Path:
    recs = [{"prompt_id": f"p{i}", "prompt": f"question {i}", "model": m, "score": 1.0,
             "cost": c, "category": "math"}
            for i in range(12) for m, c in (("small", 0.1), ("big", 1.0))]
    for r in recs[:rows]:
        r.update(edit or {})
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def test_a_prompt_of_turns_is_its_turns_joined(tmp_path: Path) -> None:
    t = load_table(_write(tmp_path, {"prompt": ["write a poem", "now shorter"]}), "long")
    assert t.prompts[0] == "write a poem\n\nnow shorter" and len(t) == 12


@pytest.mark.parametrize(("edit", "column"), [
    ({"prompt": {"role": "user", "content": "hi"}}, "prompt"),
    ({"prompt": ["a turn", {"role": "user"}]}, "prompt"),
    ({"model": ["small"]}, "model"),
    ({"prompt_id": ["p0"]}, "prompt_id"),
    ({"category": ["math"]}, "category"),
])
def test_a_list_or_object_cell_is_named(tmp_path: Path, edit: dict[str, Any], column: str
                                        ) -> None:
    with pytest.raises(RouterError) as e:
        load_table(_write(tmp_path, edit), "long")
    msg = str(e.value)
    assert f"{column} must be" in msg and "rows 1 " in msg and "unhashable" not in msg


def test_llmrouter_queries_of_turns_load(tmp_path: Path) -> None:
    p = tmp_path / "nq.json"
    p.write_text(json.dumps([{"query": [f"turn {i}", "and more"], "llm_name_list": ["a", "b"],
                              "perf_list": [1, 0], "cost_list": [1, 0.1]}
                             for i in range(12)]))
    assert load_table(p, "llmrouter").prompts[3] == "turn 3\n\nand more"


def test_the_commands_end_with_exit_2(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    p = _write(tmp_path, {"model": {"name": "small"}})
    assert main(["eval", "routing", "--data", str(p), "--embedder", "hashing", "--seeds",
                 "1", "--quiet"]) == 2
    assert main(["train", "--router", "knn", "--data", str(p), "--embedder", "hashing",
                 "--out", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert err.count("model must be") == 2 and "TypeError" not in err
