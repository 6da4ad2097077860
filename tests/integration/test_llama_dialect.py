"""What every OpenAI client sends, through a real ``expertgate serve`` to real llama.cpp
experts (llama-cpp-python's server) configured with ``dialect: llama-cpp-python`` as the demo
config sets it, the OpenAI SDK as the client: each request is answered, or refused with a
clear 400 naming the field, where llama-cpp-python itself answered a 500 or ignored the
field (gateway/dialect.py). An expert left in the openai dialect on the same server still gets
llama-cpp-python's own error, without its stack frames (gateway.upstreams.error_body).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from expertgate.procs import GatewayServer, local_config
from gateway.config import load_yaml
from tests.integration.conftest import LocalExperts

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"
MAX_TOKENS = 8
SCHEMA = {"type": "object", "properties": {"team": {"type": "string"}}, "required": ["team"]}
JSON_SCHEMA = {"type": "json_schema",
               "json_schema": {"name": "team", "schema": SCHEMA, "strict": True}}
TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}
TOOLS = [{"type": "function", "function": {
    "name": "weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def gateway(llama_experts: LocalExperts, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayServer]:
    llama_experts.ensure_running()
    work = tmp_path_factory.mktemp("dialect")
    cfg = local_config(DEMO_CONFIG, work / "demo.yaml", llama_experts.ports)
    data = load_yaml(cfg.read_text(encoding="utf-8"))
    assert {e["dialect"] for e in data["experts"]} == {"llama-cpp-python"}
    # the same server, sent the client's body as it is
    data["experts"].append({"name": "smollm2-raw", "model": "smollm2", "timeout_s": 60,
                            "api_base": f"http://127.0.0.1:{llama_experts.ports['smollm2']}/v1"})
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    with GatewayServer(cfg, log_path=work / "gateway.log", routing_log=work / "log.jsonl") as gw:
        yield gw


def _chat(client: openai.OpenAI, messages: list[Any], model: str = "smollm2",
          **kw: Any) -> Any:
    kw.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(model=model, messages=messages, temperature=0.0,
                                          **kw)


def _bad_request(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as ei:
        call()
    assert ei.value.status_code == 400
    return ei.value


def test_developer_role_and_text_parts_are_answered(client: openai.OpenAI) -> None:
    out = _chat(client, [
        {"role": "developer", "content": "Answer in one short sentence."},
        {"role": "user", "content": [{"type": "text", "text": "Hi!"},
                                     {"type": "text", "text": "How are you?"}]}])
    assert out.choices[0].message.content
    # routed too: the policy's chain ends at the expert that gets the adapted body
    out = _chat(client, [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hello!"}]}],
                model="auto")
    assert out.choices[0].message.content


def test_an_image_part_is_a_400_naming_it(client: openai.OpenAI) -> None:
    err = _bad_request(lambda: _chat(client, [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]))
    body: Any = err.body
    assert body["param"] == "messages.0.content.1"
    assert "image_url" in body["message"] and "text parts only" in body["message"]


def test_the_second_turn_of_a_tool_loop_is_answered(client: openai.OpenAI) -> None:
    out = _chat(client, [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C and rain"}], tools=TOOLS)
    assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_json_schema_is_answered_under_the_schema(client: openai.OpenAI) -> None:
    out = _chat(client, [{"role": "user", "content": "Name a football team."}],
                response_format=JSON_SCHEMA, max_tokens=24)
    assert (out.choices[0].message.content or "").lstrip().startswith("{")


def test_max_completion_tokens_binds(client: openai.OpenAI) -> None:
    ask: list[Any] = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    out = client.chat.completions.create(model="smollm2", messages=ask,
                                         max_completion_tokens=5, temperature=0.0)
    assert out.usage is not None and out.usage.completion_tokens <= 5
    assert out.choices[0].finish_reason == "length"
    # the demo's auto policy caps both names at 64: the cap now binds on llama.cpp too
    routed = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Give me ten tips for a good "
                                 "night's sleep, each explained in a paragraph."}],
        max_completion_tokens=4000, temperature=0.0)
    assert routed.usage is not None and routed.usage.completion_tokens <= 64


def test_a_stream_is_adapted_too(client: openai.OpenAI) -> None:
    chunks = _chat(client, [{"role": "developer", "content": "Be brief."},
                            {"role": "user", "content": [{"type": "text", "text": "Hi!"}]}],
                   stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_more_than_one_choice_is_a_400(client: openai.OpenAI) -> None:
    err = _bad_request(lambda: _chat(client, [{"role": "user", "content": "hi"}], n=2))
    body: Any = err.body
    assert body["param"] == "n" and body["code"] == "unsupported_parameter"


def test_a_list_prompt_of_one_text_is_answered_and_a_batch_is_a_400(client: openai.OpenAI
                                                                    ) -> None:
    out = client.completions.create(model="gemma3", prompt=["Once upon a time"],
                                    max_tokens=MAX_TOKENS, temperature=0.0)
    assert len(out.choices) == 1 and out.choices[0].text
    err = _bad_request(lambda: client.completions.create(
        model="gemma3", prompt=["Once upon a time", "In a galaxy"], max_tokens=MAX_TOKENS))
    body: Any = err.body
    assert body["param"] == "prompt" and "batch of 2 texts" in body["message"]


def test_an_unadapted_experts_error_has_no_stack_trace(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as ei:
        _chat(client, [{"role": "user", "content": "Name a team."}], model="smollm2-raw",
              response_format=JSON_SCHEMA)
    body: Any = ei.value.body
    message = body["message"]
    assert "json_schema" in message  # llama-cpp-python's own words stay
    assert 'File "' not in message and "llama_cpp" not in message and ".py" not in message
