"""An assistant turn whose content parts hold a ``refusal`` part (OpenAI's assistant
content: ``text`` and ``refusal`` parts), replayed in a conversation to a llama-cpp-python
expert: a 400 ("a 'refusal' part; it reads text parts only") where OpenAI and vLLM read the
refusal as the turn's text. The dialect joins it as text."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialect import adapt
from gateway.errors import InvalidRequest


def _assistant(parts: list[Any]) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": parts},
                                       {"role": "user", "content": "why?"}]}


def test_a_refusal_part_is_read_as_the_turns_text() -> None:
    body = _assistant([{"type": "text", "text": "Well."},
                       {"type": "refusal", "refusal": "I can't help with that."}])
    out = adapt(body, "llama-cpp-python", "m")
    assert out["messages"][1] == {"role": "assistant",
                                  "content": "Well.\nI can't help with that."}
    assert body["messages"][1]["content"][1]["type"] == "refusal"  # the client's, unchanged


def test_a_refusal_part_without_its_string_is_the_clients_400() -> None:
    with pytest.raises(InvalidRequest) as ei:
        adapt(_assistant([{"type": "refusal", "refusal": 3}]), "llama-cpp-python", "m")
    assert ei.value.status == 400 and ei.value.param == "messages.1.content.0.refusal"
