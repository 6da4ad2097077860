"""``expertgate eval report``: Markdown, PNGs and figures.json from routing and guard JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from evals import report as R
from evals import routing_eval as RE
from routers.base import RoutingTable


def _routing_run(two: bool) -> dict:
    rng = np.random.default_rng(0)
    n = 80
    models = ["strong", "weak"] if two else ["a", "b", "c"]
    scores = (rng.uniform(size=(n, len(models))) < np.linspace(0.8, 0.3, len(models))
              ).astype(float)
    costs = np.tile(np.linspace(10.0, 1.0, len(models)), (n, 1))
    table = RoutingTable([str(i) for i in range(n)], [f"q{i}" for i in range(n)], models,
                         scores, costs, ["x" if i % 2 else "y" for i in range(n)])
    X = rng.normal(size=(n, 8)).astype(np.float32)
    res = RE.evaluate(table, X, routers=["knn"], seeds=[0, 1], progress=False)
    return {"data": "synthetic.csv", "command": "expertgate eval routing --data synthetic.csv",
            "embedder": "test", **res}


GUARD = {"suite": "clinc150", "command": "expertgate eval guard --suite clinc150", "seed": 0,
         "methods": {"knn": {"in_domain_accuracy": 0.9, "ood_accuracy": 0.8,
                             "ood_accuracy_by_set": {"webq": 0.8}, "gqr_score": 0.85,
                             "false_rejection_rate": 0.05, "latency_p50_ms": 1.0,
                             "latency_p99_ms": 2.0,
                             "score_histogram": {"edges": [0, 0.5, 1], "in_domain": [9, 1],
                                                 "ood": [2, 8]}}}}


def test_report_renders_routing_and_guard_runs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "two.json").write_text(json.dumps(_routing_run(True)))
    (runs / "three.json").write_text(json.dumps(_routing_run(False)))
    (runs / "guard.json").write_text(json.dumps(GUARD))
    (runs / "other.json").write_text(json.dumps({"hello": 1}))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(["--runs", str(runs), "--out", str(out), "--docs"])
    assert args.func(args) == 0
    md = (out / "report.md").read_text()
    assert "expertgate eval routing --data synthetic.csv" in md
    assert "expertgate eval guard --suite clinc150" in md
    assert "| knn |" in md and "*oracle* (baseline)" in md
    for png in ("two-deferral.png", "two-pareto.png", "three-pareto.png",
                "guard-guard-hist.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert not (out / "three-deferral.png").exists()  # N experts: no RouteLLM curve
    figs = json.loads((out / "figures.json").read_text())
    assert set(figs["two-deferral.png"]) >= {"knn", "random", "oracle"}
    assert figs["guard.table"]["knn"]["ood:webq"] == 0.8


def test_report_without_runs_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        R.write_report(tmp_path / "nothing", tmp_path / "out")
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(["--runs", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert args.func(args) == 2


def test_every_generated_figure_block_in_the_docs_is_up_to_date(monkeypatch) -> None:
    """README and docs/ carry no hand-typed figure tables: each generated block equals what
    `expertgate eval report` renders from the committed run JSON it names."""
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)
    assert R.update_docs(R.DEFAULT_DOCS, check=True) == []


def _overhead_run(date: str, miss: float) -> dict:
    def row(added: float) -> dict:
        return {"p50_ms": added + 0.01, "p99_ms": 2 * added, "added_p50_ms": added,
                "added_p90_ms": added, "added_p99_ms": 2 * added, "rps": 1234.4,
                "errors": 0, "cpu_ms_per_req": 0.2, "rss_mib": 90.2}

    return {"benchmark": "overhead", "command": f"expertgate bench overhead # {date}",
            "git": {"commit": "abcdef1234567", "dirty": True},
            "machine": {"date_utc": date, "cpu": "cpu", "cores": 2, "loadavg_start": [1.0],
                        "loadavg_end": [2.0]},
            "params": {"embedder": "hashing", "rounds": 1, "requests": 10, "miss_requests": 5},
            "paths": {"routed_miss": {"c1": row(miss)}, "routed_shadow": {"c1": row(1.5)}},
            "targets": [{"target": "t", "goal": "<= 2", "value": 3.0, "met": False}],
            "per_round": {"passthrough_floor_added_p99": {"c1": [1.5, 2.25]}},
            "summary": ["p99 added latency, expertgate/floor: c1=1.00"]}


def test_overhead_blocks_read_the_newest_run_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(_overhead_run("2026-12-01T17:40:00Z", 0.5)))
    (tmp_path / "b.json").write_text(json.dumps(_overhead_run("2026-12-01T16:00:00Z", 3.0)))
    (tmp_path / "not-a-bench.json").write_text(json.dumps({"routers": {}}))
    table = R.render_block(f"overhead-table {tmp_path}")
    assert f"Run `{tmp_path}/a.json`: commit abcdef1234 (dirty tree)" in table
    assert "| routed_miss | 1 | 0.510 | 1.000 | 0.500 |" in table and "1,234" in table
    assert "c1=1.00" in table
    # explore / shadow against the miss of the same run: 1.5 / 0.5
    kept = R.render_block(f"overhead-table {tmp_path}/a.json routed_miss,routed_shadow")
    assert "| routed_shadow | 1 | 1.510 | 3.000 | 1.500 | 1.500 | 3.000 | 3.00x |" in kept
    targets = R.render_block(f"overhead-targets {tmp_path}")
    assert "| t | <= 2 | 3.000 | **not met** |" in targets
    assert "| passthrough_floor_added_p99 | 1.50, 2.25 |" in targets
    with pytest.raises(FileNotFoundError):
        R.render_block(f"overhead-table {tmp_path / 'empty'}")


def test_soak_and_fault_blocks(tmp_path: Path) -> None:
    soak = {"minutes": 1, "with_redis": True, "requests": 12000, "req_per_s": 200.0,
            "counts": {"ok": 11900, "http_404": 100}, "rss_kib_after_warmup": 1024 * 80,
            "rss_kib_end": 1024 * 82, "rss_growth": 0.025, "fds_after_warmup": 31,
            "fds_end": 31, "ok": True, "git": {"commit": "0123456789ab", "dirty": False},
            "other_fds_after_warmup": 13, "other_fds_end": 13,
            "pooled_connections_max": {"clients": 8, "redis": 9},
            "pooled_connections_bound": {"clients": 8, "redis": 18},
            "machine": "2 CPU(s), linux", "created": "2026-12-01T17:00:00Z",
            "command": "expertgate bench soak --minutes 1 --redis"}
    faults = {"sent": 200, "concurrency": 8, "answered": 150, "failed_cleanly": 50,
              "errors": {"circuit_open": 40, "stream_interrupted": 10}, "lost": 0,
              "answered_twice": 0, "faults": ["cut", "refuse"], "wall_s": 12.5,
              "git": {"commit": "0123456789ab", "dirty": False}, "command": "pytest ..."}
    (tmp_path / "soak.json").write_text(json.dumps(soak))
    (tmp_path / "faults.json").write_text(json.dumps(faults))
    s = R.render_block(f"soak {tmp_path}/soak.json")
    assert "| 1 | yes | 12,000 (200.0) | http_404 100, ok 11900 | 80.0 -> 82.0 (+2.50%) | " \
           "31 -> 31 | 13 -> 13 | clients 8 (8), redis 9 (18) | PASS |" in s
    old = {k: v for k, v in soak.items() if "pooled" not in k and "other" not in k}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert "| 31 -> 31 | - | - | PASS |" in R.render_block(f"soak {tmp_path}/old.json")
    assert "commit 0123456789;" in s and "expertgate bench soak --minutes 1 --redis" in s
    f = R.render_block(f"faults {tmp_path}/faults.json")
    assert "| cut, refuse | 200 (8) | 150 | 50 (40 `circuit_open`, 10 `stream_interrupted`) " \
           "| 0 | 0 | 12.5 |" in f


# a measured quantity: a number followed by a unit of time, rate, memory or share, a ratio,
# an approximate ("~") number, a score written as the report writes it (0.938) or a score
# named APGR / AIQ / GQR
_MEASURE = r"~?\s?\d[\d,.]*\s?(?:ms|µs|μs|us|req/s|prompts/s|texts/s|MB|GB|MiB|KiB|GiB|%|×)" \
           r"(?![\w/])|~?\s?\d[\d,.]*\s(?:s|min|minutes?|seconds?|hours?)\b|\d[\d,.]*x\b" \
           r"|~\s?\d[\d,.]*|(?<![\w.=])\d\.\d{3}(?![\d.])" \
           r"|\b(?:APGR|AIQ|GQR)\b[^.;:|=\n]{0,30}?\d\.\d\d"
# a bound, not a measurement: a target ("p50 <= 4 ms"), a limit ("at most 64 KiB"), a threshold
_BOUND = r"(?:<=|>=|≤|≥|<|>|\bat most|\bat least|\bup to|\bthan)\s*~?\s?\d[\d,.]*"
# Per page, the figures that are settings (a default, a split fraction, an interval level),
# the duration of a measuring procedure, or how long a setup step takes: not results.
_NOT_MEASURED = {
    "README.md": ["(~5 minutes on 2 cores", "64 MiB)", "(10 s)", "(30 s)", "a 95 % bootstrap",
                  "within (1 s);"],
    "docs/guard.md": ["the 99.5 % quantile", "20 % of the labels", "(10 % of train",
                      "reaches 80 %", "20 % of the intents", "about 8 minutes per epoch"],
    "docs/architecture.md": ["one 4 KiB", "keeps a 4 KiB buffer", "(1 s; at once after a revert)"],
    "docs/security.md": ["(64 KiB)"],
    "docs/performance.md": ["for 12 s while wrk", "as 1.106 requires"],
    "docs/reliability.md": ["its 0.5 s timeout"],
    "examples/README.md": ["24 GB is enough"],
    "docs/results/README.md": ["20 / 20 % train", "the 1.5 % operating point", "1.5 and 2 %;",
                               "2 and 5 % selected", "at 5 % FRR", "its 5 % target",
                               "5 % of scores missing", "(95 % percentile"],
}


def _prose(text: str) -> str:
    """The page without generated blocks, fenced code and inline code."""
    import re

    text = re.sub(r"<!-- BEGIN GENERATED.*?<!-- END GENERATED -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _hand_typed(name: str, text: str) -> list[str]:
    import re

    text = re.sub(r"\s+", " ", _prose(text))
    for phrase in _NOT_MEASURED.get(name, []):
        assert phrase in text, f"stale exemption for {name}: {phrase!r}"
        text = text.replace(phrase, "")
    return [m.group(0).strip() for m in re.finditer(_MEASURE, re.sub(_BOUND, "", text))]


def _check_pages(names: list[str]) -> None:
    repo = Path(__file__).resolve().parents[2]
    for name in names:
        text = (repo / name).read_text()
        if name == "docs/reliability.md":
            # its settings (timeouts, body size, backoff) are configuration: only its figures
            # section is held to the rule
            text = text[text.index("## Tests and figures"):]
        found = _hand_typed(name, text)
        assert found == [], f"hand-typed measurements in {name}: {found}"


def test_performance_and_reliability_pages_have_no_hand_typed_measurements() -> None:
    """Measurements live in generated blocks only."""
    _check_pages(["docs/performance.md", "docs/reliability.md"])


def test_readme_and_docs_pages_have_no_hand_typed_measurements() -> None:
    """Every other page with figures, as a whole (issue 15): README.md, examples/README.md,
    docs/results/README.md and each docs/*.md (guard.md, routers.md, architecture.md,
    security.md, new pages too). docs/results/report.md is written whole by the report."""
    repo = Path(__file__).resolve().parents[2]
    pages = ["README.md", "examples/README.md", "docs/results/README.md",
             *sorted(str(p.relative_to(repo)) for p in (repo / "docs").glob("*.md"))]
    assert {"docs/guard.md", "docs/routers.md", "docs/architecture.md"} <= set(pages)
    _check_pages([p for p in pages if p not in ("docs/performance.md", "docs/reliability.md")])
    # and the check sees one when there is one, but not a bound or a setting
    assert _hand_typed("x.md", "took 1.25 ms, 4,341 req/s, 44 µs, 2.9x; `3 ms`; fit ~20 s, ~7 "
                       "and 3-6 ms\nper query; p50 <= 4 ms, at most 64 KiB, >= 0.80x, < 60 s; "
                       "got 0.938, APGR of 0.71; APGR >= 0.70, `frr`=0.005, +0.03 GQR") == \
        ["1.25 ms", "4,341 req/s", "44 µs", "2.9x", "~20 s", "~7", "6 ms", "0.938",
         "APGR of 0.71"]
    assert _hand_typed("docs/guard.md", "reaches 80 %, the 99.5 % quantile, " + " ".join(
        _NOT_MEASURED["docs/guard.md"])) == []


def test_auto_choices_block_names_each_seeds_family(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    n = 120
    scores = (rng.uniform(size=(n, 2)) < [0.8, 0.4]).astype(float)
    table = RoutingTable([str(i) for i in range(n)], [f"q{i}" for i in range(n)],
                         ["strong", "weak"], scores, np.tile([10.0, 1.0], (n, 1)), None)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    res = RE.evaluate(table, X, routers=["knn", "auto"], seeds=[0], progress=False)
    choices = res["routers"]["auto"]["auto_choices"]
    assert len(choices) == 1 and all(len(c["candidates"]) >= 5 for c in choices)
    assert all(len(r["fold_scores"]) == c["folds"] == 5 for c in choices
               for r in c["candidates"] if r["score"] is not None)
    (tmp_path / "run.json").write_text(json.dumps(res))
    monkeypatch.chdir(tmp_path)
    row = R.render_block("auto-choices run.json").splitlines()[2]
    assert row.startswith("| `run.json` | " + ", ".join(c["family"] for c in choices))
    assert "APGR" in row and row.count("|") == 7 and "| - |" in row  # no stack row in the run


def test_guard_bar_block_reads_the_selected_method_against_the_tfidf_baseline(
        tmp_path: Path, monkeypatch) -> None:
    def row(gqr: float, p50: float, p99: float, method: str) -> dict:
        return {"method": method, "gqr_score": gqr, "latency_p50_ms": p50,
                "latency_p99_ms": p99}

    run = {"suite": "s1", "selected": {"method": "frozen:guard-cascade"},
           "methods": {"frozen:baseline-tfidf-svm": row(0.87, 1.6, 2.4, "baseline-tfidf-svm"),
                       "frozen:guard-cascade": row(0.915, 0.9, 2.8, "guard-cascade")}}
    (tmp_path / "a.json").write_text(json.dumps(run))
    run["selected"] = {"method": "frozen:guard-knn"}
    run["methods"]["frozen:guard-knn"] = row(0.89, 0.5, 0.9, "guard-knn")
    (tmp_path / "b.json").write_text(json.dumps(run))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("guard-bar a.json b.json").splitlines()
    assert lines[2] == ("| `a.json` | s1 | frozen:guard-cascade | 0.915 / 0.870 (+0.045) | "
                        "0.90 / 2.80 | 1.60 / 2.40 | yes | **no** |")
    assert lines[3].endswith("(+0.020) | 0.50 / 0.90 | 1.60 / 2.40 | **no** | **no** |")
    del run["methods"]["frozen:baseline-tfidf-svm"]
    (tmp_path / "c.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="baseline-tfidf-svm"):
        R.render_block("guard-bar c.json")


def test_cost_models_block_says_which_experts_traded_per_query_costs(
        tmp_path: Path, monkeypatch) -> None:
    from routers.embed import make_embedder

    # costs follow the prompt's length and its topic (which the hashing embedder sees)
    table = RE.load_routing_table("synthetic:400x5:length")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["knn", "classifier"], seeds=[0, 1], progress=False,
                      router_params={"classifier": {"cost_model": "mean"}})
    (tmp_path / "run.json").write_text(json.dumps(res))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("cost-models run.json").splitlines()
    knn = next(ln for ln in lines if "| knn |" in ln)
    assert knn.startswith("| `run.json` | knn | auto | 5/5, 5/5 | ")
    low = float(knn.split("|")[5].split()[0])
    assert low >= 0.25  # every expert cleared the cut (that is why all five are predicted)
    assert "| classifier | mean | 0/5, 0/5 | - | - |" in next(
        ln for ln in lines if "| classifier |" in ln)


def test_routing_validation_block_reads_each_runs_validation_score_and_params(
        tmp_path: Path, monkeypatch) -> None:
    def run(models: int, params: str | None) -> dict:
        cmd = "expertgate eval routing --data t --routers stack" + \
            (f" --params '{params}'" if params else "")
        return {"table": {"models": [f"m{i}" for i in range(models)]}, "data": "t",
                "seeds": [0, 1], "seed_set": "dev", "command": cmd,
                "routers": {"stack": {"val_apgr": 0.61234, "val_aiq": 0.4}}}

    (tmp_path / "a.json").write_text(json.dumps(run(2, '{"stack": {"trees": false}}')))
    (tmp_path / "b.json").write_text(json.dumps(run(6, None)))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("routing-validation a.json b.json").splitlines()
    assert lines[2] == ('| `a.json` | t | dev 0,1 | `{"stack": {"trees": false}}` | stack | '
                        'val_apgr 0.612 |')
    assert lines[3].endswith("| `defaults` | stack | val_aiq 0.400 |")


def test_guard_validation_block_reads_each_runs_validation_gqr_and_back_encoder(
        tmp_path: Path, monkeypatch) -> None:
    def run(layers: int | None) -> dict:
        opts = {"quantize": True, "threads": 1, **({"layers": layers} if layers else {})}
        return {"suite": "s1", "seed_set": "dev", "seed": 1, "methods": {
            "guard-cascade": {"gqr_score": 0.9123, "latency_p50_ms": 0.9,
                              "latency_p99_ms": 4.25, "validation": {"gqr_score": 0.9056},
                              "fit": {"back_spec": {"kind": "onnx", "options": opts}}},
            "guard-knn": {"gqr_score": 0.7, "latency_p50_ms": 0.4, "latency_p99_ms": 0.6,
                          "validation": {"gqr_score": 0.66}, "fit": {}}}}

    (tmp_path / "a.json").write_text(json.dumps(run(3)))
    (tmp_path / "b.json").write_text(json.dumps(run(None)))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("guard-validation a.json b.json").splitlines()
    assert lines[2] == ("| `a.json` | s1 | dev 1 | guard-cascade | onnx int8, layers 3 | "
                        "0.906 | 0.912 | 0.90 / 4.25 |")
    assert lines[3] == "| `a.json` | s1 | dev 1 | guard-knn | - | 0.660 | 0.700 | 0.40 / 0.60 |"
    assert "| onnx int8, all layers | 0.906 |" in lines[4]


def test_routing_bar_block_reads_the_selected_router_against_the_simple_baselines(
        tmp_path: Path, monkeypatch) -> None:
    def run(models: int, vs: dict | None) -> dict:
        return {"table": {"models": [f"m{i}" for i in range(models)]},
                "selected": {"method": "stack", "vs_simple": vs}}

    (tmp_path / "n.json").write_text(json.dumps(run(6, {
        "metric": "cost_at_best_single_quality_val", "selected": 0.70, "baseline": "simple-lr",
        "baseline_value": 0.85, "margin": 0.15, "better_is": "lower"})))
    (tmp_path / "m.json").write_text(json.dumps(run(6, {
        "metric": "cost_at_best_single_quality_val", "selected": 0.80, "baseline": "simple-knn",
        "baseline_value": 0.85, "margin": 0.05, "better_is": "lower"})))
    (tmp_path / "two.json").write_text(json.dumps(run(2, {
        "metric": "apgr", "selected": 0.68, "baseline": "simple-lr", "baseline_value": 0.66,
        "margin": 0.02, "better_is": "higher", "fitted_on": "train+validation"})))
    (tmp_path / "old.json").write_text(json.dumps(run(6, None)))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("routing-bar n.json m.json two.json").splitlines()
    assert lines[2].endswith("| simple-lr 0.850 | +0.150 | yes |")
    assert lines[3].endswith("| +0.050 | **no** |")
    assert lines[4].endswith("| train + validation | apgr | 0.680 | simple-lr 0.660 | +0.020 | - |")
    assert "| stack | train | cost_at" in lines[2]  # a run before refit readings: train
    with pytest.raises(ValueError, match="vs_simple"):
        R.render_block("routing-bar old.json")


def test_startup_block_reads_both_variants_medians(tmp_path: Path) -> None:
    run = {"benchmark": "startup", "config": "examples/demo-local.yaml", "first": 5,
           "median": {"warm": {"start_s": 0.55, "first_decision_ms": 3.4,
                               "worst_of_first_ms": 3.4, "steady_p50_ms": 1.2},
                      "cold": {"start_s": 0.35, "first_decision_ms": 114.1,
                               "worst_of_first_ms": 114.1, "steady_p50_ms": 1.1}},
           "git": {"commit": "0123456789ab", "dirty": False},
           "machine": {"date_utc": "2026-12-02", "cpu": "AMD EPYC", "cores": 2},
           "command": "expertgate bench startup --config examples/demo-local.yaml"}
    (tmp_path / "s.json").write_text(json.dumps(run))
    s = R.render_block(f"startup {tmp_path}/s.json")
    assert "| `examples/demo-local.yaml` | warm-up (default) | 0.550 | 3.40 | 3.40 (first 5) " \
           "| 1.200 |" in s
    assert "| no warm-up | 0.350 | 114.10 | 114.10 (first 5) | 1.100 |" in s
    assert "commit 0123456789;" in s and "expertgate bench startup --config" in s


def test_a_run_with_wrongly_typed_fields_is_skipped_and_named(tmp_path: Path, capsys) -> None:
    """Report h3 D10: a valid routing run whose ``routers`` was a list (or a router's figures
    a string) aborted the whole report with an AttributeError naming no file."""
    good = _routing_run(False)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "good.json").write_text(json.dumps(good))
    (runs / "list.json").write_text(json.dumps({**good, "routers": [1, 2]}))
    (runs / "strval.json").write_text(json.dumps({**good, "routers": {"knn": "x"}}))
    (runs / "deep.json").write_text(json.dumps({**good, "timing_s": "slow"}))
    (runs / "guard.json").write_text(json.dumps({**GUARD, "methods": {"knn": [0.9]}}))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(["--runs", str(runs), "--out", str(out), "--docs"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "skipped list.json: routers is not an object" in err
    assert "skipped strval.json: routers: knn not an object" in err
    assert "skipped deep.json: a routing run" in err and "AttributeError" in err
    assert "skipped guard.json: methods: knn not an object" in err
    md = (out / "report.md").read_text()
    assert "from 1 run file(s)" in md and "## Routing: good" in md
    figs = json.loads((out / "figures.json").read_text())
    assert "good.table" in figs and "deep.table" not in figs


def test_typo_blocks_read_clean_and_misspelt_figures_side_by_side(tmp_path: Path,
                                                                  monkeypatch) -> None:
    def grow(gqr: float, tg: float, vg: float, vt: float) -> dict:
        return {"method": "m", "gqr_score": gqr, "in_domain_accuracy": 0.9,
                "validation": {"gqr_score": vg, "typos": {"gqr_score": vt}},
                "typos": {"rate": 0.2, "gqr_score": tg, "in_domain_accuracy": 0.8,
                          "in_domain_same_outcome": 0.88}}

    g = {"suite": "s1", "selected": {"method": "guard-cascade"},
         "augment_typos": {"rate": 0.2},
         "methods": {"guard-cascade": grow(0.93, 0.9, 0.92, 0.91),
                     "baseline-tfidf-svm": {**grow(0.87, 0.85, 0.86, 0.84),
                                            "method": "baseline-tfidf-svm"}}}
    (tmp_path / "g.json").write_text(json.dumps(g))
    r = {"table": {"models": ["a", "b"]}, "selected": {"method": "stack"},
         "routers": {"stack": {"apgr": 0.69, "apgr_std": 0.01, "typos": {
             "rate": 0.2, "apgr": 0.66, "apgr_std": 0.02, "same_choice": 0.9}}},
         "baselines": {"simple-lr": {"apgr": 0.65, "typos": {"rate": 0.2, "apgr": 0.6,
                                                             "same_choice": 0.8}},
                       "oracle": {"apgr": 1.0}}}
    (tmp_path / "r.json").write_text(json.dumps(r))
    monkeypatch.chdir(tmp_path)
    lines = R.render_block("guard-typos g.json").splitlines()
    assert lines[2] == ("| `g.json` | s1 | 0.2 (0.2) | guard-cascade (selected) | "
                        "0.920 / 0.910 | 0.930 / 0.900 | 0.900 / 0.800 | 0.880 |")
    assert "| baseline-tfidf-svm | 0.860 / 0.840 | 0.870 / 0.850 |" in lines[3]
    lines = R.render_block("routing-typos r.json").splitlines()
    assert lines[2] == "| `r.json` | 0.2 | stack (selected) | APGR | 0.690 ± 0.010 | " \
                       "0.660 ± 0.020 | 0.900 |"
    assert lines[3].startswith("| `r.json` | 0.2 | simple-lr | APGR | 0.650 | 0.600 |")
    assert len(lines) == 4  # the oracle has no typo reading


def test_no_valid_run_and_a_missing_doc_are_errors_not_an_empty_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # every run file invalid: an empty report.md was written, exit 0; a --docs file that does
    # not exist was passed over without a word
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "bad.json").write_text("{not json")
    (runs / "other.json").write_text(json.dumps({"hello": 1}))
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    assert R.main(parser.parse_args(["--runs", str(runs), "--out", str(out), "--docs"])) == 2
    err = capsys.readouterr().err
    assert "none of the 2 JSON file(s)" in err and "bad.json" in err and "nothing written" in err
    assert err.count("\n") == 1 and not out.exists()
    (runs / "good.json").write_text(json.dumps(GUARD))
    missing = tmp_path / "nope.md"
    assert R.main(parser.parse_args(["--runs", str(runs), "--out", str(out),
                                     "--docs", str(missing)])) == 2
    err = capsys.readouterr().err
    assert f"--docs {missing}: no such file" in err and err.count("\n") == 1
    assert not out.exists()
    assert R.main(parser.parse_args(["--runs", str(runs), "--out", str(out), "--docs"])) == 0
    assert "skipped bad.json" in capsys.readouterr().err  # a mix: warned per file, as before
    assert "from 1 run file(s)" in (out / "report.md").read_text()


def test_a_missing_runs_folder_is_named_even_when_another_has_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `--runs good typo` rendered good's runs and passed over the misspelt folder silently
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "good.json").write_text(json.dumps(GUARD))
    typo = tmp_path / "rnus"
    out = tmp_path / "out"
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    assert R.main(parser.parse_args(["--runs", str(runs), str(typo), "--out", str(out),
                                     "--docs"])) == 2
    err = capsys.readouterr().err
    assert f"--runs {typo}: no such folder" in err and err.count("\n") == 1
    assert not out.exists()
    (tmp_path / "file.json").write_text("{}")
    assert R.main(parser.parse_args(["--runs", str(runs), str(tmp_path / "file.json"),
                                     "--out", str(out), "--docs"])) == 2
    assert "no such folder" in capsys.readouterr().err and not out.exists()
