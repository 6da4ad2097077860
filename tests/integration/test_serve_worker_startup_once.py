"""``expertgate serve --workers N``: a worker's start-up failure (a policy naming a missing
artifact) is said once, in one line: uvicorn's echo of it is filtered in every worker
process, not only in a single-process server. Real ``serve`` processes on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from expertgate.bench.upstream_double import ThreadedDouble
from expertgate.procs import GatewayServer
from tests.integration.test_serve_operator import _serve
from tests.integration.test_workers_reload import _workers
from tests.unit.gateway_helpers import base_config

pytestmark = pytest.mark.integration


def _missing_artifact_config(base: str) -> dict[str, object]:
    return {"embedder": {"kind": "hashing"},
            "experts": [{"name": "a", "api_base": base}],
            "policies": [{"name": "learned", "router": "knn",
                          "artifact": "no/such/artifact"}]}


def test_workers_2_with_a_missing_artifact_is_one_line_once_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(_missing_artifact_config("http://127.0.0.1:9/v1")))
    p = _serve(path, "--port", "0", "--workers", "2")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "does not exist" in ln]
    assert len(lines) == 1, p.stderr
    assert str(tmp_path / "no/such/artifact") in lines[0], p.stderr


def test_a_worker_failing_to_start_on_reload_says_why_once(tmp_path: Path) -> None:
    coder, chatter = ThreadedDouble("coder"), ThreadedDouble("chatter")
    cfg = base_config(coder.base, chatter.base)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "gw.log"
    gw = GatewayServer(path, log_path=log, routing_log=tmp_path / "log.jsonl",
                       check_upstreams=False, env={"EXPERTGATE_WORKERS": "2"})
    gw.start()
    try:
        assert gw.pid is not None
        before = _workers(gw.pid)
        assert len(before) == 2
        bad = base_config(coder.base, chatter.base)
        bad["policies"].append({"name": "learned", "router": "knn",
                                "artifact": "no/such/artifact"})
        path.write_text(yaml.safe_dump(bad))
        os.kill(gw.pid, signal.SIGHUP)
        end = time.monotonic() + 60
        while "keeping worker" not in log.read_text() and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(0.5)
        text = log.read_text()
        assert "keeping worker" in text, text
        said = [ln for ln in text.splitlines() if "does not exist" in ln]
        assert len(said) == 1, text  # the gateway's line, without uvicorn's echo of it
        assert str(tmp_path / "no/such/artifact") in said[0], text
        assert "Traceback" not in text, text
        assert _workers(gw.pid) == before
    finally:
        gw.stop()
        coder.stop()
        chatter.stop()
