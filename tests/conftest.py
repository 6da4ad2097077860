"""Shared fixtures. Environment for offline runs is set before anything imports a model."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.doubles.sse_script import ScriptedSSE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
async def ups() -> AsyncIterator[tuple[OpenAIUpstreamDouble, OpenAIUpstreamDouble]]:
    """Two OpenAI-compatible upstream doubles: the coder's and the chatter's."""
    a = await OpenAIUpstreamDouble("coder-double").start()
    b = await OpenAIUpstreamDouble("chatter-double").start()
    yield a, b
    await a.stop()
    await b.stop()


@pytest.fixture
def small_long_table(tmp_path: Path) -> Path:
    """``tmp_path/t.csv``: a long routing table of 30 prompts, models ``small`` (cost 0.1)
    and ``big`` (1.0), each right on every other prompt."""
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'p{i},"question {i}",{m},{float((i + j) % 2)},{c}\n'
        for i in range(30) for j, (m, c) in enumerate((("small", 0.1), ("big", 1.0)))))
    return p


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any embedding of a table's prompts (train's ``embed_cached``, eval routing's
    ``embed_table``) fails the test: for checks that must refuse an input first."""
    import routers.embed
    from evals import routing_eval

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("the prompts were embedded before the input was refused")

    monkeypatch.setattr(routing_eval, "embed_table", refuse)
    monkeypatch.setattr(routers.embed, "embed_cached", refuse)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedSSE]:
    """An upstream double that plays a test's SSE script (``scripted.script``)."""
    s = await ScriptedSSE().start()
    yield s
    await s.stop()


@pytest.fixture
async def app_for(tmp_path: Path) -> AsyncIterator[Any]:
    """``app_for(cfg, **settings)``: a started raw ASGI app on the hashing embedder, closed at
    the test's end; its routing log is ``tmp_path/log.jsonl`` (later apps: ``logN.jsonl``)."""
    from gateway.app import create_app
    from gateway.config import Settings, parse_config
    from routers.embed import HashingEmbedder

    apps: list[Any] = []

    async def build(cfg: dict[str, Any], **settings: Any) -> Any:
        log = tmp_path / (f"log{len(apps)}.jsonl" if apps else "log.jsonl")
        s = Settings(**{"log_path": log, "ready_check_upstreams": False, "gc_freeze": False,
                        **settings})
        app = create_app(s, parse_config(cfg, "test.yaml"), embedder=HashingEmbedder())
        await app.gateway.start()
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.gateway.close()
