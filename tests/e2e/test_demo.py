"""`expertgate demo` end to end, as `make demo` runs it: real llama.cpp experts, a real
gateway process, the OpenAI SDK; exit code 0 and nothing left running afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_routes_to_both_experts_hits_the_cache_and_cleans_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "expertgate", "demo", "--config",
         str(ROOT / "examples" / "demo-local.yaml"), "--work-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=480, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "both experts answered: yes (gemma3, smollm2)" in out
    assert "repeated prompt was a cache hit: yes" in out
    rows = [ln for ln in out.splitlines() if re.match(r"^\d+\s+(auto|guarded)\s", ln)]
    assert len(rows) == 7
    assert re.search(r"\[repeat\]\s+smollm2\s+hit\s", out)
    assert re.search(r"\[stream\]\s+gemma3\s+miss\s", out)
    assert re.search(r"\[off-topic\]\s+\(refusal\)\s", out)
    # every process the demo started is gone
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", out.split("stopped:")[-1])]
    assert len(pids) == 3
    assert not [p for p in pids if _alive(p)]
    # the routing log recorded every request, with costs for the experts' answers
    recs = [orjson.loads(x) for x in (tmp_path / "routing-log.jsonl").read_bytes().splitlines()]
    assert len(recs) == 7
    assert {r["expert"] for r in recs} == {"smollm2", "gemma3", None}
    assert all(r["cost_usd"] > 0 for r in recs if r["expert"] == "smollm2")
