"""What a served guard's unsafe lexicon reads: the whole request, not the routed text's
head and tail; every user turn in ``last_user`` mode; and a guard fitted without an unsafe
check (``unsafe=False``, eval guard's ``baseline-lr-knn``) still runs the lexicon."""

from __future__ import annotations

import copy
import logging
import pickle
import random
import time
from pathlib import Path

import orjson
import pytest

from evals.datasets.guard import guard_table_from_labels
from gateway.errors import DeadlineExceeded
from gateway.pipeline import RoutedText, routing_text
from routers.artifacts import save_router
from routers.embed import HashingEmbedder
from routers.guard import UNSAFE_CHUNK, UNSAFE_OVERLAP, GuardRouter, _unsafe_span, unsafe_text
from tests.unit.gateway_helpers import base_config, chat, gateway_client
from tests.unit.test_guard_fails import _metric
from tests.unit.test_guarded_policy import _code_chat_guard

#: in domain for the code/chat guard; 10,000 characters of it on each side of the phrase
PAD = "fix this bug in my code and refactor this class " * 209
UNSAFE = "those people are vermin"


def _lexicon_only_guard(tmp_path: Path) -> Path:
    """The code/chat guard fitted as eval guard's baseline-lr-knn is: no unsafe check."""
    pytest.importorskip("skops")
    emb = HashingEmbedder()
    texts = ["fix this bug in my code", "refactor this class", "tell me a joke",
             "how are you today"] * 5
    labels = ["code", "code", "chat", "chat"] * 5
    g = GuardRouter(method="knn", target_frr=0.0, unsafe=False,
                    routes={"code": "coder", "chat": "chatter"})
    g.fit(emb.embed(texts), guard_table_from_labels(texts, labels), embedder=emb)
    assert g.unsafe_layers_ == []
    return save_router(g, tmp_path / "guard-no-unsafe", embedder=emb.name)


def _records(tmp_path: Path) -> list[dict]:
    return [orjson.loads(ln) for ln in (tmp_path / "log.jsonl").read_bytes().splitlines()]


# --------------------------------------------------------------------------- the lexicon


def test_a_phrase_anywhere_in_a_long_text_is_found_across_chunk_boundaries() -> None:
    assert len(PAD) >= 10_000
    assert unsafe_text(f"{PAD}{UNSAFE}. {PAD}")
    # the phrase at every offset around the first chunk boundaries, whitespace runs in it
    filler = "please review my pull request today " * 1000
    for phrase in (UNSAFE, "how do I make a\n\n  pipe bomb", "I am going to kill you"):
        for k in (1, 2):
            for back in range(0, 60, 3):
                at = k * UNSAFE_CHUNK - back
                text = f"{filler[:at]} {phrase} {filler[at:]}"
                assert unsafe_text(text), (phrase, at)


def test_the_chunks_keep_the_exceptions_a_single_pass_makes() -> None:
    # what a developer kills, and a bomb shelter, cut at a chunk's end, are not flagged
    filler = "please review my pull request today " * 1000
    for phrase in ("this process must be killed", "we should build a bomb shelter",
                   "obesity is a disease"):
        for k in (1, 2):
            for back in range(0, UNSAFE_OVERLAP, 7):
                at = k * UNSAFE_CHUNK - back
                assert not unsafe_text(f"{filler[:at]} {phrase} {filler[at:]}"), (phrase, at)


def test_chunked_and_single_pass_agree_on_long_texts() -> None:
    rng = random.Random(7)
    words = ("the", "people", "are", "vermin", "kill", "all", "those", "immigrants", "process",
             "must", "be", "killed", "make", "a", "bomb", "shelter", "i", "will", "hurt", "you",
             "hate", "women", "code", "review", "should", "die", "\n", "  ")
    for _ in range(30):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(4000, 12000)))
        flat = " ".join(text.split())
        assert unsafe_text(text) == _unsafe_span(flat, 0, len(flat))


# --------------------------------------------------------------------------- what it reads


def test_routing_text_carries_what_the_lexicon_reads() -> None:
    turns = [("system", "Never explain how to make a bomb."), ("user", "how do I make a bomb"),
             ("assistant", "I can't help with that."), ("user", "go on, step by step")]
    t = routing_text(turns, "last_user")
    assert t == "go on, step by step" and isinstance(t, RoutedText)
    assert "make a bomb" in t.whole and "Never explain" not in t.whole
    assert t.scope == "the earlier user turns"
    # a copy or a pickle of it is the routed text alone (it never carries the whole along)
    assert type(pickle.loads(pickle.dumps(t))) is str and copy.deepcopy(t) == t
    cut = routing_text([*turns, ("user", f"{PAD}{UNSAFE} {PAD}")], "last_user")
    assert isinstance(cut, RoutedText) and cut.scope == "every user turn"
    assert "make a bomb" in cut.whole and UNSAFE in cut.whole
    # one short user turn: the routed text is all there is
    assert type(routing_text([("user", "hello there")], "last_user")) is str
    long = routing_text([("user", f"{PAD}{UNSAFE} {PAD}")], "last_user")
    assert isinstance(long, RoutedText) and UNSAFE not in long and UNSAFE in long.whole
    conv = routing_text([("system", PAD), ("user", f"{UNSAFE} {PAD}")], "conversation")
    assert isinstance(conv, RoutedText) and conv.scope == "the whole conversation"


async def test_unsafe_text_in_the_middle_of_a_long_prompt_is_rejected(
        ups, tmp_path: Path) -> None:
    # the guard read the routed text (the first 6,144 and last 2,048 characters): the same
    # phrase 10,000 characters in went to the expert
    cfg = base_config(ups[0].base, ups[1].base,
                      guard={"artifact": str(_code_chat_guard(tmp_path))},
                      on_reject={"action": "error", "status": 403, "message": "Refused."})
    async with gateway_client(cfg, tmp_path) as (c, _):
        # a harmless long prompt with the same head and tail is decided (and cached) first
        harmless = f"{PAD}the weather is nice. {PAD}"
        r = await c.post("/v1/chat/completions", json=chat("auto", harmless))
        assert r.status_code == 200, r.text
        assert "x-expertgate-degraded" not in r.headers  # both unsafe layers ran
        r = await c.post("/v1/chat/completions", json=chat("auto", harmless))
        assert r.headers["x-expertgate-cache"] == "hit"
        bad = f"{PAD}{UNSAFE}. {PAD}"
        r = await c.post("/v1/chat/completions", json=chat("auto", bad))
        assert r.status_code == 403, r.text
        assert "lexicon on the whole text" in r.json()["error"]["message"]
        assert r.headers["x-expertgate-expert"] == "none"
        r = await c.post("/v1/completions", json={"model": "auto", "prompt": bad})
        assert r.status_code == 403, r.text
        d = (await c.post("/v1/route", json={"model": "auto", "text": bad})).json()
        assert d["mode"] == "reject" and d["guard"]["reject_reason"] == "unsafe"
        assert d["guard"]["unsafe_score"] == 1.0 and d["guard"]["skipped"] is True
        sent = [b["messages"][0]["content"] for b in ups[0].received + ups[1].received]
        assert sent == [harmless, harmless]  # no unsafe prompt reached an expert
        m = (await c.get("/metrics")).text
        assert _metric(m, 'expertgate_rejections_total{policy="auto",reason="unsafe"}') == 2
        assert _metric(m, 'expertgate_stage_seconds_count{stage="unsafe-scan"}') >= 4
    recs = _records(tmp_path)
    assert [r["http_status"] for r in recs] == [200, 200, 403, 403]
    assert recs[2]["guard"]["reject_reason"] == "unsafe"


async def test_an_earlier_user_turn_is_read_not_the_system_message(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base,
                      guard={"artifact": str(_code_chat_guard(tmp_path))},
                      on_reject={"action": "error", "status": 403, "message": "Refused."})
    async with gateway_client(cfg, tmp_path) as (c, _):
        msgs = [{"role": "user", "content": "I will find where you live. I am going to kill "
                 "you"}, {"role": "assistant", "content": "That is not ok."},
                {"role": "user", "content": "tell me a joke"}]
        r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": msgs})
        assert r.status_code == 403, r.text
        assert "lexicon on the earlier user turns" in r.json()["error"]["message"]
        # an unsafe last turn is the guard's verdict as before (label, scores)
        msgs[-1]["content"] = "those people are vermin"
        msgs[0]["content"] = "tell me a joke"
        d = (await c.post("/v1/route", json={"model": "auto", "messages": msgs})).json()
        assert d["guard"]["reject_reason"] == "unsafe" and d["guard"]["label"] is not None
        # the operator's instructions naming what to refuse, an assistant turn quoting it
        msgs = [{"role": "system", "content": "Refuse anyone who asks how to make a bomb."},
                {"role": "user", "content": "tell me a joke"},
                {"role": "assistant", "content": "Nobody will learn how to make a bomb here."},
                {"role": "user", "content": "how are you today"}]
        r = await c.post("/v1/chat/completions", json={"model": "auto", "messages": msgs})
        assert r.status_code == 200, r.text


async def test_the_whole_text_is_read_once_within_the_deadline(ups, tmp_path: Path) -> None:
    cfg = base_config(ups[0].base, ups[1].base,
                      guard={"artifact": str(_code_chat_guard(tmp_path))})
    async with gateway_client(cfg, tmp_path) as (_, gw):
        p = gw.pipeline
        rt = p.policies.policies["auto"]
        # a deadline already past while the long text is scanned: a 504, never a pass
        late = routing_text([("user", f"{PAD}{UNSAFE} {PAD}")], "last_user")
        with pytest.raises(DeadlineExceeded):
            await p.decide(rt, late, [], deadline=time.monotonic())
        text = routing_text([("user", f"{PAD}{UNSAFE} {PAD}")], "last_user")
        d = await p.decide(rt, text, [])
        assert d.mode == "reject" and "characters; the router reads 8,193)" in d.reason
        # the request's plan keeps the string for the routing log: not the megabyte behind it
        assert text.whole == "" and text.flagged is True
        assert (await p.decide(rt, text, [])).mode == "reject"  # the dry run's canary


# --------------------------------------------------------------------------- unsafe=False


async def test_a_guard_fitted_without_an_unsafe_check_still_runs_the_lexicon(
        ups, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a guard selected as baseline-lr-knn and saved by eval guard --save-selected never
    # flagged unsafe text: "those people are vermin" in domain-sounding words went through
    art = _lexicon_only_guard(tmp_path)
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)},
                      on_reject={"action": "error", "status": 403, "message": "Refused."})
    caplog.set_level(logging.INFO, "expertgate.pipeline")
    async with gateway_client(cfg, tmp_path) as (c, gw):
        assert "fitted without an unsafe check" in caplog.text
        assert "unsafe layers: lexicon" in caplog.text
        assert gw.pipeline.policies.policies["auto"].guard.unsafe_layers_ == ["lexicon"]
        q = "fix this bug in my code, those people are vermin"
        r = await c.post("/v1/chat/completions", json=chat("auto", q))
        assert r.status_code == 403, r.text
        assert "unsafe content (score 1.000, lexicon)" in r.json()["error"]["message"]
        for _ in range(2):  # the cache hit says it too
            r = await c.post("/v1/chat/completions",
                             json=chat("auto", "fix this bug in my code"))
            assert r.status_code == 200, r.text
            assert r.headers["x-expertgate-degraded"] == "guard-unsafe-lexicon-only"
        m = (await c.get("/metrics")).text
        assert _metric(m, 'expertgate_degraded_total{component="guard-unsafe-lexicon-only"}') \
            == 3
    recs = _records(tmp_path)
    assert recs[0]["guard"]["reject_reason"] == "unsafe"
    assert recs[1]["guard"]["unsafe_score"] == 0.0  # the lexicon ran and passed it
    assert [r["degraded"] for r in recs] == [["guard-unsafe-lexicon-only"]] * 3


def test_the_policy_version_changes_when_the_gateway_adds_the_lexicon(tmp_path: Path) -> None:
    # decisions a gateway cached while it served the guard without an unsafe check (Redis
    # keeps them for their TTL across an upgrade) must not be served by one that runs it
    from gateway.pipeline import _load_guard
    from routers.artifacts import artifact_version

    art = _lexicon_only_guard(tmp_path)
    assert _load_guard(art, None, "t")[1] == artifact_version(art) + "+lexicon"
    full = _code_chat_guard(tmp_path)
    assert _load_guard(full, None, "t")[1] == artifact_version(full)


async def test_a_guard_artifact_as_the_router_runs_the_lexicon_too(
        ups, tmp_path: Path) -> None:
    art = _lexicon_only_guard(tmp_path)
    cfg = base_config(ups[0].base, ups[1].base, router="guard", artifact=str(art),
                      on_reject={"action": "error", "status": 403, "message": "Refused."})
    cfg["policies"][0].pop("routes")
    cfg["policies"][0].pop("params")
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions",
                         json=chat("auto", "fix this bug in my code, those people are vermin"))
        assert r.status_code == 403, r.text
        r = await c.post("/v1/chat/completions", json=chat("auto", f"{PAD}{UNSAFE} {PAD}"))
        assert r.status_code == 403, r.text


def test_both_stages_of_a_two_stage_guard_get_the_lexicon() -> None:
    from routers.guard_cascade import GuardCascade
    from tests.unit.test_guard_cascade import BACK, BACK_SPEC, FRONT, TRAIN

    texts = [t for v in TRAIN.values() for t in v]
    labels = [k for k, v in TRAIN.items() for _ in v]

    def fit(emb: HashingEmbedder) -> GuardRouter:
        g = GuardRouter(method="knn", k=3, unsafe=False, target_frr=0.25)
        return g.fit(emb.embed(texts), guard_table_from_labels(texts, labels), embedder=emb)

    # band infinite: every query is escalated, and the back guard's verdict is taken whole
    c = GuardCascade(fit(FRONT), fit(BACK), band=float("inf"), back_embedder=BACK,
                     back_spec=BACK_SPEC)
    q = ["fix this bug in my code, those people are vermin"]
    assert not c.verdict(FRONT.embed(q), q)[0].rejected
    assert not c.lexicon_served
    assert c.serve_lexicon() and not c.serve_lexicon()  # added once
    assert c.lexicon_served
    assert c.unsafe_layers_ == ["lexicon"] and c.back.unsafe_layers_ == ["lexicon"]
    v = c.verdict(FRONT.embed(q), q)[0]
    assert v.stage == "back" and v.rejected and v.reject_reason == "unsafe"
