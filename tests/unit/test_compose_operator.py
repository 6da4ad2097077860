"""docker-compose.yml as an operator uses it: commands run inside the gateway service
(``docker compose exec gateway expertgate ...``) see the configuration the service serves."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_commands_in_the_gateway_container_see_the_served_config() -> None:
    # `docker compose exec gateway expertgate keys add --policies ...` checks the names
    # against EXPERTGATE_CONFIG; without it in the service's environment, the check was
    # skipped, and a key naming a policy the file lacks got 404 on every request
    svc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    cmd = [str(a) for a in svc["command"]]
    served = cmd[cmd.index("--config") + 1]
    assert svc["environment"].get("EXPERTGATE_CONFIG") == served, svc["environment"]
    assert svc["environment"].get("EXPERTGATE_REDIS_URL"), svc["environment"]
