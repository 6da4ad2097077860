"""docker/nginx.conf checked as data (no Docker engine here): the load balancer in front of
the gateway replicas follows them as they are scaled or recreated.

nginx resolves an upstream's ``server gateway:8080`` once, when it loads its configuration:
the replicas running then are the only ones it ever sends to. ``docker compose up -d --scale
gateway=4`` (examples/README.md) started two more that got no traffic, and a replica
recreated with a new address (``up -d --build``) was a dead peer until nginx restarted. The
``resolve`` parameter (open-source nginx since 1.27.3) re-resolves the name at run time
through Docker's DNS (127.0.0.11); it needs a shared-memory ``zone`` and a ``resolver``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = (ROOT / "docker" / "nginx.conf").read_text()


def _statements(block: str) -> list[list[str]]:
    body = re.sub(r"#[^\n]*", "", block)
    return [s.split() for s in body.split(";") if s.strip()]


def _block(text: str, head: str) -> str:
    m = re.search(re.escape(head) + r"\s*\{", text)
    assert m is not None, f"no '{head} {{' block in docker/nginx.conf"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


def test_the_load_balancer_resolves_the_gateway_replicas_at_run_time() -> None:
    http = re.sub(r"#[^\n]*", "", _block(CONF, "http"))
    upstream = _block(http, "upstream expertgate")
    stmts = _statements(upstream)
    servers = [s for s in stmts if s[0] == "server"]
    assert servers and all(s[1] == "gateway:8080" for s in servers), servers
    assert all("resolve" in s[2:] for s in servers), servers
    assert any(s[0] == "zone" for s in stmts), stmts  # resolve needs shared memory
    outside = http.replace(upstream, "")
    resolvers = [s for s in _statements(re.sub(r"\{[^{}]*\}", ";", outside))
                 if s and s[0] == "resolver"]
    assert resolvers and resolvers[0][1] == "127.0.0.11", resolvers  # Docker's DNS


def test_the_nginx_image_supports_resolve() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["lb"]["image"]
    m = re.fullmatch(r"nginx:(\d+)\.(\d+)(?:\.(\d+))?(?:-alpine)?", image)
    assert m is not None, image
    version = tuple(int(x) for x in m.groups(default="0"))
    # a bare 1.27 tag may be an image pulled before 1.27.3, which refuses "resolve"
    assert version >= (1, 28, 0) or (version >= (1, 27, 3) and m.group(3)), image


def _gateway_keep_alive_s() -> float:
    """How long the gateway keeps an idle client connection: ``timeout_keep_alive`` of the
    uvicorn configuration ``expertgate serve`` builds, else uvicorn's default."""
    import inspect

    import uvicorn

    serve = (ROOT / "expertgate" / "cli" / "serve.py").read_text()
    m = re.search(r'"timeout_keep_alive":\s*(\d+(?:\.\d+)?)', serve)
    if m is not None:
        return float(m.group(1))
    default = inspect.signature(uvicorn.Config.__init__).parameters["timeout_keep_alive"]
    return float(default.default)


def test_the_load_balancer_drops_idle_connections_before_the_gateway_does() -> None:
    # nginx keeps idle connections to an upstream for keepalive_timeout (60 s by default),
    # the gateway closes them after its keep-alive (5 s): a request nginx sends on one just
    # as the gateway closes it fails, and nginx does not retry a POST on another replica
    # (non-idempotent), so the client got a 502 that no replica produced
    upstream = _block(re.sub(r"#[^\n]*", "", _block(CONF, "http")), "upstream expertgate")
    given = [s for s in _statements(upstream) if s[0] == "keepalive_timeout"]
    assert given, "nginx's default upstream keepalive_timeout is 60s"
    m = re.fullmatch(r"(\d+)(ms|s)?", given[0][1])
    assert m is not None, given
    seconds = int(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    assert seconds < _gateway_keep_alive_s(), (seconds, _gateway_keep_alive_s())


def test_the_load_balancer_waits_longer_than_the_gateways_deadline() -> None:
    # with proxy_read_timeout equal to the gateway's whole-request deadline (300 s), nginx,
    # which started waiting first, gave up first: the client got nginx's HTML 504 instead of
    # the gateway's OpenAI-shaped deadline error, and the routing log said otherwise
    from gateway.config import Settings

    deadline = Settings.model_fields["request_deadline_s"].default
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["gateway"].get("environment", {})
    deadline = float(env.get("EXPERTGATE_REQUEST_DEADLINE_S", deadline))
    location = re.sub(r"#[^\n]*", "", _block(CONF, "location /"))
    given = [s for s in _statements(location) if s[0] == "proxy_read_timeout"]
    assert given, given
    m = re.fullmatch(r"(\d+)s?", given[0][1])
    assert m is not None, given
    assert int(m.group(1)) >= deadline + 5, (given, deadline)
