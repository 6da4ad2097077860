"""``logprobs: true`` without ``top_logprobs`` to a llama-cpp-python expert.

llama-cpp-python (0.3) computes a chat answer's logprobs only when ``top_logprobs`` is given
(``logprobs=top_logprobs if logprobs else None``): the OpenAI SDK's
``create(logprobs=True)``, the usual way to ask for the tokens' log probabilities, was
answered ``"logprobs": null`` with a 200, silently. The dialect asks for them with
``top_logprobs: 0`` (tests/integration/test_s20_sdk_llama.py: the real server's answer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.dialect import adapt
from tests.unit.gateway_helpers import coder_cfg, gateway_client

MSGS = [{"role": "user", "content": "hi"}]


async def test_logprobs_alone_asks_the_llama_expert_for_them(ups: Any, tmp_path: Path
                                                             ) -> None:
    coder, chatter = ups
    cfg = coder_cfg(coder.base, chatter.base, dialect="llama-cpp-python")
    async with gateway_client(cfg, tmp_path) as (c, _):
        for stream in (False, True):
            r = await c.post("/v1/chat/completions", json={
                "model": "coder", "messages": MSGS, "logprobs": True, "stream": stream})
            assert r.status_code == 200
    assert [(b["logprobs"], b["top_logprobs"]) for b in coder.received] == [(True, 0)] * 2


@pytest.mark.parametrize(("asked", "sent"), [
    ({"logprobs": True, "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
    ({"logprobs": True, "top_logprobs": None}, {"logprobs": True, "top_logprobs": 0}),
    ({"logprobs": False}, {"logprobs": False}),
    ({"logprobs": None}, {}),  # null: the default, left out
    ({}, {}),
])
def test_only_logprobs_without_top_logprobs_changes(asked: dict[str, Any],
                                                    sent: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSGS, **asked}
    out = adapt(body, "llama-cpp-python", "m")
    assert {k: v for k, v in out.items() if k not in ("model", "messages")} == sent
    assert body == {"model": "m", "messages": MSGS, **asked}  # the client's, unchanged
    assert adapt(body, "openai", "m") is body


def test_a_completions_logprobs_count_is_left_as_sent() -> None:
    body = {"model": "m", "prompt": "hi", "logprobs": 2}
    assert "top_logprobs" not in adapt(body, "llama-cpp-python", "m")
