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
