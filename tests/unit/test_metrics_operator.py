"""/metrics as an operator's Prometheus reads it: the text parses with prometheus_client's
own parser, client-chosen model names, paths and request ids add no series, and the circuit
gauge describes the replicas the running configuration has (a reload that drops a replica
whose circuit was open must not leave ``expertgate_circuit_open 1`` behind, an alert that
would never clear)."""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from expertgate.bench.upstream_double import OpenAIUpstreamDouble
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _series(text: str) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """metric family -> its label sets, through Prometheus' own text parser."""
    return {f.name: {tuple(sorted(s.labels.items())) for s in f.samples}
            for f in text_string_to_metric_families(text)}


async def test_client_chosen_names_and_paths_add_no_series(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base)
    async with gateway_client(cfg, tmp_path) as (c, _gw):
        async def hostile(i: int) -> None:
            name = f'm{i}"\\\n{{x="y"}}é'
            await c.post("/v1/chat/completions", json=chat(name, "hi"))
            await c.post("/v1/completions", json={"model": name, "prompt": "hi"})
            await c.post("/v1/embeddings", json={"model": name, "input": "hi"})
            await c.post("/v1/route", json=chat(name, "hi"))
            await c.get(f"/nope/{i}")
            await c.post("/v1/chat/completions", json=chat("auto", f"fix my code {i}"),
                         headers={"x-request-id": f"rid-{i}"})

        for i in range(3):
            await hostile(i)
        few = _series((await c.get("/metrics")).text)
        for i in range(3, 60):
            await hostile(i)
        many = _series((await c.get("/metrics")).text)
    assert many == few  # the same series, only their values grew
    for labels in many.values():
        for ls in labels:
            assert not any(v.startswith("m") and '"' in v for _, v in ls)


async def test_a_reload_that_drops_a_replica_drops_its_circuit_gauge(ups, tmp_path: Path
                                                                     ) -> None:
    failing = await OpenAIUpstreamDouble("failing").start()
    failing.mode = "status"
    try:
        cfg = base_config(failing.base, ups[1].base)
        async with gateway_client(cfg, tmp_path) as (c, gw):
            for _ in range(4):
                await c.post("/v1/chat/completions", json=chat("coder", "hi"))
            before = (await c.get("/metrics")).text
            old = f'expertgate_circuit_open{{expert="coder",replica="{failing.base}"}} 1.0'
            assert old in before
            cfg2 = base_config(ups[0].base, ups[1].base)  # the coder moves to a healthy one
            path = tmp_path / "gw.yaml"
            path.write_text(yaml.safe_dump(cfg2))
            await gw.reload(path)
            after = (await c.get("/metrics")).text
            assert f'replica="{failing.base}"' not in after
            assert f'expertgate_circuit_open{{expert="coder",replica="{ups[0].base}"}} 0.0' \
                in after
            # and the pruned series come back if the replica does
            path.write_text(yaml.safe_dump(cfg))
            await gw.reload(path)
            for _ in range(4):
                await c.post("/v1/chat/completions", json=chat("coder", "hi"))
            assert old in (await c.get("/metrics")).text
    finally:
        await failing.stop()


async def test_a_reload_that_drops_a_canary_policy_drops_its_canary_gauges(ups, tmp_path: Path
                                                                           ) -> None:
    from tests.unit.test_shadow_canary import _always_coder

    art = _always_coder(tmp_path / "cand")
    cfg = base_config(ups[0].base, ups[1].base,
                      candidate={"router": "knn", "artifact": str(art), "mode": "canary",
                                 "share": 0.5})
    async with gateway_client(cfg, tmp_path) as (c, gw):
        assert 'expertgate_canary_active{policy="auto"} 1.0' in (await c.get("/metrics")).text
        cfg2 = base_config(ups[0].base, ups[1].base, name="auto2")  # renamed, no candidate
        path = tmp_path / "gw.yaml"
        path.write_text(yaml.safe_dump(cfg2))
        await gw.reload(path)
        series = _series((await c.get("/metrics")).text)
        # no canary serves any more: nothing may say one does
        assert series.get("expertgate_canary_active", set()) <= {(("policy", "auto2"),)}
        assert series.get("expertgate_canary_shared", set()) == set()
