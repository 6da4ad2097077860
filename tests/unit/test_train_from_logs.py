"""Training routers from the gateway's routing logs, as an engineer does it: logs written the
way the gateway writes them, ``expertgate logs export``, ``expertgate train --format logs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from expertgate.cli import main

_TOPICS = {"code": ["fix this bug", "refactor the class", "write a python function",
                    "debug the stack trace", "optimise the sql query"],
           "chat": ["tell me a joke", "how are you", "recommend a movie", "plan my weekend",
                    "favourite colour"]}


def _record(i: int, text: str, expert: str, **kw: object) -> dict:
    """A served request as the gateway logs it (the fields training reads, and a few more)."""
    return {"request_id": f"req-{i}", "client_request_id": None, "ts": 1.0e9 + i,
            "tenant": "t", "endpoint": "chat", "policy": "auto", "policy_version": "v1",
            "text": text, "mode": "single", "expert": expert, "targets": [expert],
            "status": "ok", "http_status": 200, "fallback": False, "cost_usd": 1e-5,
            "propensity": 1.0, "action_probs": {expert: 1.0}, "router_version": "v1", **kw}


def _log(n: int, experts: tuple[str, ...] = ("coder", "chatter")) -> tuple[list, list]:
    """``n`` requests over both topics, each served by one of ``experts`` and rated 1 when the
    expert suits the topic; every fifth is unrated."""
    recs, ratings = [], []
    for i in range(n):
        cat = "code" if i % 2 else "chat"
        text = f"{_TOPICS[cat][i % 5]} {i}"
        e = experts[(i // 2) % len(experts)]
        recs.append(_record(i, text, e))
        if i % 5:
            ratings.append({"request_id": f"req-{i}", "tenant": "t", "ts": 2.0e9 + i,
                            "score": float((cat == "code") == (e == "coder")),
                            "comment": None})
    return recs, ratings


def _write(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return path


def _export(tmp_path: Path, recs: list, ratings: list) -> Path:
    log = _write(tmp_path / "routing-log.jsonl", recs)
    _write(tmp_path / "routing-log.feedback.jsonl", ratings)
    out = tmp_path / "export.jsonl"
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    return out


def test_the_fallback_is_never_a_model_left_out_for_too_few_scores(tmp_path: Path) -> None:
    # a new expert explored on four requests, rated 1 on each: left out of the router (its
    # four scores would stand for every prompt), but the printed policy made it the fallback,
    # the expert that answers whenever the router's choices fail, since its mean was best
    recs, ratings = _log(200)
    for i in range(4):
        recs.append(_record(1000 + i, f"tell me a story {i}", "newbie"))
        ratings.append({"request_id": f"req-{1000 + i}", "tenant": "t", "ts": 3.0e9,
                        "score": 1.0, "comment": None})
    data = _export(tmp_path, recs, ratings)
    for extra in ([], ["--refit"]):
        out = tmp_path / f"art{len(extra)}"
        assert main(["train", "--router", "knn", "--data", str(data), "--format", "logs",
                     "--embedder", "hashing", "--out", str(out), *extra]) == 0
        manifest = json.loads((out / "router.json").read_text())
        key = manifest["metrics"].get("refit", manifest["metrics"])
        assert "newbie" in json.dumps(key["left_out_models"])
        policy = yaml.safe_load((out / "policy.yaml").read_text())["policies"][0]
        assert policy["fallback"] != ["newbie"], policy["fallback"]


def test_a_request_logged_twice_counts_once(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # a sink that failed after writing part of a batch writes the batch again (the routing
    # log retries it): the same request, same id, twice in the log. Training averaged the
    # copy in as another rating (a text served by coder twice, rated 1 and 0, read 2/3 when
    # the first request was written twice) and off-policy evaluation counted it twice
    from evals.datasets.routing import load_logs
    from evals.offpolicy import load_logged

    recs, ratings = [], []
    for i in range(30):
        for j, (text, e, s) in enumerate(((f"fix bug {i}", "coder", 1.0),
                                          (f"fix bug {i}", "coder", 0.0),
                                          (f"joke {i}", "chatter", 1.0),
                                          (f"joke {i}", "coder", 0.0))):
            recs.append(_record(4 * i + j, text, e))
            ratings.append({"request_id": f"req-{4 * i + j}", "tenant": "t", "ts": 2.0e9,
                            "score": s, "comment": None})
    once = _export(tmp_path, recs, ratings)
    (tmp_path / "once").mkdir()
    once = once.rename(tmp_path / "once" / "export.jsonl")
    twice = _export(tmp_path, recs + recs[:40:4], ratings)
    capsys.readouterr()
    table = load_logs(twice)
    err = capsys.readouterr().err
    assert "10 record(s) repeat the request id of an earlier one" in err
    assert table.scores[table.prompts.index("fix bug 0"), table.models.index("coder")] == 0.5
    ref = load_logs(once)
    assert np.array_equal(table.scores, ref.scores, equal_nan=True)

    def feats(texts: list[str]) -> np.ndarray:
        return np.zeros((len(texts), 2))

    assert len(load_logged(twice, feats).actions) == len(load_logged(once, feats).actions) \
        == 120
    assert "10 record(s) repeat the request id" in capsys.readouterr().err


def test_metrics_json_hashes_the_data_a_registry_name_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --metrics-json promises the data's sha256 in its provenance; with --data a registry
    # name (llmrouter_nq, routellm:mmlu: the common case) it recorded "data": [], so a run on
    # a changed local copy could not be told from one on the published files
    from evals.provenance import path_sha256

    folder = tmp_path / "data" / "llmrouter_nq"
    folder.mkdir(parents=True)
    rows = [{"q_id": i, "query": f"{_TOPICS['code' if i % 2 else 'chat'][i % 5]} {i}",
             "source": "nq", "llm_name_list": ["a", "b"],
             "perf_list": [float(i % 2), float(i % 3 == 0)], "cost_list": [1.0, 3.0]}
            for i in range(60)]
    (folder / "router_train_data_nq.json").write_text(json.dumps(rows))
    monkeypatch.setenv("EXPERTGATE_DATA_DIR", str(tmp_path / "data"))
    metrics = tmp_path / "m.json"
    assert main(["train", "--router", "knn", "--data", "llmrouter_nq", "--embedder",
                 "hashing", "--out", str(tmp_path / "art"), "--metrics-json",
                 str(metrics)]) == 0
    data = json.loads(metrics.read_text())["provenance"]["data"]
    assert data == [path_sha256(folder)]


@pytest.mark.parametrize("argv,message", [
    ([], "--logs needs --router ARTIFACT|POLICY"),
    (["--router", "no-such-folder"], "'no-such-folder' is not an artifact folder"),
    (["--router", "{art}", "--logs", "{missing}"], "no such log file"),
])
def test_eval_offpolicy_flag_errors_come_before_the_embedder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    # a forgotten --router (or a --router naming nothing) loaded MiniLM's weights (seconds,
    # torch) before the one-line error the flags alone decide
    import routers.embed

    def no_embedder(*a: object, **k: object) -> None:
        raise AssertionError("an embedder was built before the flags were checked")

    monkeypatch.setattr(routers.embed, "make_embedder", no_embedder)
    recs, ratings = _log(40)
    data = _export(tmp_path, recs, ratings)
    art = tmp_path / "art"
    art.mkdir()
    (art / "router.json").write_text("{}")
    argv = [a.format(art=art, missing=tmp_path / "missing.parquet") for a in argv]
    if "--logs" not in argv:
        argv += ["--logs", str(data)]
    capsys.readouterr()
    assert main(["eval", "offpolicy", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("name,message", [
    ("export.csv", "--out export.csv: name a .parquet or .jsonl file"),
    ("export.json", "--out export.json: name a .parquet or .jsonl file"),
    ("export", "--out export: name a .parquet or .jsonl file"),
    ("export.JSONL", "--out export.JSONL: name a .parquet or .jsonl file"),
    ("folder", "cannot write --out folder: it is a folder; name a file in it"),
])
def test_logs_export_out_names_a_file_the_loaders_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        name: str, message: str) -> None:
    # any name but .jsonl got Parquet bytes: export.csv / export.json were then read by
    # train --format logs as CSV / JSON ("'utf-8' codec can't decode byte 0x80"); a folder
    # was reported as "cannot read routing-log.jsonl: ... Is a directory", blaming the log
    recs, ratings = _log(20)
    log = _write(tmp_path / "routing-log.jsonl", recs)
    _write(tmp_path / "routing-log.feedback.jsonl", ratings)
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["logs", "export", "--log-path", str(log), "--out", name]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "folder", "routing-log.feedback.jsonl", "routing-log.jsonl"]
    for ok in ("e.parquet", "e.PQ", "e.jsonl"):
        assert main(["logs", "export", "--log-path", str(log), "--out", ok]) == 0
        assert main(["train", "--router", "knn", "--data", ok, "--format", "logs",
                     "--embedder", "hashing", "--out", f"art-{ok}"]) == 0


def test_training_on_the_raw_routing_log_says_to_export_it_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the gateway's own log file has no ratings (they are in the feedback file beside it);
    # train said only "log export lacks column(s): feedback_score"
    recs, _ = _log(20)
    log = _write(tmp_path / "routing-log.jsonl", recs)
    assert main(["train", "--router", "knn", "--data", str(log), "--format", "logs",
                 "--embedder", "hashing", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s): feedback_score" in err
    assert "expertgate logs export --log-path" in err and err.count("\n") == 1


def test_several_days_of_rotated_logs_export_into_one_training_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --log-path took one file: a week of rotated logs (routing-log.jsonl.2.gz, .1 and the
    # live one) gave seven exports, and train --data reads one table, so training on more
    # than a day meant concatenating exports by hand
    import gzip

    recs, ratings = _log(90)
    days = [recs[:30], recs[30:60], recs[60:]]
    gz = tmp_path / "routing-log.jsonl.2.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in days[0]).encode()))
    _write(tmp_path / "routing-log.jsonl.1", days[1] + days[0][-3:])  # copytruncate overlap
    live = _write(tmp_path / "routing-log.jsonl", days[2])
    _write(tmp_path / "routing-log.feedback.jsonl", ratings)
    out = tmp_path / "week.parquet"
    capsys.readouterr()
    assert main(["logs", "export", "--log-path", str(gz), str(tmp_path / "routing-log.jsonl.1"),
                 "--log-path", str(live), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 93 record(s)" in printed and f"{len(ratings)} rating(s) joined" in printed
    assert main(["train", "--router", "knn", "--data", str(out), "--format", "logs",
                 "--embedder", "hashing", "--out", str(tmp_path / "art")]) == 0
    err = capsys.readouterr().err
    assert f"{len(ratings)} kept" in err and "3 record(s) repeat the request id" in err
    # a glob that also matches the feedback file (routing-log*) names it, before any work
    assert main(["logs", "export", "--log-path", str(live),
                 str(tmp_path / "routing-log.feedback.jsonl"), "--out",
                 str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "routing-log.feedback.jsonl is the feedback file" in err and err.count("\n") == 1
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("argv,flag", [
    (["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing", "--quiet"],
     "--seeds"),
    (["eval", "offpolicy", "--simulate", "synthetic:300x3", "--train", "knn"],
     "--train-seeds"),
])
@pytest.mark.parametrize("n", ["0", "-2"])
def test_a_seed_count_below_one_is_refused_naming_the_flag(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], flag: str, n: str) -> None:
    # eval routing --seeds 0 and eval offpolicy --train-seeds 0 loaded the table, then said
    # 'need at least one seed' (which flag?)
    from evals import routing_eval

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(routing_eval, "load_routing_table", no_work)
    capsys.readouterr()
    assert main([*argv, flag, n]) == 2
    err = capsys.readouterr().err
    assert f"{flag} must be at least 1, not {n}" in err and err.count("\n") == 1


def test_a_rated_ensemble_answer_is_no_score_of_its_aggregator(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a policy answering in mode ensemble (skills with k=2) logs the aggregator as the
    # expert and every member's cost as the request's cost: training read the rating of the
    # combined answer as the aggregator's own, at the price of the whole ensemble (12x the
    # aggregator's cost in a probe), and eval offpolicy as the aggregator's outcome
    from evals.datasets.routing import load_logs
    from evals.offpolicy import load_logged

    recs, ratings = _log(60)
    for i in range(40):  # ensembles of coder + chatter, chatter aggregating, always rated 1
        recs.append(_record(500 + i, f"tell me a joke {500 + i}", "chatter", mode="ensemble",
                            targets=["coder", "chatter"], cost_usd=1.0))
        ratings.append({"request_id": f"req-{500 + i}", "tenant": "t", "ts": 3.0e9,
                        "score": 1.0, "comment": None})
    data = _export(tmp_path, recs, ratings)
    capsys.readouterr()
    table = load_logs(data)
    err = capsys.readouterr().err
    assert "40 rated ensemble answer(s)" in err
    assert not any(p.startswith("tell me a joke 5") for p in table.prompts)
    assert np.nanmax(table.costs) < 1.0
    logged = load_logged(data, lambda t: np.zeros((len(t), 2)))
    assert len(logged.actions) == len(table.prompts)
    assert "40 rated ensemble answer(s)" in capsys.readouterr().err


def test_an_all_digit_expert_name_is_read_as_written(tmp_path: Path) -> None:
    # pandas.read_json turned the JSONL export's expert column into numbers: '007' became 7,
    # a model no gateway expert is called
    from evals.datasets.routing import load_logs

    recs = [_record(i, f"question {i}", ["007", "42"][i % 2]) for i in range(20)]
    ratings = [{"request_id": f"req-{i}", "tenant": "t", "ts": 2.0e9, "score": 1.0,
                "comment": None} for i in range(20)]
    assert load_logs(_export(tmp_path, recs, ratings)).models == ["007", "42"]


@pytest.mark.parametrize("correction", ["dr", "dr_target"])
def test_a_doubly_robust_table_does_not_fill_in_an_expert_explored_a_few_times(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], correction: str) -> None:
    # --correction dr / dr_target fill every expert's column with a reward model: a new
    # expert explored on four requests (all rated 1) got a predicted 1.0 on every prompt, so
    # the thin-model rule never saw it thin and knn sent it 100% of the traffic
    recs, ratings = [], []
    for i in range(240):
        cat = "code" if i % 2 else "chat"
        e = ("coder", "chatter")[(i // 2) % 2]
        newbie = i < 4
        probs = {"coder": 0.475, "chatter": 0.475, "newbie": 0.05}
        e = "newbie" if newbie else e
        recs.append(_record(i, f"{_TOPICS[cat][i % 5]} {i}", e, action_probs=probs,
                            propensity=probs[e], candidates=list(probs)))
        ratings.append({"request_id": f"req-{i}", "tenant": "t", "ts": 2.0e9 + i,
                        "score": 1.0 if newbie else float((cat == "code") == (e == "coder")),
                        "comment": None})
    data = _export(tmp_path, recs, ratings)
    out = tmp_path / "art"
    capsys.readouterr()
    assert main(["train", "--router", "knn", "--data", str(data), "--format", "logs",
                 "--correction", correction, "--embedder", "hashing", "--out", str(out),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert "newbie" in metrics["left_out_models"]["scored_training_prompts"]
    assert metrics["test"]["share"].get("newbie", 0.0) == 0.0


def test_ratings_in_a_rotated_feedback_file_are_joined_when_named_and_said_when_not(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # logrotate's usual '*.jsonl' rotates the feedback file beside the log; the ratings in
    # routing-log.feedback.jsonl.1 were never read and their requests were dropped from
    # training as unrated, without a word
    recs, ratings = _log(40)
    log = _write(tmp_path / "routing-log.jsonl", recs)
    live = _write(tmp_path / "routing-log.feedback.jsonl", ratings[len(ratings) // 2:])
    old = _write(tmp_path / "routing-log.feedback.jsonl.1", ratings[:len(ratings) // 2])
    out = tmp_path / "e.parquet"
    capsys.readouterr()
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(ratings) - len(ratings) // 2} rating(s) joined" in printed
    assert f"{old} looks like a rotated copy of {live}" in printed
    assert main(["logs", "export", "--log-path", str(log), "--out", str(out),
                 "--feedback-path", str(old), str(live)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(ratings)} rating(s) joined" in printed and "rotated copy" not in printed


def test_logs_of_one_expert_say_to_explore_before_the_embedding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a policy that never explored logs one expert's answers only: train embedded the prompts,
    # then said 'routing table has 1 model(s)'; --router auto listed that once per candidate
    import routers.embed

    recs, ratings = _log(40, experts=("coder",))
    data = _export(tmp_path, recs, ratings)

    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedded before saying the logs cannot train a router")

    monkeypatch.setattr(routers.embed, "embed_cached", no_embedding)
    capsys.readouterr()
    for router in ("knn", "auto"):
        assert main(["train", "--router", router, "--data", str(data), "--format", "logs",
                     "--embedder", "hashing", "--out", str(tmp_path / "a")]) == 2
        err = capsys.readouterr().err
        assert "every rated record was served by 'coder'" in err and "explore" in err
