"""A policy with a guard, through the gateway: an unsafe rejection explains itself with the
unsafe score (not the OOD score and threshold), on the dry run and on a live request."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.guard import guard_table_from_labels
from routers.artifacts import save_router
from routers.embed import HashingEmbedder
from routers.guard import GuardRouter
from tests.unit.gateway_helpers import base_config, chat, gateway_client


def _code_chat_guard(tmp_path: Path) -> Path:
    """A centroid guard over "code" and "chat" queries (hashing embedder), saved."""
    pytest.importorskip("skops")
    emb = HashingEmbedder()
    texts = ["fix this bug in my code", "refactor this class", "tell me a joke",
             "how are you today"] * 5
    labels = ["code", "code", "chat", "chat"] * 5
    g = GuardRouter(method="centroid", target_frr=0.0, routes={"code": "coder",
                                                                "chat": "chatter"})
    g.fit(emb.embed(texts), guard_table_from_labels(texts, labels), embedder=emb)
    return save_router(g, tmp_path / "guard", embedder=emb.name)


async def test_unsafe_rejection_reason_gives_the_unsafe_score(ups, tmp_path: Path) -> None:
    art = _code_chat_guard(tmp_path)
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)})
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/route", json={"model": "auto", "text": "those people are vermin"})
        d = r.json()
        assert d["mode"] == "reject" and d["guard"]["reject_reason"] == "unsafe"
        assert "unsafe content (score 1.000" in d["reason"]
        assert f"{d['guard']['ood_score']:.3f}" not in d["reason"]
        r = await c.post("/v1/chat/completions", json=chat("auto", "those people are vermin"))
        assert r.status_code == 400 and "unsafe content (score 1.000" in r.json()[
            "error"]["message"]


async def test_a_text_field_in_a_chat_body_does_not_replace_what_the_guard_reads(
        ups, tmp_path: Path) -> None:
    # the dry run's `text` field was read on every endpoint: a chat or completions body
    # carrying "text": "<something in domain>" was guarded and routed on that text while the
    # expert got the out-of-domain messages (the guard bypassed by one extra field)
    art = _code_chat_guard(tmp_path)
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)},
                      on_reject={"action": "error", "status": 403, "message": "Out of scope."})
    ood = "quantum chromodynamics of gluons"
    async with gateway_client(cfg, tmp_path) as (c, _):
        for path, body in (("/v1/chat/completions", {**chat("auto", ood),
                                                     "text": "tell me a joke"}),
                           ("/v1/completions", {"model": "auto", "prompt": ood,
                                                "text": "tell me a joke"})):
            r = await c.post(path, json=body)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "request_rejected"
            assert r.headers["x-expertgate-expert"] == "none"
        assert ups[0].received == [] and ups[1].received == []
        # an in-domain request keeps its unknown field on the way to the expert
        r = await c.post("/v1/chat/completions", json={**chat("auto", "tell me a joke"),
                                                       "text": ood})
        assert r.status_code == 200 and ups[1].received[-1]["text"] == ood
        # the dry run still routes on its `text`
        r = await c.post("/v1/route", json={"model": "auto", "text": ood})
        assert r.json()["mode"] == "reject"
