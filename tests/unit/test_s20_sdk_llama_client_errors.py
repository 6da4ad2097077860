"""The client's own mistakes that a llama-cpp-python expert answered with a 500
(``internal_server_error``, which the OpenAI SDK raises as InternalServerError, as if the
server had failed), where OpenAI and vLLM answer a 400 naming the field: a
``response_format`` type it does not know (its pydantic error, 500), a ``tool`` message
without ``tool_call_id`` (six validation errors, 500), a ``logit_bias`` key that is no token
id ("invalid literal for int() with base 10", 500). The dialect refuses them as the client's
400 (``invalid_request``, not ``unsupported_parameter``: no other expert serves them either),
nothing sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.dialect import adapt
from gateway.errors import InvalidRequest, UnsupportedByExpert
from tests.unit.gateway_helpers import coder_cfg, gateway_client

MSGS: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {}}, "response_format.type"),
    ({"messages": [*MSGS, {"role": "tool", "content": "18C"}]}, "messages.1.tool_call_id"),
    ({"messages": [*MSGS, {"role": "tool", "content": "18C", "tool_call_id": 3}]},
     "messages.1.tool_call_id"),
    ({"logit_bias": {"abc": 5}}, "logit_bias"),
    ({"logit_bias": {"12": "x"}}, "logit_bias"),
    ({"logit_bias": []}, "logit_bias"),
])
def test_the_clients_mistake_is_a_400_naming_the_field(fields: dict[str, Any], param: str
                                                        ) -> None:
    with pytest.raises(InvalidRequest) as ei:
        adapt({"model": "m", "messages": MSGS, **fields}, "llama-cpp-python", "m")
    assert ei.value.status == 400 and ei.value.param == param
    assert not isinstance(ei.value, UnsupportedByExpert)


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}},
    {"response_format": None},
    {"messages": [*MSGS, {"role": "tool", "content": "18C", "tool_call_id": "call_1"}]},
    {"logit_bias": {"12": -100, "7": 2.5}}, {"logit_bias": None},
])
def test_what_it_reads_passes(fields: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSGS, **fields}
    # a null is the default: left out (tests/unit/test_s20_sdk_llama_request_shapes.py)
    assert adapt(body, "llama-cpp-python", "m") == {k: v for k, v in body.items()
                                                    if v is not None}


async def test_nothing_is_sent_and_the_client_gets_the_400(ups: Any, tmp_path: Path) -> None:
    coder, chatter = ups
    cfg = coder_cfg(coder.base, chatter.base, dialect="llama-cpp-python")
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json={
            "model": "coder", "messages": MSGS, "logit_bias": {"abc": 5}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert coder.received == []
