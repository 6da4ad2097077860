"""The two-stage guard (routers.guard_cascade): the back guard's verdict on the queries the
front is unsure of and the front's elsewhere, a rule chosen on validation under its cap, the
artifact round trip, and the gateway serving it (stage in the header, log and metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evals.datasets.guard import guard_table_from_labels
from routers.base import RouterError
from routers.embed import HashingEmbedder
from routers.guard import GuardRouter
from routers.guard_cascade import BACK_FAILED, GuardCascade, load_cascade, save_cascade
from tests.unit.gateway_helpers import base_config, chat, gateway_client

TRAIN = {
    "code": ["write a python function", "fix this bug in my code", "refactor this class",
             "why does my program crash", "sort a list in python", "unit test this method",
             "explain this stack trace", "rename the variable in this loop"],
    "chat": ["tell me a joke", "how are you today", "what is a good movie to watch",
             "let's talk about the weather", "recommend a book", "what should I cook tonight",
             "tell me a story about a dragon", "any plans for the weekend"],
}
VAL = {"code": ["debug my javascript function", "fix the failing unit test"],
       "chat": ["tell me something funny", "what movie should I watch tonight"]}
OOD = ["what is the capital of mongolia", "quantum chromodynamics lecture notes",
       "price of copper futures", "how many moons has jupiter"]
QUERIES = ["fix this python bug", "tell me a joke about cats", "capital of france",
           "refactor my class please", "weather talk", "stock price of copper"]
FRONT, BACK = HashingEmbedder(), HashingEmbedder(dim=256)
BACK_SPEC = {"kind": "hashing", "options": {"dim": 256}}


def _guard(emb: HashingEmbedder) -> GuardRouter:
    texts = [t for v in TRAIN.values() for t in v]
    labels = [k for k, v in TRAIN.items() for _ in v]
    vt = [t for v in VAL.values() for t in v]
    vl = [k for k, v in VAL.items() for _ in v]
    g = GuardRouter(method="knn", k=3, lexical=True, target_frr=0.25, seed=0,
                    routes={"code": "coder", "chat": "chatter"})
    return g.fit(emb.embed(texts), guard_table_from_labels(texts, labels),
                 validation=(emb.embed(vt), vl, vt), embedder=emb)


@pytest.fixture(scope="module")
def cascade() -> GuardCascade:
    c = GuardCascade(_guard(FRONT), _guard(BACK), back_embedder=BACK, back_spec=BACK_SPEC)
    # a band that sends some queries on and settles the others
    fv = c.front.verdict(FRONT.embed(QUERIES), QUERIES)
    dist = sorted(abs(v.ood_score - c.front.threshold_) for v in fv)  # type: ignore[operator]
    c.band = (dist[2] + dist[3]) / 2
    return c


def _key(v):  # type: ignore[no-untyped-def]
    # one query and a batch may differ in the last float32 bits
    return (v.label, v.rejected, v.reject_reason, round(v.ood_score, 5), v.threshold)


def test_verdict_is_the_back_guards_when_escalated_and_the_fronts_otherwise(
        cascade: GuardCascade) -> None:
    c = cascade
    assert c.shares_lexical  # same train texts, labels, seed: one lexical SVM
    got, esc = c.cascade_verdict(FRONT.embed(QUERIES), QUERIES,
                                 lambda t, idx: BACK.embed([t[i] for i in idx]))
    front = c.front.verdict(FRONT.embed(QUERIES), QUERIES)
    back = c.back.verdict(BACK.embed(QUERIES), QUERIES)
    assert 0 < esc.sum() < len(QUERIES)
    for v, e, f, b in zip(got, esc, front, back, strict=True):
        assert v.stage == ("back" if e else "front")
        assert _key(v) == _key(b if e else f)
    # the served call (its own back embedder) says the same, one query at a time too
    assert [_key(v) for v in c.verdict(FRONT.embed(QUERIES), QUERIES)] == [_key(v) for v in got]
    one = [c.verdict(FRONT.embed([q]), [q])[0] for q in QUERIES]
    assert [_key(v) for v in one] == [_key(v) for v in got]
    rej = next((v for v in got if v.rejected), None)
    if rej is not None:
        assert f"({rej.stage} stage of a two-stage guard)" in c.reject_text(rej)


def test_rule_chosen_on_validation_stays_under_its_cap(cascade: GuardCascade) -> None:
    c = GuardCascade(cascade.front, cascade.back, back_embedder=BACK, back_spec=BACK_SPEC)
    vt = [t for v in VAL.values() for t in v]
    vl = [k for k, v in VAL.items() for _ in v]
    sel = c.fit_rule((FRONT.embed(vt), vt, vl, BACK.embed(vt)),
                     {"ood": (FRONT.embed(OOD), OOD, BACK.embed(OOD))}, cap=0.5)
    assert max(sel["validation_escalation_by_part"].values()) <= 0.5
    assert sel["validation_escalation_share"] == max(
        sel["validation_escalation_by_part"].values())
    assert (c.band, c.min_proba) == (sel["band"], sel["min_proba"])
    # everything escalated = the back guard alone: its agreement is total
    full = c.fit_rule((FRONT.embed(vt), vt, vl, BACK.embed(vt)),
                      {"ood": (FRONT.embed(OOD), OOD, BACK.embed(OOD))}, cap=1.0, agree=1.0)
    assert full["validation_agreement_with_back"] == 1.0
    with pytest.raises(RouterError, match="validation OOD"):
        c.fit_rule((FRONT.embed(vt), vt, vl, BACK.embed(vt)), {})


def test_artifact_round_trip(cascade: GuardCascade, tmp_path: Path) -> None:
    pytest.importorskip("skops")
    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name)
    m = json.loads((art / "cascade.json").read_text())
    assert m["back_embedder"] == {**BACK_SPEC, "name": BACK.name, "dim": 256}
    assert "embedder_spec" not in json.loads((art / "front" / "router.json").read_text())
    loaded = load_cascade(art)  # builds its back embedder from the recorded spec
    assert loaded.back_embedder.name == BACK.name
    X = FRONT.embed(QUERIES)
    assert [(*_key(v), v.stage) for v in loaded.verdict(X, QUERIES)] == \
        [(*_key(v), v.stage) for v in cascade.verdict(X, QUERIES)]
    with pytest.raises(RouterError, match="back embedder"):
        load_cascade(art, back_embedder=HashingEmbedder(dim=128))

    class Counting(HashingEmbedder):  # the back encoder, counting its calls
        calls = 0

        def embed(self, texts):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            if self.fail:
                raise RuntimeError("encoder down")
            return super().embed(texts)

    Counting.fail = False  # type: ignore[attr-defined]
    warm = load_cascade(art, back_embedder=Counting(dim=256))
    assert Counting.calls == 1  # warmed at load: the first escalated request pays no first run
    Counting.fail = True  # type: ignore[attr-defined]
    assert not warm.warm()  # a failing back encoder is logged at load, not raised
    assert load_cascade(art, back_embedder=Counting(dim=256)).back_embedder is not None
    (art / "back" / "router.json").write_text(
        (art / "back" / "router.json").read_text().replace('"guard"', '"guard" '))
    with pytest.raises(RouterError, match="modified"):
        load_cascade(art)


async def test_gateway_serves_a_two_stage_guard(ups, cascade: GuardCascade,
                                                tmp_path: Path) -> None:
    pytest.importorskip("skops")
    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name)
    _, esc = cascade.cascade_verdict(FRONT.embed(QUERIES), QUERIES,
                                     lambda t, idx: BACK.embed([t[i] for i in idx]))
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)})
    async with gateway_client(cfg, tmp_path) as (c, _):
        for q, e in zip(QUERIES, esc, strict=True):
            r = await c.post("/v1/chat/completions", json=chat("auto", q))
            assert r.status_code in (200, 400), r.text  # 400: the guard rejected it
            assert r.headers["x-expertgate-guard-stage"] == ("back" if e else "front")
        metrics = (await c.get("/metrics")).text
    n_back = int(np.sum(esc))
    assert f'expertgate_guard_stage_total{{policy="auto",stage="back"}} {float(n_back)}' \
        in metrics
    assert (f'expertgate_guard_stage_total{{policy="auto",stage="front"}} '
            f'{float(len(QUERIES) - n_back)}') in metrics
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sorted(r["guard"]["stage"] for r in log if r.get("guard")) == sorted(
        "back" if e else "front" for e in esc)


def test_a_cascade_manifest_without_its_rule_is_refused(cascade: GuardCascade,
                                                         tmp_path: Path) -> None:
    pytest.importorskip("skops")
    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name)
    m = json.loads((art / "cascade.json").read_text())
    del m["back_embedder"]["kind"]
    (art / "cascade.json").write_text(json.dumps(m))
    with pytest.raises(RouterError, match="back embedder"):
        load_cascade(art)


def test_report_block_gives_shares_and_latency_per_stage(tmp_path: Path) -> None:
    from evals import report as R

    base = {"method": "baseline-tfidf-svm", "gqr_score": 0.871, "latency_p50_ms": 1.65,
            "latency_p99_ms": 2.36}
    casc = {"method": "guard-cascade", "gqr_score": 0.915, "latency_p50_ms": 0.92,
            "latency_p99_ms": 2.8,
            "fit": {"escalation": {"band": 0.72, "min_proba": 0.0, "cap": 0.4,
                                   "validation_agreement_with_back": 0.986,
                                   "validation_escalation_by_part": {"in_domain": 0.13,
                                                                     "oos_val": 0.37}}},
            "cascade": {"test_escalation_share": 0.33, "latency_sample_escalation_share": 0.3,
                        "latency_front_only_p50_ms": 0.84, "latency_front_only_p99_ms": 1.13,
                        "latency_escalated_p50_ms": 2.3, "latency_escalated_p99_ms": 3.18}}
    f = tmp_path / "run.json"
    f.write_text(json.dumps({"methods": {"baseline-tfidf-svm": base, "guard-cascade": casc}}))
    out = R.render_block(f"guard-cascade {f}")
    assert "| guard-cascade | band 0.720, min p 0.0 (cap 0.4; agreement with the back guard " \
           "0.986) | in_domain 0.13, oos_val 0.37 | 0.33 / 0.30 | 0.915 (0.871) | " \
           "0.92 / 2.80 (1.65 / 2.36) | 0.84 / 1.13 | 2.30 / 3.18 |" in out


class _FailingBackEmbedderDouble(HashingEmbedder):
    """The back encoder failing at request time (a broken ONNX session, say)."""

    def embed(self, texts):  # type: ignore[no-untyped-def, override]
        raise RuntimeError("back encoder down")


async def test_a_failing_back_stage_keeps_the_fronts_verdicts_and_says_so(
        ups, cascade: GuardCascade, tmp_path: Path) -> None:
    X = FRONT.embed(QUERIES)
    broken = GuardCascade(cascade.front, cascade.back, band=cascade.band,
                          back_embedder=_FailingBackEmbedderDouble(dim=256),
                          back_spec=BACK_SPEC)
    with pytest.raises(RuntimeError, match="back encoder down"):  # offline: it raises
        broken.cascade_verdict(X, QUERIES, broken._embed_back)
    got = broken.verdict(X, QUERIES)  # served: the front's verdicts, marked
    _, esc = cascade.cascade_verdict(X, QUERIES, lambda t, idx: BACK.embed([t[i] for i in idx]))
    front = cascade.front.verdict(X, QUERIES)
    assert [_key(v) for v in got] == [_key(v) for v in front]
    assert [v.stage for v in got] == [BACK_FAILED if e else "front" for e in esc]

    pytest.importorskip("skops")
    import routers.guard_cascade as gc

    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name)
    real_load = gc.load_cascade

    def load_broken(path, back_embedder=None, manifest=None):  # type: ignore[no-untyped-def]
        return real_load(path, back_embedder=_FailingBackEmbedderDouble(dim=256),
                         manifest=manifest)

    q = QUERIES[int(np.flatnonzero(esc)[0])]
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gc, "load_cascade", load_broken)
        async with gateway_client(cfg, tmp_path) as (c, _):
            r = await c.post("/v1/chat/completions", json=chat("auto", q))
            assert r.status_code in (200, 400), r.text  # never a 500
            assert r.headers["x-expertgate-guard-stage"] == BACK_FAILED
            assert "guard-back" in r.headers["x-expertgate-degraded"].split(",")
            metrics = (await c.get("/metrics")).text
    assert f'expertgate_guard_stage_total{{policy="auto",stage="{BACK_FAILED}"}} 1.0' in metrics
    assert 'expertgate_degraded_total{component="guard-back"} 1.0' in metrics
    rec = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()][-1]
    assert rec["guard"]["stage"] == BACK_FAILED and "guard-back" in rec["degraded"]


def test_a_config_without_embedder_serves_a_two_stage_guard_on_its_fronts_embedder(
        cascade: GuardCascade, tmp_path: Path) -> None:
    """The gateway embeds for the front guard (the back stage builds its own encoder): a
    config that names no embedder takes the one the front's artifact records."""
    pytest.importorskip("skops")
    from gateway.config import load_config

    spec = {"kind": "hashing", "options": {"dim": FRONT.dim}}
    art = save_cascade(cascade, tmp_path / "cascade", front_embedder=FRONT.name,
                       front_embedder_spec=spec)
    cfg = base_config("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1",
                      guard={"artifact": str(art)})
    del cfg["embedder"]
    path = tmp_path / "gw.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    loaded = load_config(path)
    assert loaded.embedder.kind == "hashing" and loaded.embedder.options == spec["options"]
    assert loaded.embedder_from == str(art)
    load_cascade(art)  # the front's record is part of the checked manifest digest


def test_warm_runs_the_whole_back_stage_so_a_fitted_back_guard_builds_its_int8_bank(
        ) -> None:
    """A back guard with a bank big enough for the int8 two-pass search builds that search
    (an onnxruntime graph: tens of milliseconds) on its first single query; ``warm`` runs
    the back guard as well as its encoder, so the first escalated query does not pay it (an
    evaluation's latency sample, a gateway's first request)."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    texts = [f"{words[i % 8]} {words[(i // 8) % 8]} item {i}" for i in range(1100)]
    labels = ["code" if i % 2 else "chat" for i in range(1100)]
    big = GuardRouter(method="knn", k=3, target_frr=0.25, seed=0, bank_size=None)
    big.fit(BACK.embed(texts), guard_table_from_labels(texts, labels),
            validation=(BACK.embed(texts[:40]), labels[:40], texts[:40]), embedder=BACK)
    assert big.bank_.shape[0] >= 1024 and getattr(big, "_bank8", None) is None
    c = GuardCascade(_guard(FRONT), big, back_embedder=BACK, back_spec=BACK_SPEC)
    assert c.warm()
    assert getattr(big, "_bank8", None) is not None  # built before any request
