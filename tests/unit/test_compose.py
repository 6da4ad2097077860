"""docker-compose.yml checked as data (no Docker engine or GPU here): the services the gateway
needs exist, the config it mounts parses with the gateway's own loader, and every URL, port
and model name in that config points at something the compose file actually serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from gateway.config import GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def _vllm_args(svc: dict[str, Any]) -> dict[str, list[str]]:
    """``--flag v1 v2 --other`` -> {flag: [v1, v2], other: []} (vLLM's argument style)."""
    cmd = svc["command"]
    assert isinstance(cmd, list), "give vLLM's command as a list (no shell quoting issues)"
    out: dict[str, list[str]] = {}
    key = None
    for a in map(str, cmd):
        if a.startswith("--"):
            key = a[2:]
            out.setdefault(key, [])
        else:
            assert key is not None, f"value {a!r} before any flag"
            out[key].append(a)
    return out


def _mounted_gateway_config(compose: dict[str, Any]) -> tuple[Path, GatewayConfig]:
    gw = _services(compose)["gateway"]
    cmd = [str(c) for c in gw["command"]]
    in_container = Path(cmd[cmd.index("--config") + 1])
    for vol in gw["volumes"]:
        host, target = str(vol).split(":")[:2]
        if in_container.is_relative_to(target):
            host_path = ROOT / host / in_container.relative_to(target)
            return host_path, load_config(host_path)
    raise AssertionError(f"{in_container} is not inside any volume of the gateway service")


def _vllm_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _services(compose).items()
            if str(s.get("image", "")).startswith("vllm/vllm-openai")}


def test_services_the_gateway_needs_exist(compose: dict[str, Any]) -> None:
    svcs = _services(compose)
    assert {"redis", "gateway"} <= set(svcs)
    assert len(_vllm_services(compose)) == 2
    assert str(svcs["redis"]["image"]).startswith("redis:")


def test_gateway_is_built_here_and_runs_two_replicas_on_redis(compose: dict[str, Any]) -> None:
    gw = _services(compose)["gateway"]
    dockerfile = ROOT / gw["build"]["context"] / gw["build"]["dockerfile"]
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert 'ENTRYPOINT ["expertgate"]' in text
    assert gw["command"][0] == "serve"
    cmd = [str(c) for c in gw["command"]]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = int(cmd[cmd.index("--port") + 1])
    assert gw["deploy"]["replicas"] >= 2
    # replicas share state only through Redis: the URL must name the compose service
    url = urlparse(gw["environment"]["EXPERTGATE_REDIS_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379
    assert gw["depends_on"]["redis"]["condition"] == "service_healthy"
    # with two replicas no fixed host port can be published by the gateway itself: the
    # load balancer publishes one and proxies to the gateway's container port
    assert "ports" not in gw
    lb = _services(compose)["lb"]
    conf_host = str(lb["volumes"][0]).split(":")[0]
    conf = (ROOT / conf_host).read_text()
    assert f"server gateway:{port}" in conf
    assert "proxy_buffering off" in conf  # streamed answers pass through unbuffered


def test_mounted_gateway_config_parses(compose: dict[str, Any]) -> None:
    path, cfg = _mounted_gateway_config(compose)
    assert path == ROOT / "examples" / "vllm-lora.yaml"
    assert cfg.policies and cfg.embedder.kind == "minilm"
    adapters = [e for e in cfg.experts if e.parent is not None]
    assert len(adapters) >= 2
    for a in adapters:
        parent = cfg.expert(a.parent or "")
        assert parent is not None and parent.parent is None
        assert not a.bases, "an adapter shares its parent's replicas"


def test_every_expert_url_is_a_vllm_service_serving_that_model(compose: dict[str, Any]
                                                               ) -> None:
    _, cfg = _mounted_gateway_config(compose)
    vllm = _vllm_services(compose)
    served_by: dict[str, set[str]] = {}
    for name, svc in vllm.items():
        args = _vllm_args(svc)
        names = set(args.get("served-model-name") or args["model"])
        for mod in args.get("lora-modules", []):
            adapter, _, path = mod.partition("=")
            assert adapter and path.startswith("/"), f"{name}: bad --lora-modules {mod!r}"
            names.add(adapter)
        served_by[name] = names
        port = int((args.get("port") or ["8000"])[0])
        served_by[f"{name}:{port}"] = names
    for e in cfg.experts:
        owner = cfg.expert(e.parent) if e.parent else e
        assert owner is not None
        assert owner.bases, f"{e.name}: no URL"
        for base in owner.bases:
            u = urlparse(base)
            assert u.scheme == "http" and u.path == "/v1"
            key = f"{u.hostname}:{u.port}"
            assert key in served_by, f"{e.name}: {base} is no vLLM service/port in compose"
            assert e.upstream_model in served_by[key], (
                f"{e.name}: {base} does not serve model {e.upstream_model!r} "
                f"(it serves {sorted(served_by[key])})")


def test_lora_service_enables_lora_with_room_for_its_adapters(compose: dict[str, Any]
                                                              ) -> None:
    lora = [s for s in _vllm_services(compose).values()
            if "enable-lora" in _vllm_args(s)]
    assert len(lora) == 1
    svc = lora[0]
    args = _vllm_args(svc)
    assert int(args["max-loras"][0]) >= len(args["lora-modules"]) >= 2
    assert svc["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert any(str(v).endswith(":/adapters:ro") for v in svc["volumes"])


def test_vllm_services_reserve_distinct_gpus(compose: dict[str, Any]) -> None:
    ids = []
    for name, svc in _vllm_services(compose).items():
        devs = svc["deploy"]["resources"]["reservations"]["devices"]
        assert len(devs) == 1, name
        d = devs[0]
        assert d["driver"] == "nvidia" and d["capabilities"] == ["gpu"]
        ids.append(tuple(d["device_ids"]))
        assert svc.get("ipc") == "host"  # vLLM's processes share tensors via /dev/shm
    assert len(set(ids)) == len(ids), "two vLLM servers on one GPU would fight over memory"


def test_gateway_service_needs_no_gpu(compose: dict[str, Any]) -> None:
    gw = _services(compose)["gateway"]
    assert "reservations" not in gw.get("deploy", {}).get("resources", {})
