"""Guard metrics against hand-computed cases, guard-table loading, and a small end-to-end run of
``expertgate eval guard --data <generated CSV> --embedder hashing --json OUT``."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from evals.datasets.guard import (
    GuardDataError,
    load_gqr_bench,
    load_guard_data,
    load_guard_table,
    load_suite,
)
from evals.guard_eval import (
    DEFAULT_METHODS,
    cli_register,
    false_rejection_rate,
    gqr_score,
    in_domain_accuracy,
    latency_percentiles,
    ood_accuracy,
)

# --------------------------------------------------------------------------- metrics


def test_gqr_score_is_the_harmonic_mean_of_id_and_mean_ood_accuracy() -> None:
    # mean OOD = (0.8 + 0.9 + 1.0) / 3 = 0.9; 2 * 0.9 * 0.9 / 1.8 = 0.9
    assert gqr_score(0.9, [0.8, 0.9, 1.0]) == pytest.approx(0.9)
    # 2 * 0.6 * 1.0 / 1.6 = 0.75
    assert gqr_score(0.6, [1.0]) == pytest.approx(0.75)
    assert gqr_score(0.0, [0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        gqr_score(0.5, [])


def test_in_domain_accuracy_counts_rejections_as_wrong() -> None:
    pred = ["a", "b", "a", "c"]
    true = ["a", "b", "b", "c"]
    rejected = [False, True, False, False]
    # row 0 right, row 1 rejected, row 2 wrong label, row 3 right -> 2 / 4
    assert in_domain_accuracy(pred, true, rejected) == pytest.approx(0.5)
    assert false_rejection_rate(rejected) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        in_domain_accuracy(pred, true[:3], rejected)


def test_ood_accuracy_is_the_rejection_rate_of_one_set() -> None:
    assert ood_accuracy([True, True, False, True, False]) == pytest.approx(0.6)
    assert ood_accuracy(np.ones(7, bool)) == 1.0
    assert np.isnan(ood_accuracy([]))


def test_latency_percentiles() -> None:
    p = latency_percentiles(list(range(1, 101)))
    assert p["latency_p50_ms"] == pytest.approx(50.5)
    assert p["latency_p99_ms"] == pytest.approx(99.01)


def test_each_query_is_timed_with_the_fitted_objects_frozen_as_the_gateway_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The latency loop freezes the collector's objects as the gateway does after start-up
    (``gc_freeze``), for every method alike, and thaws them after, unless its caller had
    frozen objects of its own. (The collector's calls are recorded, not made: other tests'
    servers in this process freeze objects too.)"""
    import gc

    from evals.guard_eval import _latency, _Method

    calls: list[str] = []
    frozen = {"count": 0}
    monkeypatch.setattr(gc, "get_freeze_count", lambda: frozen["count"])
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "unfreeze", lambda: calls.append("unfreeze"))

    class Probe(_Method):
        uses_embeddings = False

        def predict(self, X, texts):  # type: ignore[no-untyped-def]
            calls.append("predict")

    times = _latency(Probe(), None, [f"query {i}" for i in range(15)])  # ten warm up first
    assert len(times) == 15 and all(t >= 0 for t in times)
    assert calls == ["collect", "freeze", *["predict"] * 25, "unfreeze"]
    calls.clear()
    frozen["count"] = 1000  # the caller froze its own objects: they stay frozen
    _latency(Probe(), None, [f"query {i}" for i in range(15)])
    assert calls == ["collect", "freeze", *["predict"] * 25]


# --------------------------------------------------------------------------- data


_ROUTES = {
    "weather": ["what is the weather in {x}", "will it rain in {x} tomorrow",
                "how hot is it in {x} today", "is it snowing in {x}",
                "weather forecast for {x} this weekend"],
    "banking": ["what is the balance of my {x} account", "transfer money to my {x} account",
                "how do i close my {x} account", "is there a fee on my {x} account",
                "freeze my {x} account card"],
    "music": ["play some {x} music", "put on a {x} playlist", "skip this {x} song",
              "turn up the {x} track", "add this {x} album to my library"],
}
_FILL = {"weather": ["paris", "london", "tokyo", "berlin", "madrid", "rome", "oslo", "cairo"],
         "banking": ["savings", "checking", "joint", "business", "student", "travel", "gold",
                     "premium"],
         "music": ["jazz", "rock", "classical", "pop", "techno", "folk", "blues", "reggae"]}
_OOD = ["who wrote the novel war and peace", "what is the capital of australia",
        "how many moons does jupiter have", "when did the roman empire fall",
        "what is the boiling point of nitrogen", "who painted the mona lisa",
        "how tall is mount everest", "what language do people speak in brazil"]


def _write_csv(path: Path, with_validation: bool = True, one_label: bool = False) -> Path:
    rows = []
    for label, templates in _ROUTES.items():
        fills = _FILL[label]
        for i, f in enumerate(fills):
            for j, t in enumerate(templates):
                split = ("test" if (i + j) % 4 == 0 else
                         "validation" if with_validation and (i + j) % 4 == 1 else "train")
                rows.append({"text": t.format(x=f), "label": "assistant" if one_label
                             else label, "split": split})
    rows += [{"text": t, "label": "webq", "split": "test"} for t in _OOD]
    rows += [{"text": t.upper() + "?", "label": "oos", "split": "test"} for t in _OOD[:4]]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_load_guard_data_splits_and_ood_sets(tmp_path: Path) -> None:
    d = load_guard_data(_write_csv(tmp_path / "g.csv"))
    assert d.labels == ["banking", "music", "weather"]
    assert set(d.ood) == {"webq", "oos"}
    assert len(d.ood["webq"]) == 8 and len(d.ood["oos"]) == 4
    assert len(d.train_texts) + len(d.val_texts) + len(d.test_texts) == 3 * 8 * 5
    assert set(d.val_labels) <= set(d.labels) and set(d.test_labels) <= set(d.labels)
    table = load_guard_table(tmp_path / "g.csv")
    assert table.categories is not None and len(table) == len(d.train_texts)
    assert table.models == d.labels  # a pure guard table: each label is its own expert
    assert np.all(table.scores.sum(axis=1) == 1.0)


def test_a_row_without_a_label_is_an_error_not_a_label(tmp_path: Path) -> None:
    # an empty CSV label cell was read as the label '': one more in-domain label ('' among
    # the labels, n_labels one higher), trained and scored without a word
    import pandas as pd

    df = pd.read_csv(_write_csv(tmp_path / "g.csv"))
    df.loc[4, "label"] = float("nan")  # an empty cell in the CSV
    df.to_csv(tmp_path / "h.csv", index=False)
    df.to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "h.parquet")
    for f in ("h.csv", "h.jsonl", "h.parquet"):
        with pytest.raises(GuardDataError, match=rf"{f}: row 5 has no label"):
            load_guard_data(tmp_path / f)
    df.loc[4, "label"], df.loc[6, "text"] = "music", "  "
    df.to_parquet(tmp_path / "h.parquet")
    with pytest.raises(GuardDataError, match=r"row 7 has no text"):
        load_guard_data(tmp_path / "h.parquet")


def test_validation_is_carved_from_train_when_absent(tmp_path: Path) -> None:
    p = _write_csv(tmp_path / "g.csv", with_validation=False)
    d = load_guard_data(p, val_fraction=0.2, seed=1)
    assert d.val_texts and "seed 1" in d.meta["validation"]
    assert not set(d.val_texts) & set(d.train_texts)
    # load_guard_table keeps the whole train split (the guard holds out its own part)
    assert len(load_guard_table(p)) == len(d.train_texts) + len(d.val_texts)


def test_ood_rows_in_train_are_refused_in_validation_kept_for_selection(tmp_path: Path
                                                                       ) -> None:
    p = tmp_path / "bad.jsonl"
    rows = [{"text": "hello", "label": "greet", "split": "train"},
            {"text": "bye", "label": "greet", "split": "train"},
            {"text": "capital of peru", "label": "oos", "split": "validation"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = load_guard_data(p)
    assert d.val_ood == {"oos": ["capital of peru"]} and not d.ood
    assert "capital of peru" not in d.train_texts + d.val_texts
    p.write_text("\n".join(json.dumps(r) for r in [
        *rows[:2], {"text": "capital of peru", "label": "oos", "split": "train"}]) + "\n")
    with pytest.raises(GuardDataError, match="in-domain rows only"):
        load_guard_data(p)
    with pytest.raises(GuardDataError):
        load_guard_data(tmp_path / "missing.csv")


def test_accept_kind_is_reported_apart(tmp_path: Path) -> None:
    p = tmp_path / "k.jsonl"
    rows = [{"text": f"hello {i}", "label": "greet", "split": "train"} for i in range(6)]
    rows += [{"text": "i love my neighbours", "label": "nonhateful", "split": "test",
              "kind": "accept"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = load_guard_data(p)
    assert d.accept == {"nonhateful": ["i love my neighbours"]} and not d.ood


def test_gqr_bench_layout(tmp_path: Path) -> None:
    for stem, rows in {
        "train": [{"text": "can my landlord evict me", "domain": "law", "label": 0},
                  {"text": "how do index funds work", "domain": "finance", "label": 1}],
        "eval": [{"text": "is a verbal contract binding", "label": 0}],
        "test": [{"text": "my knee hurts after running", "domain": "healthcare", "label": 2}],
        "ood_test": [{"text": "who won the 1998 world cup", "label": 3, "domain": "ood",
                      "dataset": "web_questions"},
                     {"text": "you are an idiot", "label": 3, "domain": "ood",
                      "dataset": "olid"}],
    }.items():
        (tmp_path / f"{stem}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    d = load_gqr_bench(tmp_path)
    assert d.train_labels == ["law", "finance"] and d.val_labels == ["law"]
    assert d.test_labels == ["healthcare"]
    assert set(d.ood) == {"web_questions", "olid"}


def test_shared_suites_when_present() -> None:
    try:
        d = load_suite("clinc150-gqr")
    except GuardDataError as e:
        pytest.skip(f"shared data not available: {e}")
    assert len(d.labels) == 10 and len(d.train_texts) == 15000
    assert {k: len(v) for k, v in d.ood.items()} == {
        "clinc_oos": 1000, "webquestions": 2032, "hatecheck_hateful": 2563}
    assert len(d.accept["hatecheck_nonhateful"]) == 1165
    i = load_suite("clinc150-intents")
    assert len(i.labels) == 150 and list(i.ood) == ["oos"] and len(i.val_texts) == 3000
    b = load_suite("banking77")
    assert len(b.labels) == 77 and len(b.train_texts) + len(b.val_texts) == 10003
    assert load_suite("banking77-domain").labels == ["banking"]


# --------------------------------------------------------------------------- end to end


def _write_yaml(path: Path, data: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="expertgate eval guard")
    cli_register(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_eval_guard_end_to_end_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    out = tmp_path / "res.json"
    methods = "baseline-tfidf-svm,baseline-lr-knn,guard-knn,guard-mahalanobis,guard-msp"
    rc = _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                   "--methods", methods, "--latency-sample", "20", "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["suite"] == "g" and res["seed"] == 0 and res["target_frr"] == 0.05
    assert set(res["methods"]) == set(methods.split(","))
    for r in res["methods"].values():
        for key in ("in_domain_accuracy", "ood_accuracy", "gqr_score", "false_rejection_rate"):
            assert 0.0 <= r[key] <= 1.0, key
        assert set(r["ood_accuracy_by_set"]) == {"webq", "oos"}
        assert r["ood_accuracy"] == pytest.approx(np.mean(list(r["ood_accuracy_by_set"].values())))
        assert r["latency_p50_ms"] > 0 and r["latency_p99_ms"] >= r["latency_p50_ms"]
    assert res["methods"]["guard-knn"]["latency_includes_embedding"] is True
    # the recorded command names only what the run read: no epochs without --finetune
    assert "--embedder hashing" in res["command"] and "--finetune" not in res["command"]
    table = capsys.readouterr().out
    assert "guard-knn" in table and "GQR" in table


def test_eval_guard_argument_errors(tmp_path: Path) -> None:
    assert _run_cli([]) == 2  # neither --suite nor --data
    data = _write_csv(tmp_path / "g.csv")
    assert _run_cli(["--data", str(data), "--methods", "nope", "--embedder", "hashing",
                     "--quiet"]) == 2


def test_expertgate_cli_dispatches_to_eval_guard(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the full `expertgate eval ...` group imports every eval module; skip until they exist
    pytest.importorskip("evals.routing_eval")
    pytest.importorskip("evals.report")
    from expertgate.cli import main

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    rc = main(["eval", "guard", "--data", str(_write_csv(tmp_path / "g.csv")), "--embedder",
               "hashing", "--methods", "guard-centroid", "--latency-sample", "5", "--quiet",
               "--json", str(out)])
    assert rc == 0 and "guard-centroid" in json.loads(out.read_text())["methods"]


def test_eval_guard_runs_the_fused_guard_and_selects_on_validation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    out = tmp_path / "res.json"
    rc = _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                   "--methods", "baseline-tfidf-svm,guard-fused", "--target-frr", "0.05,0.1",
                   "--latency-sample", "10", "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["methods"]["guard-fused@0.1"]["fit"]["params"]["method"] == "fused"
    val = {k: r["validation"]["gqr_score"] for k, r in res["methods"].items()}
    # no validation OOD rows: three labels -> one held out as pseudo-OOD; the best
    # validation score wins (ties: the first candidate in order)
    assert res["selected"]["validation_ood"]["source"] == "leave-labels-out"
    assert res["selected"]["validation_score"] == max(val.values())
    assert val[res["selected"]["method"]] == max(val.values())


def test_int8_vectors_are_cached_apart_and_quantize_needs_onnx(tmp_path: Path) -> None:
    from routers.embed import HashingEmbedder, embedding_cache_path

    fp32, int8 = HashingEmbedder(dim=8), HashingEmbedder(dim=8)
    # the attribute OnnxMiniLMEmbedder(quantize=True) has
    int8.quantize = True  # type: ignore[attr-defined]
    texts = ["a query", "another"]
    assert embedding_cache_path(fp32, texts, tmp_path) != \
        embedding_cache_path(int8, texts, tmp_path)
    data = _write_csv(tmp_path / "g.csv")
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--quantize", "--quiet"]) == 2


def test_guard_cascade_without_validation_ood_rows_takes_the_leave_labels_out_rule(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evals import guard_eval as G

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    # a hashing back encoder: the rule's plumbing without exporting an ONNX model here
    monkeypatch.setattr(G._Cascade, "BACK_SPEC", {"kind": "hashing", "options": {"dim": 256}})
    data = _write_csv(tmp_path / "g.csv")  # OOD rows in test only
    out = tmp_path / "res.json"
    assert _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                     "--methods", "baseline-tfidf-svm,guard-cascade", "--latency-sample", "10",
                     "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["selected"]["validation_ood"]["source"] == "leave-labels-out"
    c = res["methods"]["guard-cascade"]
    esc = c["fit"]["escalation"]
    assert "leave-labels-out" in esc["source"]
    assert esc["validation_escalation_share"] <= esc["cap"]
    assert 0.0 <= c["validation"]["gqr_score"] <= 1.0  # selection figures of that fit
    assert 0.0 <= c["cascade"]["test_escalation_share"] <= 1.0


def test_the_two_stage_guard_backs_with_all_six_int8_layers_unless_told(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The back encoder is int8 MiniLM with all its layers (chosen on the development seeds'
    validation over the first three); --cascade-back-layers K keeps the first K, checked
    against the model before anything is embedded."""
    from evals import guard_eval as G

    assert G._Cascade(0.05, 0).back_spec == {"kind": "onnx",
                                             "options": {"quantize": True, "threads": 1}}
    assert G._Cascade(0.05, 0, 3).back_spec["options"] == {"quantize": True, "threads": 1,
                                                           "layers": 3}
    assert G._Cascade.BACK_SPEC["options"] == {"quantize": True, "threads": 1}  # untouched
    data = _write_csv(tmp_path / "g.csv")
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods",
                     "guard-cascade", "--cascade-back-layers", "9", "--quiet"]) == 2
    assert "--cascade-back-layers: layers must be an integer from 1 to 6" in \
        capsys.readouterr().err


def test_leave_groups_out_holds_topic_groups_out_of_train_and_validation(tmp_path: Path
                                                                       ) -> None:
    from evals.datasets.guard import leave_groups_out, pseudo_ood

    d = load_guard_data(_write_csv(tmp_path / "g.csv", one_label=True))
    assert d.labels == ["assistant"] and not d.val_ood
    reduced, info = pseudo_ood(d, seed=3)  # one label: topic groups, not labels
    assert info["source"] == "leave-groups-out" and info["held_out_groups"]
    pseudo = reduced.val_ood["held_out_groups"]
    assert len(pseudo) == info["n_pseudo_ood"] > 0
    # every validation row is either still in-domain or pseudo-OOD; test is untouched
    assert sorted([*reduced.val_texts, *pseudo]) == sorted(d.val_texts)
    assert set(reduced.train_texts) < set(d.train_texts) and not reduced.test_texts
    assert leave_groups_out(d, seed=3)[1] == info  # seeded
    with pytest.raises(GuardDataError, match="too few validation rows"):
        leave_groups_out(d, groups=len(d.val_texts))


def test_one_route_without_validation_ood_rows_selects_among_the_defaults_that_can_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_csv(tmp_path / "g.csv", one_label=True)
    out = tmp_path / "res.json"
    assert _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                     "--latency-sample", "5", "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["selected"]["validation_ood"]["source"] == "leave-groups-out"
    # the lexical and fused guards separate labels by margins, the softmax ones by scores:
    # with one label they sit out
    assert set(res["skipped"]) == {"guard-lexical-knn", "guard-lexical-mlp-knn",
                                   "guard-fused", "guard-msp", "guard-mlp-knn+msp"}
    assert set(res["methods"]) == set(DEFAULT_METHODS) - set(res["skipped"])
    assert all(0.0 <= r["validation"]["gqr_score"] <= 1.0 for r in res["methods"].values())
    # asked for by name, a method that cannot run is an error that says why
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods",
                     "guard-knn,guard-fused", "--quiet"]) == 2
    assert "guard-fused needs at least 2 in-domain labels" in capsys.readouterr().err


def test_save_selected_writes_the_guard_the_gateway_serves_at_its_operating_point(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("skops")
    from gateway.config import load_config
    from gateway.pipeline import _load_guard
    from routers.embed import make_embedder

    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    out, art = tmp_path / "res.json", tmp_path / "guard"
    assert _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                     "--methods", "guard-knn,guard-mlp-knn", "--target-frr", "0.05,0.1",
                     "--latency-sample", "5", "--quiet", "--save-selected", str(art)]) == 0
    res = json.loads(out.read_text())
    sel = res["selected"]
    assert sel["saved"] == {"path": str(art), "format": "guard",
                            "embedder": make_embedder("hashing").name}
    assert f"guard: {{artifact: {art}}}" in capsys.readouterr().err
    # the artifact records how to build its embedder: a config that names none serves it
    # with that one, not the gateway's default
    cfg = load_config(_write_yaml(tmp_path / "gw.yaml", {
        "experts": [{"name": "a", "api_base": "http://127.0.0.1:9/v1"}],
        "policies": [{"name": "p", "routes": [{"name": "r", "expert": "a",
                                                "examples": ["hello"]}],
                      "guard": {"artifact": str(art)}}]}))
    assert cfg.embedder.kind == "hashing" and cfg.embedder_from == str(art)
    emb = make_embedder("hashing")
    guard, _ = _load_guard(art, emb, "test")  # what a policy's guard: {artifact} loads
    assert guard.target_frr == sel["operating_point"]["target_frr"]
    # the served guard is the evaluated one: its in-domain test rejections are the run's FRR
    d = load_guard_data(data)
    rejected = [v.rejected for v in guard.verdict(emb.embed(d.test_texts), d.test_texts)]
    assert np.mean(rejected) == pytest.approx(
        res["methods"][sel["method"]]["false_rejection_rate"])
    # a TF-IDF baseline selected: the results are written, nothing is saved, exit 1
    assert _run_cli(["--data", str(data), "--json", str(out), "--embedder", "hashing",
                     "--methods", "baseline-tfidf-svm", "--latency-sample", "5", "--quiet",
                     "--save-selected", str(tmp_path / "none")]) == 1
    assert "evaluation baseline" in json.loads(out.read_text())["selected"]["saved"]["error"]
    assert not (tmp_path / "none").exists()


def test_typos_read_every_method_on_misspelt_test_sets_and_never_select(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    methods = "baseline-tfidf-svm,guard-knn,guard-fused"
    common = ["--data", str(data), "--embedder", "hashing", "--methods", methods,
              "--latency-sample", "5", "--quiet"]
    assert _run_cli([*common, "--json", str(tmp_path / "clean.json")]) == 0
    capsys.readouterr()
    assert _run_cli([*common, "--typos", "0.3", "--json", str(tmp_path / "typos.json")]) == 0
    assert "GQR typos" in capsys.readouterr().out
    clean = json.loads((tmp_path / "clean.json").read_text())
    res = json.loads((tmp_path / "typos.json").read_text())
    # a test reading only: the selection and the clean figures are those of the clean run
    assert res["selected"]["method"] == clean["selected"]["method"]
    for name, r in res["methods"].items():
        c = clean["methods"][name]
        assert r["gqr_score"] == c["gqr_score"]
        assert {k: v for k, v in r["validation"].items() if k != "typos"} == c["validation"]
        t = r["typos"]
        assert t["rate"] == 0.3 and 0.0 < t["test_words_misspelt"] < 0.3
        for key in ("in_domain_accuracy", "gqr_score", "in_domain_same_outcome"):
            assert 0.0 <= t[key] <= 1.0, key
        assert set(t["ood_accuracy_by_set"]) == set(c["ood_accuracy_by_set"])
        # the same reading on validation (leave-labels-out here), for choices about it
        assert 0.0 <= r["validation"]["typos"]["gqr_score"] <= 1.0
    # hashed character n-grams change with the spelling: some outcome changes somewhere
    assert min(r["typos"]["in_domain_same_outcome"] for r in res["methods"].values()) < 1.0
    for bad in ("0", "1.5"):
        assert _run_cli([*common, "--typos", bad]) == 2


def test_augment_typos_trains_on_a_misspelt_copy_of_each_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    common = ["--data", str(data), "--embedder", "hashing", "--methods", "guard-knn",
              "--latency-sample", "5", "--quiet"]
    assert _run_cli([*common, "--augment-typos", "0", "--json",
                     str(tmp_path / "clean.json")]) == 0
    assert "augment_typos" not in json.loads((tmp_path / "clean.json").read_text())
    assert _run_cli([*common, "--augment-typos", "0.5", "--json",
                     str(tmp_path / "aug.json")]) == 0
    clean = json.loads((tmp_path / "clean.json").read_text())
    res = json.loads((tmp_path / "aug.json").read_text())
    aug = res["augment_typos"]
    n = clean["data"]["n_train"]
    # every query with a long word gets a copy (a copy without a slip is no copy)
    assert 0 < aug["added_train_queries"] <= n and aug["rate"] == 0.5
    assert res["data"]["n_train"] == n + aug["added_train_queries"]
    assert res["data"]["n_test_in_domain"] == clean["data"]["n_test_in_domain"]  # untouched
    assert "--augment-typos 0.5" in res["command"]
    assert _run_cli([*common, "--augment-typos", "2"]) == 2
    # the default: a copy with a fifth of the long words slipped
    assert _run_cli([*common, "--json", str(tmp_path / "default.json")]) == 0
    assert json.loads((tmp_path / "default.json").read_text())["augment_typos"]["rate"] == 0.2
