"""What app developers met on the request path after this morning's changes, in combination:
paths, methods and bodies as OpenAI, Azure OpenAI and their SDKs send them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_an_azure_path_without_its_deployment_is_not_another_endpoint(
        ups: Any, tmp_path: Path) -> None:
    # merging the slashes read /deployments//chat/completions as the completions of a
    # deployment named 'chat' (a 400 'prompt: Field required' for a chat request)
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        for path in ("/openai/deployments//chat/completions",
                     "//openai/deployments//chat/completions?api-version=2024-10-21",
                     "/deployments//completions"):
            r = await c.post(f"http://gw{path}", json=chat("auto", "tell me a joke"))
            assert r.status_code == 404, (path, r.text)
            assert r.json()["error"]["message"].startswith("Invalid URL (POST /")
        # the deployment itself is still found when other slashes are doubled
        r = await c.post("http://gw//openai/deployments/auto//chat/completions",
                         json=chat("auto", "tell me a joke"))
        assert r.status_code == 200, r.text


async def test_a_post_endpoints_alias_read_with_another_method_is_a_405(ups: Any,
                                                                        tmp_path: Path) -> None:
    # GET /v1/chat/completions was a 405 naming POST, but the same GET of the Azure path or
    # of /chat/completions was a 404 'Invalid URL' listing the Azure paths as served
    coder, chatter = ups
    async with gateway_client(base_config(coder.base, chatter.base), tmp_path) as (c, _):
        for method, path in (("GET", "/v1/chat/completions"), ("GET", "/chat/completions"),
                             ("GET", "/openai/deployments/auto/chat/completions"),
                             ("PUT", "/deployments/auto/embeddings/"),
                             ("GET", "//openai/deployments/auto/completions")):
            r = await c.request(method, f"http://gw{path}")
            assert r.status_code == 405, (path, r.text)
            assert r.headers["allow"] == "POST"
            err = r.json()["error"]
            assert err["code"] == "method_not_allowed"
            assert err["message"].startswith(f"Invalid method ({method} /"), err
            assert err["message"].endswith("takes POST")
        # what is no endpoint stays a 404
        for path in ("/openai/deployments/auto", "/openai/deployments//chat/completions",
                     "/v1/responses"):
            assert (await c.get(f"http://gw{path}")).status_code == 404, path
        assert (await c.get("http://gw/v1/models")).status_code == 200


def test_a_reload_that_lists_an_experts_replicas_in_another_order_keeps_its_slots() -> None:
    # 41a1acb compared the replica lists in order: [a, b] reloaded as [b, a] (the same two
    # servers) got fresh slots beside the calls in flight, twice max_concurrency at them
    from gateway.config import parse_config
    from gateway.dispatch import Dispatcher
    from gateway.metrics import Metrics

    a, b, c = (f"http://127.0.0.1:{p}/v1" for p in (1, 2, 3))

    def disp(*replicas: str) -> Dispatcher:
        return Dispatcher(parse_config({"experts": [
            {"name": "x", "replicas": list(replicas), "max_concurrency": 2}]}), Metrics())

    old = disp(a, b)
    swapped = disp(b, a)
    swapped.keep_slots(old)
    assert swapped.pools["x"].slots is old.pools["x"].slots
    other = disp(a, c)  # another server: its own capacity
    other.keep_slots(old)
    assert other.pools["x"].slots is not old.pools["x"].slots
