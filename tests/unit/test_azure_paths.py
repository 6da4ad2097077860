"""The Azure OpenAI SDK against the gateway: its deployment paths are aliases of /v1.

``AsyncAzureOpenAI`` puts the model in the path (``/openai/deployments/{model}/chat/completions
?api-version=...`` with ``azure_endpoint``, ``{base_url}/deployments/{model}/...`` with
``base_url``) and sends its key as ``api-key``. The deployment is the model; everything else
is the /v1 request path, and its log and metrics name the same endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.auth import hash_key
from gateway.request import azure_route
from tests.unit.gateway_helpers import base_config, chat, gateway_client

TENANT, ADMIN = "sk-azure-tenant-123456", "sk-azure-admin-abcdef"
VERSION = "2024-10-21"


def _cfg(ups: Any) -> dict[str, Any]:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["experts"].append({"name": "emb", "api_base": ups[0].base, "model": "up-emb",
                           "embeddings": True})
    cfg["api_keys"] = [
        {"name": "team", "sha256": hash_key(TENANT), "policies": ["auto"],
         "experts": ["chatter", "emb"]},
        {"name": "ops", "sha256": hash_key(ADMIN), "admin": True},
    ]
    return cfg


@asynccontextmanager
async def _azure(ups: Any, tmp_path: Path, **client: Any
                 ) -> AsyncIterator[tuple[openai.AsyncAzureOpenAI, httpx.AsyncClient]]:
    where = client or {"azure_endpoint": "http://gw"}
    async with gateway_client(_cfg(ups), tmp_path) as (c, _), \
            httpx.AsyncClient(transport=c._transport) as http:
        yield openai.AsyncAzureOpenAI(api_key=TENANT, api_version=VERSION,
                                      http_client=http, max_retries=0, **where), c


async def test_the_azure_sdk_chats_through_its_deployment_paths(ups: Any,
                                                                tmp_path: Path) -> None:
    coder, chatter = ups
    async with _azure(ups, tmp_path) as (azure, c):
        r = await azure.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "tell me a joke"}])
        assert r.choices[0].message.content
        assert chatter.received[-1]["model"] == "chatter"
        chunks = [ch async for ch in await azure.chat.completions.create(
            model="auto", stream=True,
            messages=[{"role": "user", "content": "fix this bug in my code"}])]
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert coder.received[-1]["model"] == "up-coder" and coder.received[-1]["stream"]
        # the models list of an azure_endpoint client: GET /openai/models
        assert "auto" in [m.id async for m in azure.models.list()]
        metrics = (await c.get("/metrics", headers={"api-key": ADMIN})).text
    # one pipeline: the routing log and the metrics name the /v1 endpoint, not the path
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["endpoint"], r["policy"], r["tenant"]) for r in recs] == [
        ("chat", "auto", "team"), ("chat", "auto", "team")]
    assert 'expertgate_requests_total{endpoint="chat",expert="chatter",policy="auto",' \
           'status="200"} 1.0' in metrics
    assert 'endpoint="/openai' not in metrics


@pytest.mark.parametrize("where", [
    {"azure_endpoint": "http://gw", "azure_deployment": "auto"},  # /openai/deployments/auto
    {"base_url": "http://gw"},  # /deployments/auto
    {"base_url": "http://gw/v1"},  # /v1/deployments/auto: the base URL of an OpenAI client
    {"base_url": "http://gw/openai/deployments/auto"},
])
async def test_every_base_url_shape_of_the_sdk_reaches_the_deployment(
        ups: Any, tmp_path: Path, where: dict[str, str]) -> None:
    async with _azure(ups, tmp_path, **where) as (azure, _):
        r = await azure.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "tell me a joke"}])
        assert r.choices[0].message.content


async def test_completions_and_embeddings_through_deployment_paths(ups: Any,
                                                                   tmp_path: Path) -> None:
    coder, chatter = ups
    async with _azure(ups, tmp_path) as (azure, _):
        done = await azure.completions.create(model="chatter", prompt="hello there",
                                              max_tokens=4)
        assert done.choices[0].text
        assert chatter.received[-1]["prompt"] == "hello there"
        routed = await azure.completions.create(model="auto", prompt="tell me a joke")
        assert routed.choices[0].text
        emb = await azure.embeddings.create(model="emb", input=["a", "b"])
        assert [d.index for d in emb.data] == [0, 1]
        assert (coder.received[-1]["model"], coder.received[-1]["input"]) == (
            "up-emb", ["a", "b"])
    recs = [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["endpoint"] for r in recs] == ["completions", "completions", "embeddings"]


async def test_an_unknown_deployment_is_openais_404(ups: Any, tmp_path: Path) -> None:
    async with _azure(ups, tmp_path) as (azure, c):
        with pytest.raises(openai.NotFoundError) as e:
            await azure.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 404
        err = e.value.body
        assert isinstance(err, dict) and err["code"] == "model_not_found"
        assert set(err) == {"message", "type", "param", "code"}
        # a deployment outside the key's allow-list reads the same as a missing one
        r = await c.post(f"/openai/deployments/coder/chat/completions?api-version={VERSION}",
                         json=chat("coder", "hi"), headers={"api-key": TENANT})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert not ups[0].received


async def test_a_missing_api_key_is_a_401(ups: Any, tmp_path: Path) -> None:
    async with _azure(ups, tmp_path) as (_, c):
        for path in ("/openai/deployments/auto/chat/completions",
                     "/deployments/auto/embeddings", "/openai/deployments/auto/completions"):
            r = await c.post(f"{path}?api-version={VERSION}", json=chat("auto", "hi"))
            assert r.status_code == 401, (path, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        async with httpx.AsyncClient(transport=c._transport) as http:
            wrong = openai.AsyncAzureOpenAI(azure_endpoint="http://gw", api_key="sk-wrong",
                                            api_version=VERSION, http_client=http,
                                            max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "hi"}])
    assert not ups[0].received and not ups[1].received


async def test_the_deployment_takes_the_place_of_the_bodys_model(ups: Any,
                                                                  tmp_path: Path) -> None:
    """Azure serves the deployment the URL names and ignores a ``model`` in the body (the
    SDK with ``azure_deployment`` sends whatever ``model=`` the caller passed); so does the
    gateway, also when the body names none, and the expert gets its own model name."""
    coder, chatter = ups
    async with _azure(ups, tmp_path) as (_, c):
        path = f"/openai/deployments/chatter/chat/completions?api-version={VERSION}"
        for body in (chat("auto", "fix this bug in my code"),
                     {"messages": [{"role": "user", "content": "hi"}]},
                     {**chat("x", "hi"), "model": 7}):
            r = await c.post(path, json=body, headers={"api-key": TENANT})
            assert r.status_code == 200, (body, r.text)
            assert chatter.received[-1]["model"] == "chatter"
            assert orjson.loads(r.content)["model"] == "chatter"
        assert not coder.received


async def test_a_double_slash_reaches_the_endpoint(ups: Any, tmp_path: Path) -> None:
    """``base_url + "/v1/chat/completions"`` with a base URL ending in a slash: merged, as
    nginx does by default (merge_slashes), before any path is looked up, so a gated path
    stays gated."""
    async with _azure(ups, tmp_path) as (_, c):
        # a full URL: httpx reads "//v1/..." alone as a host ("v1") and a path
        for path in ("//v1/chat/completions", "/v1//chat/completions",
                     "//openai/deployments/auto/chat/completions",
                     "/openai//deployments/auto//chat/completions/"):
            r = await c.post(f"http://gw{path}", json=chat("auto", "tell me a joke"),
                             headers={"api-key": TENANT})
            assert r.status_code == 200, (path, r.text)
        assert r.request.url.raw_path == b"/openai//deployments/auto//chat/completions/"
        r = await c.get("http://gw//v1/models", headers={"api-key": TENANT})
        assert r.status_code == 200 and "auto" in [m["id"] for m in r.json()["data"]]
        r = await c.get("http://gw//metrics", headers={"api-key": TENANT})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
        assert (await c.get("http://gw//metrics")).status_code == 401
        # a GET of a POST endpoint is still told which method it takes
        assert (await c.get("http://gw//v1/chat/completions")).status_code == 405


def test_the_path_map() -> None:
    assert azure_route("/openai/deployments/d/chat/completions") == ("chat", "d")
    assert azure_route("/deployments/d/completions") == ("completions", "d")
    assert azure_route("/v1/deployments/d/embeddings/") == ("embeddings", "d")
    # a model name with a slash: the SDK writes it into the path as it is
    assert azure_route("/openai/deployments/org/m-1/chat/completions") == ("chat", "org/m-1")
    # the longest endpoint first; what is left is a deployment named "chat"
    assert azure_route("/openai/deployments/chat/completions") == ("completions", "chat")
    for miss in ("/openai/deployments//chat/completions", "/openai/deployments/d/images",
                 "/x/deployments/d/chat/completions", "/openai/deployments/d",
                 "/v1/chat/completions"):
        assert azure_route(miss) is None, miss
