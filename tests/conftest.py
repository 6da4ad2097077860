"""Shared fixtures. Environment for offline runs is set before anything imports a model."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

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
async def scripted() -> AsyncIterator[ScriptedSSE]:
    """An upstream double that plays a test's SSE script (``scripted.script``)."""
    s = await ScriptedSSE().start()
    yield s
    await s.stop()
