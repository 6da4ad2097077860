"""A demo prompt the gateway answers with an error shows the gateway's own message in the
table, not the SDK's "Error code: 502 - {'error': {'messag…" cut at 48 characters."""

from __future__ import annotations

import httpx
import openai

from expertgate.cli.demo import DEMO_PROMPTS, _send, format_table

MESSAGE = "every expert of policy 'auto' failed: smollm2 (timeout), gemma3 (connect)"


def _client() -> openai.OpenAI:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, headers={"x-expertgate-expert": "none",
                                            "x-expertgate-cache": "miss"},
                              json={"error": {"message": MESSAGE, "type": "upstream_error",
                                              "param": None, "code": "all_experts_failed"}})

    return openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(answer)))


def test_an_error_row_says_the_gateways_message() -> None:
    row = _send(_client(), DEMO_PROMPTS[0], 8)
    assert row.status == 502
    assert row.error == f"error 502: {MESSAGE}"
    line = format_table([row]).splitlines()[-1]
    assert "HTTP 502" in line
    assert "error 502: every expert of policy" in line
