"""The request rewrite for an expert's server dialect (gateway/dialect.py) and where it
happens: once per request and expert, when the dispatch stage builds that expert's bytes."""

from __future__ import annotations

import copy
from typing import Any, get_args

import orjson
import pytest
from pydantic import ValidationError

from gateway.config import ExpertConfig
from gateway.dialect import DIALECTS, Dialect, adapt
from gateway.errors import InvalidRequest
from gateway.request.dispatch import _body_for

LLAMA = "llama-cpp-python"

TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}


def _llama(payload: dict[str, Any]) -> dict[str, Any]:
    before = copy.deepcopy(payload)
    out = adapt(payload, LLAMA, "smollm2")
    assert payload == before, "the client's body must stay as it was (other experts get it)"
    return out


def _refused(payload: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as ei:
        adapt(payload, LLAMA, "smollm2")
    assert ei.value.status == 400
    assert "smollm2" in ei.value.message
    return ei.value


def test_every_dialect_but_openai_has_an_adapter() -> None:
    assert set(get_args(Dialect)) == {"openai", *DIALECTS}


def test_the_openai_dialect_sends_the_body_as_it_is() -> None:
    body = {"model": "m", "n": 3, "messages": [{"role": "developer", "content": [
        {"type": "image_url", "image_url": {"url": "data:,"}}]}]}
    assert adapt(body, "openai", "m") is body


def test_developer_becomes_system_and_text_parts_become_one_string() -> None:
    out = _llama({"model": "m", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                     {"type": "text", "text": "there"}], "name": "ann"}]})
    assert out["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi\nthere", "name": "ann"}]


def test_a_tool_loops_second_turn_gets_empty_content_for_null() -> None:
    out = _llama({"model": "m", "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}]})
    assert out["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}
    assert out["messages"][2]["content"] == "12 C"


def test_messages_that_need_nothing_are_not_copied() -> None:
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert _llama({"model": "m", "messages": msgs})["messages"] is msgs


@pytest.mark.parametrize("part,kind", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "'image_url'"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
     "'input_audio'"),
    ("text", "not text"),
])
def test_a_part_that_is_not_text_is_a_400_naming_it(part: Any, kind: str) -> None:
    err = _refused({"model": "m", "messages": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]})
    assert err.param == "messages.1.content.1"
    assert kind in err.message and "text parts only" in err.message


def test_json_schema_becomes_json_object_with_its_schema() -> None:
    schema = {"type": "object", "properties": {"team": {"type": "string"}},
              "required": ["team"]}
    out = _llama({"model": "m", "messages": [{"role": "user", "content": "x"}],
                  "response_format": {"type": "json_schema", "json_schema": {
                      "name": "team", "schema": schema, "strict": True}}})
    assert out["response_format"] == {"type": "json_object", "schema": schema}
    out = _llama({"model": "m", "messages": [{"role": "user", "content": "x"}],
                  "response_format": {"type": "json_schema", "json_schema": {"name": "t"}}})
    assert out["response_format"] == {"type": "json_object"}
    kept = {"type": "json_object"}
    assert _llama({"model": "m", "response_format": kept})["response_format"] is kept
    with pytest.raises(InvalidRequest) as ei:
        adapt({"model": "m", "response_format": {"type": "json_schema"}}, LLAMA, "smollm2")
    assert ei.value.param == "response_format.json_schema"


@pytest.mark.parametrize("given,sent", [
    ({"max_completion_tokens": 5}, {"max_tokens": 5}),
    # the newer name counts, as vLLM reads the two (a policy's cap has bound both)
    ({"max_completion_tokens": 5, "max_tokens": 64}, {"max_tokens": 5}),
    ({"max_completion_tokens": None, "max_tokens": 64}, {"max_tokens": 64}),
    ({"max_tokens": 7}, {"max_tokens": 7}),
])
def test_max_completion_tokens_is_sent_as_max_tokens(given: dict[str, Any],
                                                     sent: dict[str, Any]) -> None:
    out = _llama({"model": "m", "messages": [{"role": "user", "content": "x"}], **given})
    assert {k: v for k, v in out.items() if k.startswith("max_")} == sent


def test_more_than_one_choice_is_a_400() -> None:
    err = _refused({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]})
    assert err.param == "n" and err.code == "unsupported_parameter"
    assert _llama({"model": "m", "n": 1, "prompt": "x"})["n"] == 1


def test_a_list_prompt_of_one_text_is_that_text_and_a_batch_is_a_400() -> None:
    assert _llama({"model": "m", "prompt": ["Once upon a time"]})["prompt"] == \
        "Once upon a time"
    assert _llama({"model": "m", "prompt": "Once"})["prompt"] == "Once"
    for prompt, what in ((["a", "b"], "batch of 2 texts"), ([1, 2, 3], "token ids"),
                         ([[1, 2]], "token ids")):
        err = _refused({"model": "m", "prompt": prompt})
        assert err.param == "prompt" and what in err.message


def test_the_expert_setting_and_its_check() -> None:
    e = ExpertConfig.model_validate({"name": "smollm2", "api_base": "http://127.0.0.1:1/v1",
                                     "dialect": LLAMA})
    assert e.dialect == LLAMA
    assert ExpertConfig.model_validate({"name": "v", "api_base": "http://h/v1"}).dialect == \
        "openai"
    with pytest.raises(ValidationError, match="dialect"):
        ExpertConfig.model_validate({"name": "x", "api_base": "http://h/v1",
                                     "dialect": "llama.cpp"})
    with pytest.raises(ValidationError, match="dialect applies to kind: openai"):
        ExpertConfig.model_validate({"name": "x", "kind": "litellm", "model": "openai/x",
                                     "dialect": LLAMA})


def test_the_body_for_an_expert_is_adapted_once_and_others_get_the_clients_bytes() -> None:
    payload = {"model": "auto", "max_completion_tokens": 9,
               "messages": [{"role": "developer", "content": "Be brief."},
                            {"role": "user", "content": "Hi"}]}
    llama = ExpertConfig.model_validate({"name": "smollm2", "api_base": "http://h:1/v1",
                                         "dialect": LLAMA})
    vllm = ExpertConfig.model_validate({"name": "auto", "api_base": "http://h:2/v1"})
    raw = orjson.dumps(payload)
    body_for = _body_for(payload, raw, "auto")
    sent = body_for(llama)
    assert body_for(llama) is sent  # built once per request
    assert orjson.loads(sent) == {"model": "smollm2", "max_tokens": 9, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert body_for(vllm) is raw  # an openai-dialect expert: the client's own bytes
