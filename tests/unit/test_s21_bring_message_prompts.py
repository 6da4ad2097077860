"""A prompt given as chat messages (``[{"role": "user", "content": "..."}]``, the OpenAI shape
a user's own logs hold): a wide table embedded each message's Python repr ("{'role': 'user',
'content': ...}"), the router learning from the key names as much as the text, and a long
table refused it. Both now read the messages' contents, joined by blank lines as turns are;
a message without text content is an error naming the rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from routers.base import RouterError

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 2+2"}]


def test_a_wide_table_reads_the_contents(tmp_path: Path) -> None:
    p = tmp_path / "w.json"
    p.write_text(json.dumps([{"prompt": MSGS if i == 0 else f"question {i}", "a": i % 2,
                              "a|total_cost": 0.1, "b": 1, "b|total_cost": 1.0}
                             for i in range(12)]))
    assert load_table(p, "wide").prompts[0] == "be brief\n\nwhat is 2+2"


def test_a_long_table_reads_the_contents(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": MSGS if i == 0 else
                                     f"question {i}", "model": m, "score": 1, "cost": c}) + "\n"
                         for i in range(12) for m, c in (("a", 0.1), ("b", 1.0))))
    assert load_table(p, "long").prompts[0] == "be brief\n\nwhat is 2+2"


def test_a_message_without_text_is_named(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    p.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": bad if i == 0 else
                                     f"question {i}", "model": m, "score": 1, "cost": c}) + "\n"
                         for i in range(12) for m, c in (("a", 0.1), ("b", 1.0))))
    with pytest.raises(RouterError, match=r"prompt must be .* in rows 1 "):
        load_table(p, "long")
