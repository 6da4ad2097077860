"""The OpenAI API surface as an app developer meets it: what a policy routes on when a
request is very long, which bodies are refused with which status, what reaches the expert
untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from gateway.pipeline import ROUTING_HEAD_CHARS, ROUTING_TAIL_CHARS
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, chat, gateway_client

Ups = tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble]


async def test_a_very_long_prompt_routes_on_a_bounded_head_and_tail(
        ups: Ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt near the body limit is routed on its start and its end only: embedding all of
    it (a megabyte: 1.5 s of MiniLM's tokeniser, on the one embedding thread every other
    request's decision waits behind) tells the router nothing the embedders read anyway.
    The expert still gets the whole prompt."""
    seen: list[str] = []
    real = HashingEmbedder.embed

    def embed(self: HashingEmbedder, texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", embed)
    bound = ROUTING_HEAD_CHARS + 1 + ROUTING_TAIL_CHARS
    long = "START " + "please fix this bug in my code " * 12_000 + " END"
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["policies"].append({**cfg["policies"][0], "name": "conv",
                            "routing_text": "conversation"})
    async with gateway_client(cfg, tmp_path, max_body_bytes=4 << 20) as (c, _):
        seen.clear()
        for model in ("auto", "conv"):
            r = await c.post("/v1/chat/completions", json=chat(model, long))
            assert r.status_code == 200, r.text
        assert ups[0].received[-1]["messages"][0]["content"] == long  # forwarded whole
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": [long, "a batch"]})
        assert r.status_code == 200, r.text
        r = await c.post("/v1/route", json={"model": "auto", "text": long + " route"})
        assert r.status_code == 200, r.text
        # a conversation of many long turns: its system prompt and its latest turn
        turns = [{"role": "system", "content": "SYSTEM rules"}] + [
            {"role": "user", "content": "tell me a joke " * 1000}] * 100 + [
            {"role": "user", "content": "LAST question"}]
        r = await c.post("/v1/route", json={"model": "conv", "messages": turns})
        assert r.status_code == 200, r.text
        assert len(seen) == 5
        for text in seen:
            assert len(text) <= bound, len(text)
        for text in seen[:4]:
            assert text.startswith(("START", "user: START"))
            assert text.endswith(("END", "a batch", "route"))
        assert seen[4].startswith("system: SYSTEM rules") and seen[4].endswith("LAST question")
