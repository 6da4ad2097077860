"""End to end through a real ``expertgate serve`` process, the OpenAI SDK as the client, and
two real llama.cpp experts (SmolLM2-135M-Instruct and Gemma-3-270M) behind it, routed by the
demo config (examples/demo-local.yaml, the distilled MiniLM embedder) with free ports substituted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from expertgate.procs import GatewayServer, local_config
from tests.integration.conftest import LocalExperts

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def gateway(llama_experts: LocalExperts, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayServer]:
    work = tmp_path_factory.mktemp("gateway")
    cfg = local_config(DEMO_CONFIG, work / "demo.yaml", llama_experts.ports)
    with GatewayServer(cfg, log_path=work / "gateway.log", routing_log=work / "log.jsonl") as gw:
        yield gw


def _ask(client: openai.OpenAI, model: str, text: str, stream: bool = False
         ) -> tuple[httpx.Headers, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=MAX_TOKENS,
        temperature=0.0, stream=stream)
    assert raw.status_code == 200
    out = raw.parse()
    if stream:
        answer = "".join(ch.choices[0].delta.content or "" for ch in out if ch.choices)
    else:
        answer = out.choices[0].message.content or ""
    return raw.headers, answer


@pytest.mark.parametrize("text,expert,stream", [
    ("Hi! How are you doing today?", "smollm2", False),
    ("Define the word nostalgia.", "gemma3", False),
    ("Give me two tips for staying focused while studying.", "smollm2", True),
    ("Complete this sentence: The moon rose over the quiet harbour and", "gemma3", True),
])
def test_auto_policy_routes_each_prompt_to_its_expert(client: openai.OpenAI, text: str,
                                                      expert: str, stream: bool) -> None:
    headers, answer = _ask(client, "auto", text, stream)
    assert headers["x-expertgate-policy"] == "auto"
    assert headers["x-expertgate-expert"] == expert
    assert headers["x-expertgate-cache"] in ("miss", "hit")
    assert float(headers["x-expertgate-decision-ms"]) >= 0
    assert "x-expertgate-degraded" not in headers
    assert answer.strip(), f"{expert} gave an empty answer"


def test_repeated_prompt_is_a_decision_cache_hit(client: openai.OpenAI) -> None:
    text = "What does the word serendipity mean?"
    first, _ = _ask(client, "auto", text)
    again, answer = _ask(client, "auto", text)
    assert first["x-expertgate-cache"] == "miss"
    assert again["x-expertgate-cache"] == "hit"
    assert again["x-expertgate-expert"] == first["x-expertgate-expert"] == "gemma3"
    assert answer.strip()


def test_concrete_expert_passes_through_unrouted(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemma3", max_tokens=MAX_TOKENS, temperature=0.0,
        messages=[{"role": "user", "content": "Hi! How are you doing today?"}])
    out = raw.parse()
    assert raw.headers["x-expertgate-expert"] == "gemma3"  # not smollm2, as auto would pick
    assert raw.headers["x-expertgate-policy"] == "none"
    assert raw.headers["x-expertgate-cache"] == "none"
    assert out.model == "gemma3"
    assert out.usage is not None and out.usage.completion_tokens > 0
    ids = {m.id for m in client.models.list().data}
    assert {"smollm2", "gemma3", "auto", "guarded"} <= ids


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    # llama.cpp itself would answer any name with its one model: the gateway must not
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="gpt-4o", max_tokens=MAX_TOKENS,
                                       messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 404
    assert ei.value.code == "model_not_found"


def test_guarded_policy_refuses_off_topic_without_calling_an_expert(client: openai.OpenAI
                                                                    ) -> None:
    headers, answer = _ask(client, "guarded", "What's the best graphics card for gaming?")
    assert answer.startswith("Sorry, this assistant only helps with writing")
    assert headers["x-expertgate-expert"] == "none"  # no expert was called
    assert "no route above threshold" in headers["x-expertgate-reason"]
    headers, answer = _ask(client, "guarded", "Define the word melancholy.")
    assert headers["x-expertgate-expert"] == "gemma3" and answer.strip()


def test_fallback_to_gemma_when_smollm2_is_stopped(client: openai.OpenAI,
                                                   llama_experts: LocalExperts) -> None:
    smol = llama_experts["smollm2"]
    smol.stop()  # by the PID this session started
    try:
        headers, answer = _ask(client, "auto", "Good morning! How was your weekend?")
        assert headers["x-expertgate-expert"] == "gemma3"
        assert "expert-fallback" in headers["x-expertgate-degraded"].split(",")
        assert "smollm2:connect" in headers["x-expertgate-reason"]
        assert answer.strip()
        # streamed requests fall back the same way (nothing was sent before the failure)
        headers, answer = _ask(client, "auto", "Hello there, nice to meet you!", stream=True)
        assert headers["x-expertgate-expert"] == "gemma3"
        assert "expert-fallback" in headers["x-expertgate-degraded"]
    finally:
        smol.start()  # same port: the gateway needs no restart
    headers, answer = _ask(client, "auto", "How do I make a cup of tea?")
    assert headers["x-expertgate-expert"] == "smollm2"
    assert "x-expertgate-degraded" not in headers
    assert answer.strip()
