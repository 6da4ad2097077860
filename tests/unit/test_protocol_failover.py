"""A protocol failure (a 200 that is not what the protocol promises: no event stream for a
streamed request, a body that is not JSON, an error event before any token) is the
replica's answer, not a transient fault: the replica received the request, may have
generated and billed it, and answers it the same way again. The fail-over goes to the next
replica, then the next expert, never the same replica twice (a request was sent to the
last expert of the chain twice: "chatter protocol; coder protocol; coder protocol"), so no
upstream receives one request twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.unit.gateway_helpers import base_config, chat, gateway_client

#: a whole JSON completion where a stream was asked for
NOT_SSE = (200, "application/json", b'{"id": "x", "object": "chat.completion", "choices": []}')


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", chat("auto", "fix this bug in my code", stream=True)),
    ("/v1/completions", {"model": "auto", "prompt": "fix this bug in my code", "stream": True}),
])
async def test_a_protocol_failure_fails_over_and_never_repeats_a_replica(
        ups: tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble], tmp_path: Path, path: str,
        body: dict[str, object]) -> None:
    coder, chatter = ups
    coder.raw = chatter.raw = NOT_SSE
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        r = await c.post(path, json=body)
        assert r.status_code == 502, r.text
        err = r.json()["error"]
        assert err["code"] == "upstream_protocol_error"
        assert "(2 attempt(s): coder protocol; chatter protocol)" in err["message"], err
        # an expert named alone: one try of its one replica
        r = await c.post(path, json={**body, "model": "coder"})
        assert r.status_code == 502 and "(1 attempt(s): coder protocol)" in r.text, r.text
    assert len(coder.received) == 2 and len(chatter.received) == 1


async def test_a_protocol_failure_goes_to_the_expert_s_next_replica(tmp_path: Path) -> None:
    broken = await OpenAIUpstreamDouble("broken").start()
    good = await OpenAIUpstreamDouble("good").start()
    chatter = await OpenAIUpstreamDouble("chatter").start()
    broken.raw = NOT_SSE
    cfg = base_config(broken.base, chatter.base)
    cfg["experts"][0]["replicas"] = [good.base]
    try:
        async with gateway_client(cfg, tmp_path) as (c, _):
            for _ in range(6):  # whichever replica the choice puts first
                r = await c.post("/v1/chat/completions", json=chat("coder", "x", stream=True))
                assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
                assert r.headers["x-expertgate-expert"] == "coder"
        assert len(good.received) == 6 and chatter.received == []
        # never asked twice: each failed request went once to the broken replica at most
        assert len(broken.received) <= 6
    finally:
        for d in (broken, good, chatter):
            await d.stop()
