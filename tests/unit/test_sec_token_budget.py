"""A key's tokens_per_minute is charged up front per completion asked for, as OpenAI counts
it: ``n``, ``best_of`` and each prompt of a batch each get the completion budget. One
request with ``n: 100, max_tokens: 100`` was charged 100 completion tokens, so a key with a
1,000-token budget had 10,000 generated in one request (the reconciliation afterwards
charges the tokens only once they are spent)."""

from __future__ import annotations

from pathlib import Path

from gateway.auth import hash_key
from gateway.ratelimit import DEFAULT_COMPLETION_ESTIMATE, estimate_tokens
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def test_the_completion_budget_counts_once_per_completion() -> None:
    msgs = {"messages": [{"role": "user", "content": "x" * 40}]}  # 10 + 1 prompt tokens
    assert estimate_tokens({**msgs, "max_tokens": 100}) == 11 + 100
    assert estimate_tokens({**msgs, "max_tokens": 100, "n": 100}) == 11 + 100 * 100
    assert estimate_tokens({**msgs, "n": 3}) == 11 + 3 * DEFAULT_COMPLETION_ESTIMATE
    # the policy's cap binds each completion
    assert estimate_tokens({**msgs, "max_tokens": 100, "n": 4}, cap=10) == 11 + 4 * 10
    # a completion: best_of generates that many; a batch, each prompt's n
    assert estimate_tokens({"prompt": "abcd", "max_tokens": 8, "n": 2, "best_of": 5}) \
        == 2 + 5 * 8
    assert estimate_tokens({"prompt": ["abcd", "efgh", "ijkl"], "max_tokens": 8, "n": 2}) \
        == 4 + 3 * 2 * 8
    assert estimate_tokens({"prompt": [[1, 2], [3]], "max_tokens": 8}) == 4 + 2 * 8
    # one prompt of token ids is not a batch; bad or absent counts are one
    assert estimate_tokens({"prompt": [1, 2, 3], "max_tokens": 8}) == 4 + 8
    for n in (None, 0, -3, True, "5", 1.5):
        assert estimate_tokens({**msgs, "max_tokens": 7, "n": n}) == 11 + 7


async def test_n_cannot_buy_more_than_the_keys_token_budget(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["api_keys"] = [{"name": "team", "sha256": hash_key("sk-team"),
                        "tokens_per_minute": 1000}]
    auth = {"authorization": "Bearer sk-team"}
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", headers=auth,
                         json=chat("auto", "tell me a joke", n=100, max_tokens=100))
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["code"] == "rate_limit_tokens" and "Limit 1000" in err["message"]
        assert "n, best_of" in err["message"]
        assert r.headers["x-should-retry"] == "false"
        # within the budget it is served
        r = await c.post("/v1/chat/completions", headers=auth,
                         json=chat("auto", "tell me a joke", n=4, max_tokens=100))
        assert r.status_code == 200, r.text
