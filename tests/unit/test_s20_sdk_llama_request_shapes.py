"""Valid OpenAI chat requests that a llama-cpp-python expert answered with a 500, and the
client's mistakes it answered with a 500 instead of OpenAI's 400 (each seen against the
demo's real llama.cpp server, its message quoted):

- ``temperature: null`` / ``top_p: null`` (null is the default in OpenAI's API; clients
  write every field): "Input should be a valid number";
- a function tool without ``parameters`` (optional in OpenAI's API: no parameters):
  "Field required";
- an assistant turn without ``content`` (its ``tool_calls`` or ``audio`` say it all): its
  chat template failed, "'dict object' has no attribute 'content'";
- a tool that is not a function (OpenAI's ``custom`` tools): two validation errors; it is
  what the server cannot carry, so the chain's next expert may;
- the client's own: a user message without ``content``, an assistant tool call whose
  ``arguments`` are not a string: a 400 naming the field, as OpenAI answers.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.dialect import adapt
from gateway.errors import InvalidRequest, UnsupportedByExpert

USER: list[Any] = [{"role": "user", "content": "hi"}]
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
EMPTY = {"type": "object", "properties": {}}


def _llama(**body: Any) -> dict[str, Any]:
    return adapt({"model": "m", "messages": USER, **body}, "llama-cpp-python", "m")


def test_null_fields_are_left_out_as_the_defaults_they_are() -> None:
    out = _llama(temperature=None, top_p=None, n=None, seed=None, stop=None, tools=None,
                 max_tokens=5)
    assert out == {"model": "m", "messages": USER, "max_tokens": 5}


def test_a_function_without_parameters_takes_none() -> None:
    tools = [{"type": "function", "function": {"name": "f"}},
             {"type": "function", "function": {"name": "g", "parameters": EMPTY | {
                 "required": []}}}]
    out = _llama(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}})
    assert out["tools"] == [{"type": "function", "function": {"name": "f",
                                                              "parameters": EMPTY}},
                            tools[1]]
    assert "parameters" not in tools[0]["function"]  # the client's, unchanged


@pytest.mark.parametrize("turn", [
    {"role": "assistant", "tool_calls": [CALL]},
    {"role": "assistant", "audio": {"id": "audio_1"}},
    {"role": "assistant"},
])
def test_an_assistant_turn_without_content_gets_an_empty_one(turn: dict[str, Any]) -> None:
    out = _llama(messages=[*USER, turn, {"role": "user", "content": "again"}])
    assert out["messages"][1] == {**turn, "content": ""}


def test_a_tool_that_is_no_function_is_what_it_cannot_carry() -> None:
    with pytest.raises(UnsupportedByExpert) as ei:
        _llama(tools=[{"type": "custom", "custom": {"name": "x"}}])
    assert ei.value.param == "tools.0.type"


@pytest.mark.parametrize(("messages", "param"), [
    ([{"role": "user"}], "messages.0.content"),
    ([{"role": "system", "content": "be brief"}, {"role": "user"}], "messages.1.content"),
    ([*USER, {"role": "assistant", "content": None, "tool_calls": [
        {**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]}],
     "messages.1.tool_calls.0.function.arguments"),
])
def test_the_clients_mistake_is_its_400(messages: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        _llama(messages=messages)
    assert ei.value.param == param and not isinstance(ei.value, UnsupportedByExpert)
