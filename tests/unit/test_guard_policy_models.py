"""A guard artifact served as a policy's router (``router: guard``) whose ``models:`` map
several of its labels onto one expert, as a user with fewer experts than labels writes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.datasets.guard import guard_table_from_labels
from routers.artifacts import save_router
from routers.embed import HashingEmbedder
from routers.guard import GuardRouter
from tests.unit.gateway_helpers import base_config, chat, gateway_client

TEXTS = {"code": ["fix this bug in my code", "refactor this class", "write a python function"],
         "chat": ["tell me a joke", "how are you today", "what is a good movie to watch"],
         "small": ["nice weather today", "have a good weekend", "hello there friend"]}


def _guard(tmp_path: Path) -> Path:
    pytest.importorskip("skops")
    emb = HashingEmbedder()
    texts = [t for ts in TEXTS.values() for t in ts] * 4
    labels = [lab for lab, ts in TEXTS.items() for _ in ts] * 4
    g = GuardRouter(method="centroid", target_frr=0.0)
    g.fit(emb.embed(texts), guard_table_from_labels(texts, labels), embedder=emb)
    return save_router(g, tmp_path / "guard", embedder=emb.name)


def _config(ups, tmp_path: Path) -> dict:
    cfg = base_config(ups[0].base, ups[1].base)
    cfg["policies"] = [{"name": "auto", "router": "guard", "artifact": str(_guard(tmp_path)),
                        "models": {"code": "coder", "chat": "chatter", "small": "chatter"},
                        "on_reject": {"action": "refusal", "message": "Out of scope."}}]
    return cfg


async def test_labels_mapped_onto_one_expert_try_that_expert_once(ups, tmp_path: Path) -> None:
    # two labels served by one expert gave the chain [coder, chatter, chatter]: a request
    # whose first expert failed was sent to the same expert twice
    async with gateway_client(_config(ups, tmp_path), tmp_path) as (c, _):
        r = await c.post("/v1/route", json={"model": "auto", "text": "fix this bug in my code"})
        d = r.json()
        assert d["action"] == "forward", d
        assert d["fallback_chain"] == ["coder", "chatter"]
        assert [t["expert"] for t in d["targets"]] == ["coder", "chatter"]
        for up in ups:
            up.mode, up.status = "status", 503
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 502
        # each expert gets its own attempts (a retry of its replica), chatter no more than coder
        assert len(ups[1].received) == len(ups[0].received) >= 1


async def test_a_rejection_does_not_say_an_expert_serves_it(ups, tmp_path: Path) -> None:
    # the reason of a rejected query ended "; chat is served by chatter" (the label the
    # classifier leaned to), though no expert served it
    async with gateway_client(_config(ups, tmp_path), tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "quantum chromodynamics"))
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == "Out of scope."
        reason = r.headers["x-expertgate-reason"]
        assert reason.startswith("out of domain") and "served by" not in reason
        assert r.headers["x-expertgate-expert"] == "none"
        assert ups[0].received == [] and ups[1].received == []
