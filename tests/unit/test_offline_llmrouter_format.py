"""``--format llmrouter`` on a file that is not LLMRouter's array of queries: an entry without
llm_name_list ended in 'KeyError: 'llm_name_list'' (exit 1, the crash path), an object or an
array of numbers in 'TypeError: string indices must be integers' naming nothing of the format,
and a score outside [0, 1] or a missing cost was read as given (the long format's checks never
ran). Each is now one line naming the file, the entry and what the format needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_llmrouter
from routers.base import RouterError


def _entry(i: int, **kw: object) -> dict:
    return {"q_id": i, "query": f"question {i}", "llm_name_list": ["a", "b"],
            "perf_list": [i % 2, (i + 1) % 2], "cost_list": [0.1, 0.01], **kw}


@pytest.mark.parametrize("doc,says", [
    ({"a": 1}, "JSON array"),
    ([1, 2], "entry 0 is not an object"),
    ([_entry(0), {"query": "hi"}], "entry 1 lacks llm_name_list, perf_list, cost_list"),
    ([_entry(0, perf_list=[2, 0])], "scores must lie in [0, 1]"),
    ([_entry(0, cost_list=[None, 0.1])], "cost"),
    ([_entry(0, perf_list="ab")], "entry 0: llm_name_list, perf_list and cost_list"),
])
def test_a_file_that_is_not_llmrouters_is_named(tmp_path: Path, doc: object, says: str) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(RouterError) as e:
        load_llmrouter(p)
    assert str(p) in str(e.value) and says in str(e.value)


def test_llmrouters_own_shape_loads(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text(json.dumps([_entry(i) for i in range(4)]))
    t = load_llmrouter(p)
    assert len(t) == 4 and t.models == ["a", "b"]
