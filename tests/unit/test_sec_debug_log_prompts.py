"""``expertgate serve --log-level debug`` (an operator troubleshooting) wrote every prompt
routed to a ``kind: litellm`` expert into the process log, whatever ``log_prompts`` said:
LiteLLM's and the OpenAI SDK's DEBUG records dump each request's messages (LiteLLM also
through its own handler, past the redaction filter), and LiteLLM wrote two lines per call at
``info``. Those libraries now log warnings and errors only; the gateway's own loggers keep
the level asked for."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.redact import QUIET_LOGGERS, configure_logging
from tests.unit.gateway_helpers import chat, gateway_client
from tests.unit.test_security import _BasicAuthDouble

PROMPT = "PROMPT-SECRET-4f1e please"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def debug_log() -> Iterator[_Collect]:
    root = logging.getLogger()
    saved = (root.level, {n: logging.getLogger(n).level for n in QUIET_LOGGERS})
    h = _Collect()
    root.addHandler(h)
    try:
        configure_logging("debug")
        root.setLevel(logging.DEBUG)  # basicConfig leaves a root with handlers (pytest's)
        yield h
    finally:
        root.removeHandler(h)
        root.setLevel(saved[0])
        for n, lv in saved[1].items():
            logging.getLogger(n).setLevel(lv)


async def test_debug_logging_never_writes_a_litellm_prompt(
        debug_log: _Collect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_SEC_DEBUG_KEY", "sk-debug-upstream-9a7b")
    up = _BasicAuthDouble()
    async with up.running():
        cfg = {"embedder": {"kind": "hashing", "micro_batch": False},
               "experts": [{"name": "lite", "kind": "litellm", "model": "openai/m",
                            "api_base": f"http://127.0.0.1:{up.port}/v1", "timeout_s": 5,
                            "api_key_env": "EG_SEC_DEBUG_KEY"}]}
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("lite", PROMPT))
            assert r.status_code == 200, r.text
    assert up.seen == ["Bearer sk-debug-upstream-9a7b"]  # the call did go through LiteLLM
    leaked = [m for m in debug_log.messages if "PROMPT-SECRET" in m or "sk-debug" in m]
    assert leaked == []
    # the gateway's own loggers still log at debug
    assert logging.getLogger("expertgate.auth").isEnabledFor(logging.DEBUG)
    for name in QUIET_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)


def test_a_quieter_level_than_warning_is_kept_for_the_libraries() -> None:
    saved = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    try:
        configure_logging("error")
        assert all(logging.getLogger(n).level == logging.ERROR for n in QUIET_LOGGERS)
    finally:
        for n, lv in saved.items():
            logging.getLogger(n).setLevel(lv)
