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


def test_an_open_gateway_is_published_on_loopback_only_by_default() -> None:
    # the load balancer was published on every interface of the host ("8080:8080"; Docker's
    # published ports pass by the host's firewall, ufw included) while the mounted config
    # asks no key: `docker compose up` on a cloud VM offered the GPUs to anyone
    import re

    from gateway.config import load_config

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gateway = compose["services"]["gateway"]
    cmd = [str(a) for a in gateway["command"]]
    served = cmd[cmd.index("--config") + 1]
    mounts = {}  # container path -> host path
    for v in gateway["volumes"]:
        host, target = str(v).split(":")[:2]
        mounts[target] = host
    source = next(ROOT / mounts[t] / Path(served).relative_to(t)
                  for t in mounts if served.startswith(t + "/"))
    cfg = load_config(source)
    ports = [str(p) for p in compose["services"]["lb"]["ports"]]
    for p in ports:
        # ${VAR:-default} as docker compose reads it with VAR unset
        resolved = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", p)
        parts = resolved.split(":")
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        if not (cfg.require_auth and cfg.api_keys):
            assert host_ip in ("127.0.0.1", "::1", "localhost"), (p, resolved)
