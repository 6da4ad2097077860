"""docker-compose.yml gives the gateway the time its graceful shutdown takes.

``docker compose stop``, ``down``, ``up -d`` after a change and ``--scale`` down all send
SIGTERM and then, after the service's ``stop_grace_period`` (Docker's default: 10 s), SIGKILL.
The gateway drains in-flight requests and streams for up to ``timeout_graceful_shutdown``
(``expertgate/cli/serve.py``, 30 s: a long generation) and then flushes its routing log (up to
``RoutingLog.close``'s 5 s). With the default, a stream still running 10 s into the drain was
cut and the buffered routing-log records lost, without a word (SIGKILL: no warning line, no
``expertgate_log_records_dropped_total``).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import yaml

from gateway.logs import RoutingLog

ROOT = Path(__file__).resolve().parents[2]


def _seconds(value: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(a + u for a, u in parts) == value, value
    return sum(float(a) * units[u] for a, u in parts)


def test_compose_waits_for_the_gateways_drain_and_log_flush_before_sigkill() -> None:
    serve = (ROOT / "expertgate" / "cli" / "serve.py").read_text()
    m = re.search(r'"timeout_graceful_shutdown":\s*(\d+)', serve)
    assert m is not None
    drain = float(m.group(1))
    flush = inspect.signature(RoutingLog.close).parameters["timeout_s"].default
    gateway = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    grace = gateway.get("stop_grace_period")
    assert grace is not None, "Docker's default is 10 s, then SIGKILL"
    assert _seconds(str(grace)) >= drain + flush, (grace, drain, flush)
