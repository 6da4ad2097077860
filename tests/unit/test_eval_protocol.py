"""The evaluation protocol (issue 15), with hand-computed values: choices on validation,
``reached k/n``, splits by text, combined false-rejection calibration, the availability rule,
provenance and generated doc blocks."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from evals import metrics as M
from evals import report as R
from evals import routing_eval as RE
from evals.provenance import DEVELOPMENT_SEEDS, REPORT_SEEDS, seed_list
from routers.base import RoutingTable, normalise_text
from routers.guard import GuardRouter, calibrate_threshold

# --------------------------------------------------------------------------- knob on validation


def _two(weak: list[float], strong: list[float]) -> RoutingTable:
    n = len(weak)
    S = np.stack([weak, strong], axis=1).astype(float)
    C = np.tile([1.0, 10.0], (n, 1))
    return RoutingTable([f"p{i}" for i in range(n)], [f"q{i}" for i in range(n)],
                        ["weak", "strong"], S, C)


def test_cost_knob_is_chosen_on_validation_and_read_on_test() -> None:
    # validation: prompts 1 and 2 need the strong model to reach its quality (1.0); the
    # advantages rank them first, so the cheapest validation threshold sends exactly them:
    # the quantile of [0.1, 0.2, 0.8, 0.9] at level 0.66 = 0.2 + 0.98 * 0.6 = 0.788
    val = _two([1, 0, 0, 1], [1, 1, 1, 1])
    test = _two([0, 1, 0, 0], [1, 1, 1, 1])
    pv = np.array([[0, 0.1], [0, 0.9], [0, 0.8], [0, 0.2]])
    pt = np.array([[0, 0.5], [0, 0.85], [0, 0.79], [0, 0.1]])
    r = RE.evaluate_predictions(pv, pt, val, test, strong=1, knob_costs=np.array([1.0, 10.0]))
    assert r["knob_setting"]["advantage_threshold"] == pytest.approx(0.788)
    # on test that threshold sends prompts 1 and 2 to the strong model: quality (0+1+1+0)/4,
    # cost (1+10+10+1)/4 = 5.5 = 0.55 of the best single model's (strong: 1.0 at cost 10)
    assert r["quality"] == pytest.approx(0.5) and r["cost"] == pytest.approx(5.5)
    assert r["cost_at_best_single_quality_val"] == pytest.approx(0.55)
    assert r["quality_gap_val"] == pytest.approx(-0.5)
    # the test curve (a reference only) needs every prompt strong to reach 1.0: ratio 1.0
    assert r["cost_at_best_single_quality"] == pytest.approx(1.0)
    # the validation APGR is the one definition of evals.metrics on validation
    assert r["val_apgr"] == pytest.approx(M.apgr_of_advantage(
        pv[:, 1] - pv[:, 0], val.scores[:, 1], val.scores[:, 0]))


def _three() -> RoutingTable:
    """cheap (cost 1), mid (2), best (10); best is the best single model (quality 0.75)."""
    S = np.array([[1, 0, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
    C = np.tile([1.0, 2.0, 10.0], (4, 1))
    return RoutingTable([f"p{i}" for i in range(4)], [f"q{i}" for i in range(4)],
                        ["cheap", "mid", "best"], S, C)


def test_a_router_that_cannot_reach_the_quality_on_validation_is_deployed_as_the_best_model(
        ) -> None:
    val, test = _three(), _three()
    kc = np.array([1.0, 2.0, 10.0])
    # ranks the cheap model first everywhere: every knob setting sends every prompt to it,
    # quality 0.25 < 0.75 on validation; the knob falls back to its best setting (cost 1)
    blind = np.tile([0.9, 0.1, 0.5], (4, 1))
    r = RE.evaluate_predictions(blind, blind, val, test, strong=2, knob_costs=kc)
    assert not r["knob_setting"]["reaches_best_single_on_validation"]
    assert r["cost_at_best_single_quality_val"] == pytest.approx(0.1)  # 1 / 10
    assert r["quality_gap_val"] == pytest.approx(-0.5)  # 0.25 - 0.75
    # what is deployed for the best single's quality: that model itself, at its cost
    assert r["validation_reaches_best_single"] == 0.0
    assert r["cost_at_best_single_quality_deployed"] == pytest.approx(1.0)
    assert r["quality_gap_deployed"] == pytest.approx(0.0)
    # knowing the scores: prompt 0 to cheap, 1 to mid, 2 to best, 3 (nobody right) to
    # cheap: quality 0.75 at cost (1 + 2 + 10 + 1) / 4 = 3.5 = 0.35 of the best's 10
    sharp = val.scores.copy()
    r = RE.evaluate_predictions(sharp, sharp, val, test, strong=2, knob_costs=kc)
    assert r["validation_reaches_best_single"] == 1.0
    assert r["cost_at_best_single_quality_val"] == pytest.approx(0.35)
    assert r["cost_at_best_single_quality_deployed"] == pytest.approx(0.35)
    assert r["quality_gap_deployed"] == pytest.approx(0.0)


def test_the_simple_bar_is_set_by_a_baseline_at_the_quality_not_below_it() -> None:
    def row(val_cost: float, reach: bool, deployed: float) -> dict[str, float]:
        return {"cost_at_best_single_quality_val": val_cost,
                "quality_gap_val": 0.0 if reach else -0.1,
                "validation_reaches_best_single": float(reach),
                "cost_at_best_single_quality_deployed": deployed}

    mine = row(0.35, True, 0.35)
    # the kNN is cheaper at its knob only because it falls short of the quality; the LR
    # reaches it at 0.5: the bar is the LR's
    base = {"simple-knn": row(0.1, False, 1.0), "simple-lr": row(0.5, True, 0.5)}
    vs = RE.vs_simple(mine, base, two=False)
    assert vs is not None
    assert vs["metric"] == "cost_at_best_single_quality_deployed"
    assert vs["baseline"] == "simple-lr" and vs["margin"] == pytest.approx(0.15)
    assert vs["val_knob"]["baseline"]["cost_at_best_single_quality_val"] == 0.5
    assert vs["val_knob"]["selected"]["validation_reaches_best_single"] == 1.0


def test_select_on_validation_hand_values() -> None:
    assert M.select_on_validation({"a": 0.61, "b": 0.64, "c": None, "d": 0.64}) == ("b", 0.64)
    with pytest.raises(M.MetricError):
        M.select_on_validation({"a": None, "b": float("nan")})


def _fake_run(val: dict[str, float], test: dict[str, float]) -> dict:
    routers = {n: {"val_apgr": val[n], "apgr": test[n], "n_seeds": 2,
                   "cost_at_best_single_quality": 0.9, "cost_at_best_single_quality_reached": 1}
               for n in val}
    chosen, score = M.select_on_validation(val)
    return {"selected": {"method": chosen, "criterion": "validation APGR",
                         "validation_score": score},
            "table": {"models": ["s", "w"], "n_prompts": 10, "strong": "s"},
            "routers": routers, "baselines": {"random": {"apgr": 0.5, "n_seeds": 2}},
            "seeds": [1009, 2017], "seed_set": "report"}


def test_report_headline_is_the_selected_row_never_the_best_test_row(tmp_path: Path) -> None:
    # knn is better on validation, stack on test: the headline is knn
    run = _fake_run({"knn": 0.70, "stack": 0.66}, {"knn": 0.64, "stack": 0.69})
    assert run["selected"]["method"] == "knn"
    p = tmp_path / "run.json"
    p.write_text(json.dumps(run))
    table = R.render_block(f"routing-table {p}")
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]
    assert rows[0].startswith("| **knn** (selected on validation)")
    assert rows[1].startswith("| stack |") and "**" not in rows[1]
    assert "(reached 1/2)" in rows[0]
    head = R.render_block(f"routing-headline {p}")
    assert "| knn |" in head and "0.640" in head and "0.690" not in head


# --------------------------------------------------------------------------- reached k/n


def test_unreached_seeds_are_counted() -> None:
    agg = M.over_seeds([0.9, None, 0.7, None, 0.8])
    assert agg == {"mean": pytest.approx(0.8), "std": pytest.approx(np.std([0.9, 0.7, 0.8])),
                   "reached": 3, "n": 5}
    seeds = [{"cost_at_best_single_quality": v, "cost_at_best_single_quality_val": 1.0}
             for v in (0.9, None, 0.7, None, 0.8)]
    out = RE._aggregate(seeds, None)
    assert out["cost_at_best_single_quality_reached"] == 3 and out["n_seeds"] == 5
    assert out["cost_at_best_single_quality"] == pytest.approx(0.8)
    assert RE.cell(out, "cost_at_best_single_quality") == "0.800 ± 0.082 (reached 3/5)"
    # the headline figure exists in every seed
    assert RE.cell(out, "cost_at_best_single_quality_val") == "1.000"


# --------------------------------------------------------------------------- split by text


def test_split_never_puts_one_text_on_two_sides() -> None:
    base = [f"question number {i} about topic {i % 7}" for i in range(60)]
    # 20 duplicates that differ only in case and spacing
    prompts = base + [f"  QUESTION number {i}   about Topic {i % 7} " for i in range(20)]
    n = len(prompts)
    t = RoutingTable([f"p{i}" for i in range(n)], prompts, ["a", "b"],
                     np.zeros((n, 2)), np.ones((n, 2)))
    for seed in range(25):
        parts = t.split(seed=seed, val=0.2, test=0.2)
        assert sorted(np.concatenate(parts).tolist()) == list(range(n))
        texts = [{normalise_text(prompts[i]) for i in p} for p in parts]
        assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
        assert abs(len(parts[2]) - 16) <= 1 and abs(len(parts[1]) - 16) <= 1


# --------------------------------------------------------------------------- combined FRR


def test_combined_frr_calibration_hand_values() -> None:
    s = np.arange(1, 11) / 10.0  # 0.1 ... 1.0
    # 20 % of 10 = 2 rejections allowed; alone: threshold 0.8 rejects 0.9 and 1.0
    assert calibrate_threshold(s, 0.2) == pytest.approx(0.8)
    # the unsafe layer already rejects the query scoring 0.3: one rejection is left for the
    # OOD threshold, which rejects only 1.0 (threshold 0.9); 2 of 10 in all
    gone = np.zeros(10, bool)
    gone[2] = True
    thr = calibrate_threshold(s, 0.2, already_rejected=gone)
    assert thr == pytest.approx(0.9)
    assert np.mean((s > thr) | gone) == pytest.approx(0.2)
    # when the other layer uses up the budget the threshold rejects none of the rest
    gone[:3] = True
    thr = calibrate_threshold(s, 0.2, already_rejected=gone)
    assert not (s[~gone] > thr).any()


def test_guard_calibrates_ood_and_unsafe_rejections_together() -> None:
    from evals.datasets.guard import guard_table_from_labels
    from routers.embed import HashingEmbedder

    e = HashingEmbedder()
    train = [f"what is the weather in city {i}" for i in range(30)] + \
        [f"play song number {i} please" for i in range(30)]
    labels = ["weather"] * 30 + ["music"] * 30
    # 20 validation queries, one of them a lexicon hit: target 5 % allows one rejection
    val = [f"weather forecast for town {i}" for i in range(10)] + \
        [f"play track {i} now" for i in range(9)] + ["how do i make a pipe bomb"]
    val_labels = ["weather"] * 10 + ["music"] * 10
    g = GuardRouter(method="knn", target_frr=0.05)
    g.fit(e.embed(train), guard_table_from_labels(train, labels),
          validation=(e.embed(val), val_labels, val), embedder=e)
    rejected = [v.rejected for v in g.verdict(e.embed(val), val)]
    assert g.unsafe_val_rate_ == pytest.approx(0.05)
    assert g.val_frr_ == pytest.approx(0.05) and np.mean(rejected) == pytest.approx(0.05)
    assert rejected[-1]  # the one rejection is the unsafe query's


# --------------------------------------------------------------------------- availability


def test_every_method_is_scored_on_the_prompts_every_model_answered() -> None:
    rng = np.random.default_rng(0)
    n = 60
    S = (rng.uniform(size=(n, 3)) < [0.8, 0.6, 0.4]).astype(float)
    S[:12, 2] = np.nan  # model c was not run on the first 12 prompts
    C = np.tile([10.0, 3.0, 1.0], (n, 1))
    t = RoutingTable([f"p{i}" for i in range(n)], [f"prompt {i}" for i in range(n)],
                     ["a", "b", "c"], S, C, ["x" if i % 2 else "y" for i in range(n)])
    notes = RE.check_table(t)
    assert "12 of 60 prompts lack a score" in notes[0] and "c 12" in notes[0]
    X = rng.normal(size=(n, 8)).astype(np.float32)
    res = RE.evaluate(t, X, routers=["knn"], seeds=[5], progress=False)
    tr, va, te = t.split(seed=5, val=0.2, test=0.2)
    te_ok = te[te >= 12]
    sc = res["n_scored"][0]
    assert sc["test"] == len(te_ok) and sc["test_dropped"] == int((te < 12).sum())
    assert sc["validation"] == int((va >= 12).sum()) and sc["train"] == len(tr)
    # every single-model baseline averages over the same prompts
    for j, m in enumerate("abc"):
        assert res["baselines"][m]["quality"] == pytest.approx(S[te_ok, j].mean())
    assert res["baselines"]["oracle"]["missing_share"] == 0.0
    assert res["selected"]["method"] == "knn"


def test_too_few_complete_prompts_fail_before_embedding() -> None:
    S = np.full((30, 2), np.nan)
    S[:, 0] = 1.0
    S[:5, 1] = 0.0
    t = RoutingTable([f"p{i}" for i in range(30)], [f"q{i}" for i in range(30)],
                     ["a", "b"], S, np.ones((30, 2)))
    with pytest.raises(RE.EvalError, match="only 5 of 30 prompts"):
        RE.check_table(t)


# --------------------------------------------------------------------------- provenance


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    RE.cli_register(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_result_json_carries_selection_seeds_and_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(60):
        topic = ["math", "law"][i % 2]
        for m, cost, rate in (("big", 10.0, 0.9), ("small", 1.0, 0.5 if topic == "math"
                                                                 else 0.85)):
            rows.append(f"p{i},{topic} question {i},{m},{float(rng.uniform() < rate)},{cost}")
    data = tmp_path / "t.csv"
    data.write_text("prompt_id,prompt,model,score,cost\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--seeds", "2",
                     "--seed-set", "report", "--routers", "knn,mf", "--quiet",
                     "--cache-dir", str(tmp_path / "c"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert next(iter(res)) == "selected"
    sel = res["selected"]
    assert sel["method"] in ("knn", "mf") and "validation" in sel["criterion"]
    assert sel["validation_score"] == max(sel["candidates"].values())
    assert res["seeds"] == list(REPORT_SEEDS[:2]) == seed_list("report", 2)
    pv = res["provenance"]
    assert pv["seeds"]["development"] == list(DEVELOPMENT_SEEDS)
    assert not set(pv["seeds"]["report"]) & set(DEVELOPMENT_SEEDS)
    assert pv["data"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert pv["git"]["commit"] is None or len(pv["git"]["commit"]) == 40
    assert isinstance(pv["git"]["dirty"], bool) and isinstance(pv["git"]["changed"], list)
    assert pv["packages"]["numpy"] == np.__version__
    assert pv["encoder"]["name"] == "hashing-512"
    assert "--seed-set report" in pv["command"]


# --------------------------------------------------------------------------- doc blocks


def test_eval_report_regenerates_doc_blocks_from_committed_json(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.chdir(tmp_path)
    run = _fake_run({"knn": 0.70, "stack": 0.66}, {"knn": 0.64, "stack": 0.69})
    Path("run.json").write_text(json.dumps(run))
    doc = Path("doc.md")
    doc.write_text("intro\n<!-- BEGIN GENERATED routing-headline run.json -->\n"
                   "| stale | 0.99 |\n<!-- END GENERATED -->\nafter\n")
    assert R.update_docs([doc], check=True) == ["doc.md: routing-headline run.json"]
    assert "0.99" in doc.read_text()  # --check changes nothing
    assert R.update_docs([doc]) == ["doc.md: routing-headline run.json"]
    text = doc.read_text()
    assert "stale" not in text and "| knn |" in text and text.endswith("after\n")
    assert R.update_docs([doc], check=True) == []
    doc.write_text("<!-- BEGIN GENERATED routing-headline nope.json -->\n<!-- END GENERATED -->\n")
    with pytest.raises(FileNotFoundError):
        R.update_docs([doc])


# --------------------------------------------------------------------------- encoder variants


def test_encoder_variant_is_selected_on_validation_with_method_and_operating_point() -> None:
    from evals import guard_eval as GE

    class Emb:
        def __init__(self, name: str) -> None:
            self.name = name

    def run(val: dict[str, float], test: dict[str, float]) -> dict:
        methods = {k: {"method": k.split("@")[0], "target_frr": float(k.split("@")[1]),
                       "validation": {"gqr_score": v}, "gqr_score": test[k]}
                   for k, v in val.items()}
        return {"selected": {"validation_ood": {"source": "validation OOD rows of the data"}},
                "methods": methods, "embedding_seconds": 1.0}

    frozen = run({"guard-knn@0.05": 0.91, "guard-knn@0.02": 0.86},
                 {"guard-knn@0.05": 0.95, "guard-knn@0.02": 0.90})
    tuned = run({"guard-knn@0.05": 0.93, "guard-knn@0.02": 0.88},
                {"guard-knn@0.05": 0.92, "guard-knn@0.02": 0.89})
    out, emb, meta = GE._merge_encoder_variants(
        [("frozen", Emb("base"), None, frozen),
         ("finetuned-e2", Emb("base+ft"), {"epochs": 2}, tuned)], "gqr")
    # the fine-tuned encoder wins on validation (0.93 > 0.91) although frozen is better on test
    sel = out["selected"]
    assert sel["method"] == "finetuned-e2:guard-knn@0.05" and sel["validation_score"] == 0.93
    assert sel["encoder_variant"] == "finetuned-e2" and sel["encoder"] == "base+ft"
    assert sel["operating_point"] == {"target_frr": 0.05}
    assert emb.name == "base+ft" and meta == {"epochs": 2}
    assert len(out["methods"]) == 4 and out["embedding_seconds"] == 2.0
    assert GE._epochs("0,2,3") == [0, 2, 3]
    with pytest.raises(ValueError):
        GE._epochs("2,2")
