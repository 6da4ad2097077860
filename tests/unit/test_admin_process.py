"""/admin/state and the dashboard's summary say which process answered.

With ``serve --workers N`` each worker keeps its own replica states, routing-log queue,
canary view and dashboard totals, and whichever worker the kernel hands the connection
answers: two reads of the dashboard's summary gave 7 requests, then 3, from one gateway that
had served 10, and nothing in either answer told them apart. Each answer now names its
process and, in /admin/state, how many workers share the port."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.gateway_helpers import base_config, chat, gateway_client


async def test_state_and_summary_name_the_answering_process(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path, workers=2) as (c, _gw):
        await c.post("/v1/chat/completions", json=chat("auto", "tell me a joke"))
        state = (await c.get("/admin/state")).json()
        assert state["process"] == {"pid": os.getpid(), "workers": 2,
                                    "scope": "this worker process"}, state
        summary = (await c.get("/ui/api/summary")).json()
        assert summary["process"] == {"pid": os.getpid()}, summary
        assert summary["requests"] == 1
