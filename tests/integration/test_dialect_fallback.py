"""An image request routed to a real llama.cpp expert (``dialect: llama-cpp-python``, which
reads text only) is answered by the policy's fallback that reads images (an OpenAI-dialect
double), through a real ``expertgate serve`` with the OpenAI SDK: the chain passes the
llama.cpp expert over instead of ending the request with its 400, and the dry run says so
(gateway/dispatch.py, gateway/request/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer, local_config
from gateway.config import load_yaml
from tests.integration.conftest import LocalExperts

pytestmark = pytest.mark.integration

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "demo-local.yaml"
IMAGE: list[Any] = [{"role": "user", "content": [
    {"type": "text", "text": "Hi! How are you today? What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]


@pytest.fixture(scope="module")
def served(llama_experts: LocalExperts, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[GatewayServer, ThreadedDouble]]:
    llama_experts.ensure_running()
    vision = ThreadedDouble("vision-double")
    work = tmp_path_factory.mktemp("dialect-fallback")
    cfg = local_config(DEMO_CONFIG, work / "demo.yaml", llama_experts.ports)
    data = load_yaml(cfg.read_text(encoding="utf-8"))
    data["experts"].append({"name": "vision", "api_base": vision.base, "timeout_s": 10})
    auto = next(p for p in data["policies"] if p["name"] == "auto")
    auto["fallback"] = [*auto["fallback"], "vision"]
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        with GatewayServer(cfg, log_path=work / "gateway.log",
                           routing_log=work / "log.jsonl") as gw:
            yield gw, vision
    finally:
        vision.stop()


def test_an_image_request_is_answered_by_the_fallback_that_reads_images(
        served: tuple[GatewayServer, ThreadedDouble]) -> None:
    gw, vision = served
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="none", max_retries=0)
    r = client.chat.completions.with_raw_response.create(model="auto", messages=IMAGE,
                                                         max_tokens=8)
    assert r.headers["x-expertgate-expert"] == "vision"
    assert "smollm2:unsupported" in r.headers["x-expertgate-reason"]
    assert r.parse().choices[0].message.content
    assert vision.double.received[-1]["messages"] == IMAGE  # as the client sent it
    # the same text without the image is still the llama.cpp expert's
    text = client.chat.completions.with_raw_response.create(
        model="auto", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "text", "text": "Hi! How are you today?"}]}])
    assert text.headers["x-expertgate-expert"] == "smollm2"
    # the dry run names the expert the live request passed over
    route = httpx.post(f"{gw.url}/v1/route", json={"model": "auto", "messages": IMAGE},
                       timeout=30).json()
    assert route["fallback_chain"][0] == "smollm2" and "smollm2" in route["unsupported"]
    # a llama.cpp expert named by the client has no chain: its 400
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model="smollm2", messages=IMAGE, max_tokens=8)
    body: Any = ei.value.body
    assert body["code"] == "unsupported_parameter"
    assert body["param"] == "messages.0.content.1"
