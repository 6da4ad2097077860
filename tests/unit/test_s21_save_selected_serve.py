"""``expertgate eval guard --save-selected`` then ``expertgate serve``: what the command says
at save time is what the gateway then does with the guard (where it is, which unsafe check
runs, what every response says)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from expertgate.cli import main
from tests.unit.gateway_helpers import base_config, chat, gateway_client

CODE = ["fix this bug in my code", "refactor this class", "why does my loop crash",
        "write a unit test for this function", "rename this variable"]
CHAT = ["tell me a joke", "how are you today", "what should i cook tonight",
        "recommend a good film", "say something nice"]


def _table(path: Path) -> Path:
    rows = [(f"{t} {i}", lab, "train") for lab, ts in (("coder", CODE), ("chatter", CHAT))
            for t in ts for i in range(5)]
    rows += [(f"{t} please", lab, "validation") for lab, ts in (("coder", CODE),
                                                                  ("chatter", CHAT)) for t in ts]
    rows += [(f"{t} now", lab, "test") for lab, ts in (("coder", CODE), ("chatter", CHAT))
             for t in ts[:3]]
    rows += [(t, "oos", "test") for t in ("capital of peru", "tallest mountain on earth")]
    rows += [(t, "oos", "validation") for t in ("weather in paris", "who won the cup")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        w.writerows(rows)
    return path


async def test_a_saved_guard_without_an_unsafe_layer_is_served_as_the_save_said(
        ups, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the note said the saved baseline-lr-knn "refuses unsafe queries only when they are out
    # of domain": the gateway in fact runs its unsafe lexicon for it and marks every
    # response x-expertgate-degraded: guard-unsafe-lexicon-only, which the user learnt only
    # from the first response; and "guard: {artifact: sv}" named the folder relative to
    # where the command ran, which a config file elsewhere reads relative to itself
    pytest.importorskip("skops")
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _table(tmp_path / "g.csv")
    assert main(["eval", "guard", "--data", "g.csv", "--embedder", "hashing", "--methods",
                 "baseline-lr-knn", "--latency-sample", "0", "--quiet",
                 "--save-selected", "sv"]) == 0
    err = capsys.readouterr().err
    art = tmp_path / "sv"
    assert f"guard: {{artifact: {art}}}" in err
    note = next(ln for ln in err.splitlines() if "note:" in ln)
    assert "baseline-lr-knn" in note and "no unsafe check of its own" in note
    assert "x-expertgate-degraded: guard-unsafe-lexicon-only" in note
    assert "unsafe lexicon" in note
    cfg = base_config(ups[0].base, ups[1].base, guard={"artifact": str(art)},
                      on_reject={"action": "error", "status": 403, "message": "Refused."})
    async with gateway_client(cfg, tmp_path) as (c, _):
        r = await c.post("/v1/chat/completions", json=chat("auto", "fix this bug in my code"))
        assert r.status_code == 200, r.text
        assert r.headers["x-expertgate-degraded"] == "guard-unsafe-lexicon-only"
        r = await c.post("/v1/chat/completions",
                         json=chat("auto", "fix this bug in my code, those people are vermin"))
        assert r.status_code == 403 and "lexicon" in r.json()["error"]["message"], r.text


def test_a_saved_two_stage_guard_is_said_with_how_to_serve_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --save-cascade DIR --quiet wrote the folder without a word (the progress line that
    # named it is silenced by --quiet), where --save-selected says where and how to serve
    pytest.importorskip("skops")
    from evals import guard_eval as G

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    # a hashing back encoder: the save's plumbing without exporting an ONNX model here
    monkeypatch.setattr(G._Cascade, "BACK_SPEC", {"kind": "hashing", "options": {"dim": 256}})
    monkeypatch.chdir(tmp_path)
    _table(tmp_path / "g.csv")
    assert main(["eval", "guard", "--data", "g.csv", "--embedder", "hashing", "--methods",
                 "guard-knn,guard-cascade", "--latency-sample", "0", "--quiet",
                 "--save-cascade", "two"]) == 0
    err = capsys.readouterr().err
    art = tmp_path / "two"
    assert (art / "cascade.json").is_file()
    assert f"saved the two-stage guard to {art}" in err
    assert f"guard: {{artifact: {art}}}" in err and "embedder: {kind: hashing}" in err
