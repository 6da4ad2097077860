"""Routing-table loaders and the data-set registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evals.datasets import data_dir
from evals.datasets.registry import REGISTRY, get, names, raw_url, verify
from evals.datasets.routing import (
    ROUTELLM_PRICES_PER_1M,
    ROUTELLM_STRONG,
    ROUTELLM_WEAK,
    load_llmrouter,
    load_logs,
    load_long,
    load_routellm,
    load_table,
)
from routers.base import RouterError

DATA = data_dir()
needs_data = pytest.mark.skipif(not (DATA / "routellm").is_dir(),
                                reason=f"shared data not found at {DATA}")

LONG = [
    {"prompt_id": "a", "prompt": "what is 2+2", "model": "small", "score": 1.0, "cost": 0.1,
     "category": "math"},
    {"prompt_id": "a", "prompt": "what is 2+2", "model": "big", "score": 1.0, "cost": 1.0,
     "category": "math"},
    {"prompt_id": "b", "prompt": "explain torts", "model": "big", "score": 0.8, "cost": 1.2,
     "category": "law"},
]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_load_long_all_file_types(tmp_path: Path, suffix: str) -> None:
    df = pd.DataFrame(LONG)
    p = tmp_path / f"t{suffix}"
    {".csv": lambda: df.to_csv(p, index=False),
     ".jsonl": lambda: df.to_json(p, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(p)}[suffix]()
    t = load_long(p)
    assert t.prompt_ids == ["a", "b"] and t.models == ["big", "small"]
    assert t.categories == ["math", "law"]
    assert np.isnan(t.scores[1, 1])  # "small" never answered "b"
    assert t.scores[1, 0] == pytest.approx(0.8)
    assert load_table(p, "long").content_hash() == t.content_hash()


def test_load_long_errors(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="no such file"):
        load_long(tmp_path / "missing.csv")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(RouterError, match="unknown file type"):
        load_long(tmp_path / "t.txt")
    with pytest.raises(RouterError, match="unknown table format"):
        load_table(tmp_path / "t.txt", "nope")


def test_load_logs_drops_rows_without_text_or_feedback(tmp_path: Path, capsys) -> None:
    recs = [
        {"request_id": "1", "policy": "auto", "expert": "small", "text": "hi there",
         "cost_usd": 0.001, "feedback_score": 1.0},
        {"request_id": "2", "policy": "auto", "expert": "big", "text": "hi there",
         "cost_usd": 0.01, "feedback_score": 0.5},
        {"request_id": "3", "policy": "auto", "expert": "big", "text": None,
         "cost_usd": 0.01, "feedback_score": 1.0},
        {"request_id": "4", "policy": "auto", "expert": "big", "text": "prove it",
         "cost_usd": 0.02, "feedback_score": None},
        {"request_id": "5", "policy": "auto", "expert": "big", "text": "prove it",
         "cost_usd": 0.02, "feedback_score": 0.0},
    ]
    p = tmp_path / "logs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    t = load_logs(p)
    err = capsys.readouterr().err
    assert "dropped 1 without text and 1 more without feedback; 3 kept" in err
    assert t.models == ["big", "small"] and t.prompts == ["hi there", "prove it"]
    np.testing.assert_allclose(t.scores, [[0.5, 1.0], [0.0, np.nan]])
    np.testing.assert_allclose(t.costs[0], [0.01, 0.001])
    pd.DataFrame(recs).to_parquet(tmp_path / "logs.parquet")
    assert load_table(tmp_path / "logs.parquet", "logs").content_hash() == t.content_hash()


def test_load_logs_refuses_bad_exports(tmp_path: Path) -> None:
    p = tmp_path / "l.jsonl"
    p.write_text(json.dumps({"request_id": "1", "expert": "a", "text": "x"}))
    with pytest.raises(RouterError, match="feedback_score"):
        load_logs(p)
    p.write_text(json.dumps({"request_id": "1", "expert": "a", "text": None,
                             "feedback_score": 1}))
    with pytest.raises(RouterError, match="no log record") as ei:
        load_logs(p)
    # every row dropped for want of text: say why, and what to change
    assert "log_prompts: true" in str(ei.value)


@needs_data
def test_routellm_mmlu_and_gsm8k() -> None:
    mmlu = load_table(DATA / "routellm", "routellm")
    assert len(mmlu) == 14042 - 5  # contaminated prompts dropped, as RouteLLM does
    assert sorted(mmlu.models) == sorted([ROUTELLM_STRONG, ROUTELLM_WEAK])
    assert len(set(mmlu.categories or [])) == 57
    s = mmlu.models.index(ROUTELLM_STRONG)
    assert np.mean(mmlu.scores[:, s]) == pytest.approx(0.806, abs=0.002)
    ratio = mmlu.mean_costs()[s] / mmlu.mean_costs()[1 - s]
    expected = ROUTELLM_PRICES_PER_1M[ROUTELLM_STRONG] / ROUTELLM_PRICES_PER_1M[ROUTELLM_WEAK]
    assert ratio == pytest.approx(expected)
    assert len(load_routellm(DATA / "routellm", "mmlu", drop_contaminated=False)) == 14042
    gsm = load_table(DATA / "routellm", "routellm-gsm8k")
    assert len(gsm) == 1319 - 12
    with pytest.raises(RouterError, match="benchmark"):
        load_routellm(DATA / "routellm", "mt_bench")


@needs_data
def test_llmrouter_nq() -> None:
    t = load_llmrouter(DATA / "llmrouter_nq")
    assert len(t) == 500 and len(t.models) == 6
    means = dict(zip(t.models, np.nanmean(t.scores, axis=0), strict=True))
    assert means["google/gemma-2-27b-it"] == pytest.approx(0.457, abs=0.001)
    cost = dict(zip(t.models, t.mean_costs(), strict=True))
    assert cost["meta/llama-3.1-70b-instruct"] == pytest.approx(125.9, abs=0.1)


def test_registry_records_sources() -> None:
    assert set(names()) == {"clinc150", "banking77", "routellm", "webquestions", "hatecheck",
                            "llmrouter_nq"}
    for ds in REGISTRY:
        assert ds.repo.startswith("https://github.com/") and len(ds.commit) == 40
        assert ds.license and ds.files
        for f in ds.files:
            assert len(f.sha256) == 64 and f.bytes > 0
    rl = get("routellm")
    assert len(rl.files) == 57 + 10
    assert raw_url(rl, rl.files[0]) == (
        "https://raw.githubusercontent.com/lm-sys/RouteLLM/"
        "0b64fdafe049e596a3f5657c219329f24af24198/routellm/evals/mmlu/responses/"
        "mmlu_abstract_algebra.csv")
    with pytest.raises(KeyError):
        get("nope")


@needs_data
def test_registry_verify(tmp_path: Path) -> None:
    assert verify("llmrouter_nq") == []
    assert verify("banking77") == []
    copy = tmp_path / "banking77"
    shutil.copytree(DATA / "banking77", copy)
    copy.chmod(0o755)
    (copy / "categories.json").chmod(0o644)
    (copy / "categories.json").write_text("[]")
    (copy / "test.csv").chmod(0o644)
    (copy / "test.csv").unlink()
    problems = verify("banking77", tmp_path)
    assert any("test.csv: missing" in p for p in problems)
    assert any("categories.json" in p and "bytes" in p for p in problems)
    assert verify("clinc150", tmp_path) == [f"clinc150: folder {tmp_path / 'clinc150'} is missing"]


def _routerbench_frame() -> pd.DataFrame:
    """LONG's prompts as RouterBench publishes a table: one row per prompt, per model a score
    column and ``|total_cost`` / ``|model_response`` columns, ``eval_name``, the oracle."""
    return pd.DataFrame({
        "sample_id": ["a", "b"], "prompt": ["what is 2+2", "explain torts"],
        "eval_name": ["math", "law"], "oracle_model_to_route_to": ["small", "big"],
        "small": [1.0, None], "small|model_response": ["4", None],
        "small|total_cost": [0.1, None],
        "big": [1.0, 0.8], "big|model_response": ["4", "a civil wrong"],
        "big|total_cost": [1.0, 1.2]})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_load_wide_is_the_long_table_one_row_per_prompt(tmp_path: Path, suffix: str) -> None:
    """A RouterBench-shaped file gives the same table as its long form: models found by
    their cost columns, an empty score a model not evaluated there, eval_name the category;
    responses and the oracle column are ignored."""
    df = _routerbench_frame()
    p = tmp_path / f"rb{suffix}"
    {".csv": lambda: df.to_csv(p, index=False),
     ".jsonl": lambda: df.to_json(p, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(p)}[suffix]()
    long = tmp_path / "long.csv"
    pd.DataFrame(LONG).to_csv(long, index=False)
    t = load_table(p, "routerbench")
    assert t.prompt_ids == ["a", "b"] and t.models == ["big", "small"]
    assert t.categories == ["math", "law"] and np.isnan(t.scores[1, 1])
    assert t.costs[1, 0] == pytest.approx(1.2)
    assert t.content_hash() == load_long(long).content_hash() == load_table(
        p, "wide").content_hash()


def test_load_wide_reads_turns_and_plain_columns(tmp_path: Path) -> None:
    """Without ids or categories: the row number and no category; ``|cost`` as the cost
    column; a prompt given as a list of turns is one text."""
    p = tmp_path / "w.json"
    p.write_text(json.dumps([
        {"prompt": ["write a poem", "now shorter"], "m1": 0.5, "m1|cost": 2.0, "m2": 1,
         "m2|cost": 3.0},
        {"prompt": "hello", "m1": 0.0, "m1|cost": 1.0, "m2": 1, "m2|cost": 1.5}]))
    t = load_table(p, "wide")
    assert t.prompt_ids == ["0", "1"] and t.categories is None
    assert t.prompts[0] == "write a poem\n\nnow shorter"
    assert t.scores.tolist() == [[0.5, 1.0], [0.0, 1.0]] and t.costs[0, 1] == 3.0


def test_load_wide_errors(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="pickles are not read"):
        load_table(tmp_path / "routerbench_0shot.pkl", "routerbench")
    cases = [
        (pd.DataFrame({"text": ["q"], "m": [1.0], "m|total_cost": [1.0]}), "prompt column"),
        (pd.DataFrame({"prompt": ["q"], "m": [1.0]}), "no model columns"),
        (pd.DataFrame({"prompt": ["q"], "m": [3.0], "m|total_cost": [1.0]}),
         r"scores must lie in \[0, 1\]"),
        (pd.DataFrame({"prompt": ["q"], "m": [1.0], "m|total_cost": [None]}),
         "missing, negative, infinite or non-numeric cost"),
        (pd.DataFrame({"prompt": ["q"], "m": [None], "m|total_cost": [None]}),
         "no model has a score"),
    ]
    for i, (df, msg) in enumerate(cases):
        p = tmp_path / f"bad{i}.parquet"
        df.to_parquet(p)
        with pytest.raises(RouterError, match=msg):
            load_table(p, "wide")


def _policy_logs(tmp_path: Path) -> Path:
    """Two policies' rated records, one rated request that every expert failed (expert null,
    status error) and one whose status says it failed although an expert is named."""
    recs = [{"request_id": str(i), "policy": "learned" if i < 6 else "sem",
             "router_version": "v1" if i < 4 else "v2", "status": "ok",
             "expert": "ab"[i % 2], "text": f"question {i}", "cost_usd": 0.001,
             "feedback_score": 0.5} for i in range(9)]
    recs.append({"request_id": "x", "policy": "learned", "router_version": "v2",
                 "status": "error", "expert": None, "text": "all down", "cost_usd": 0.0,
                 "feedback_score": 0.0})
    recs.append({"request_id": "y", "policy": "learned", "router_version": "v2",
                 "status": "error", "expert": "a", "text": "half down", "cost_usd": 0.0,
                 "feedback_score": 0.0})
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_load_logs_drops_rated_failures_and_counts_them(tmp_path: Path, capsys) -> None:
    """Report h3 D2: a rated request no expert served became a NaN model, and training died
    with a TypeError blaming --param."""
    p = _policy_logs(tmp_path)
    t = load_logs(p)
    err = capsys.readouterr().err
    assert "2 rated failed request(s) that no expert served; 9 kept" in err
    assert t.models == ["a", "b"] and "all down" not in t.prompts
    pd.read_json(p, lines=True).to_parquet(tmp_path / "mixed.parquet")
    assert load_logs(tmp_path / "mixed.parquet").content_hash() == t.content_hash()
    # only failures rated: the error says so
    only = tmp_path / "failed.jsonl"
    only.write_text(p.read_text().splitlines()[-2] + "\n")
    with pytest.raises(RouterError, match="no expert served"):
        load_logs(only)


def test_load_logs_selects_a_policy_and_warns_about_a_mix(tmp_path: Path, capsys) -> None:
    """Report h3 D8: a log of two policies was merged without a word."""
    p = _policy_logs(tmp_path)
    load_logs(p)
    err = capsys.readouterr().err
    assert "warning: the records mix 2 policies (learned 6 (router versions v1 4, v2 2); " \
           "sem 3); pass --policy NAME" in err
    t = load_logs(p, policy="sem")
    err = capsys.readouterr().err
    assert "3 of 11 records from policy 'sem'" in err and "warning" not in err
    assert t.prompts == ["question 6", "question 7", "question 8"]
    load_logs(p, policy="learned")
    assert "note: the records come from several router versions" in capsys.readouterr().err
    with pytest.raises(RouterError, match=r"no record of policy 'nope' \(records by policy: "
                                          r"learned 8, sem 3\)"):
        load_logs(p, policy="nope")
    with pytest.raises(RouterError, match="routing logs only"):
        load_table(p, "long", policy="sem")
