"""Inputs a user gets wrong, through the ``expertgate`` command line (in process): a clear
one-line error and exit code 2 (usage) or 1 (failure), never a traceback, never the user's
files overwritten, and machine-readable output that stays machine-readable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertgate.cli import main

TRAIN = ["train", "--router", "knn", "--data", "synthetic:300x3", "--embedder", "hashing"]


def test_train_never_replaces_a_folder_or_file_that_is_not_an_artifact(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "sub").mkdir()
    assert main([*TRAIN, "--out", str(mine)]) == 2
    assert "is not a router artifact" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "sub").is_dir()
    f = tmp_path / "table.csv"
    f.write_text("a,b\n")
    assert main([*TRAIN, "--out", str(f)]) == 2 and f.read_text() == "a,b\n"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # nothing hidden away
    # an artifact is replaced, as before
    art = tmp_path / "art"
    assert main([*TRAIN, "--out", str(art)]) == 0
    assert main([*TRAIN, "--out", str(art), "--seed", "1"]) == 0
    assert (art / "router.json").is_file() and (art / "policy.yaml").is_file()


def test_train_json_is_the_only_thing_on_stdout(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TRAIN, "--out", str(tmp_path / "a"), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["router"] == "knn"


@pytest.mark.parametrize("extra", [["--param", "k=abc"], ["--seed", "-1"],
                                   ["--embedder", "static"]])
def test_train_bad_values_are_usage_errors(tmp_path: Path, extra: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TRAIN, "--out", str(tmp_path / "a"), *extra]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


def test_outputs_that_cannot_be_written_fail_before_the_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder would have to be
    for argv in ([*TRAIN, "--out", str(blocker / "art")],
                 [*TRAIN, "--out", str(tmp_path / "a"), "--metrics-json",
                  str(blocker / "m.json")],
                 ["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
                  "--seeds", "1", "--routers", "knn", "--json", str(blocker / "r.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "cannot write" in err and str(blocker) in err
    assert not (tmp_path / "a").exists()


def _no_work(*a: object, **k: object) -> None:
    """Patched over the first long step: the input should have been refused before it."""
    raise AssertionError("the work started before the bad input was refused")


def test_a_json_output_that_is_a_folder_fails_before_the_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --json DIR passed the writability check (DIR's parent is writable), ran the whole
    # evaluation, then failed writing with IsADirectoryError (exit 1)
    from evals import guard_eval as GE
    from evals import routing_eval as RE

    monkeypatch.setattr(RE, "embed_table", _no_work)
    monkeypatch.setattr(GE, "load_guard_data", _no_work)
    folder = str(tmp_path)
    for argv in (["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
                  "--seeds", "1", "--routers", "knn", "--quiet", "--json", folder],
                 ["eval", "guard", "--data", str(_guard_table(tmp_path / "g.csv")),
                  "--embedder", "hashing", "--methods", "guard-knn", "--quiet",
                  "--json", folder],
                 [*TRAIN, "--out", str(tmp_path / "a"), "--metrics-json", folder]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "it is a folder" in err and folder in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()


def test_eval_routing_says_which_requested_router_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
            "--seeds", "1", "--quiet"]
    # a parameter the family refuses is said before the run (6752c7b), naming the family;
    # it was a skip after every baseline ('knn was not evaluated', exit 0 or 1)
    assert main([*base, "--routers", "knn,classifier", "--params",
                 '{"knn": {"k": -5}}']) == 2
    assert "--params knn: knn: k must be" in capsys.readouterr().err
    assert main([*base, "--routers", "knn", "--params", '{"knn": {"nope": 1}}']) == 2
    assert "--params knn: no parameter 'nope'" in capsys.readouterr().err
    assert main([*base, "--routers", "knn", "--params", "[1, 2]"]) == 2
    assert "--params must be a JSON object of objects" in capsys.readouterr().err


def test_eval_routing_params_for_no_router_of_the_run_are_refused_before_embedding(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a misspelt family ('knnn') was ignored: the run printed default-parameter figures and
    # exited 0 as if the settings had been applied; text that is not JSON was answered with
    # the bare decoder message, naming no option
    from evals import routing_eval as RE

    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedding started with --params that cannot apply")

    monkeypatch.setattr(RE, "embed_table", no_embedding)
    base = ["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
            "--seeds", "1", "--quiet", "--routers", "knn"]
    for params, says in (('{"knnn": {"k": 5}}', "--params names 'knnn', not among the "
                          "routers this run evaluates (knn)"),
                         ('{"stack": {"trees": false}}', "'stack', not among"),
                         ('{"auto": {}}', "auto takes no parameters"),
                         ("k=5", "--params is not JSON")):
        assert main([*base, "--params", params]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert RE.parse_params('{"stack": {"trees": false}}', None) == {"stack": {"trees": False}}


def test_route_refuses_an_empty_text_and_serves_a_trained_lora_policy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "lora"
    assert main(["train", "--router", "lora", "--data", "synthetic:300x3", "--embedder",
                 "hashing", "--out", str(art), "--param", "base_model=base"]) == 0
    capsys.readouterr()
    # the written policy names an expert for the base model (the router's last target)
    assert main(["route", "--config", str(art / "policy.yaml"), "hello", "there"]) == 0
    assert json.loads(capsys.readouterr().out)["router"] == "lora"
    assert main(["route", "--config", str(art / "policy.yaml"), "   "]) == 2
    assert "empty" in capsys.readouterr().err


def test_unforeseen_failures_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise KeyError("something no check foresaw")

    monkeypatch.delenv("EXPERTGATE_DEBUG", raising=False)
    import argparse

    ns = argparse.Namespace(func=boom, command="data")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: ns)
    assert main(["data", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError" in err and "EXPERTGATE_DEBUG=1" in err
    monkeypatch.setenv("EXPERTGATE_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["data", "list"])


def _guard_table(path: Path, test: bool = True) -> Path:
    rows = ["text,label,split"]
    topics = {"bank": ["my card was declined", "transfer money to savings",
                       "what is my balance", "freeze my debit card", "open a bank account"],
              "travel": ["book a flight to paris", "hotel near the station",
                         "cancel my train ticket", "rent a car in rome", "check in online"]}
    for lab, texts in topics.items():
        for i in range(6):
            for t in texts:
                rows.append(f"{t} {i},{lab},train")
        for t in texts[:3]:
            rows.append(f"{t} please,{lab},validation")
            if test:
                rows.append(f"{t} now,{lab},test")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_eval_guard_small_latency_sample_and_a_table_without_test_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.json"
    assert main(["eval", "guard", "--data", str(_guard_table(tmp_path / "g.csv")),
                 "--embedder", "hashing", "--methods", "guard-knn", "--latency-sample", "5",
                 "--json", str(out), "--quiet"]) == 0
    m = json.loads(out.read_text())["methods"]["guard-knn"]
    assert m["latency_p50_ms"] is not None and m["latency_p50_ms"] > 0  # was NaN below 10
    capsys.readouterr()
    assert main(["eval", "guard", "--data", str(_guard_table(tmp_path / "n.csv", test=False)),
                 "--embedder", "hashing", "--methods", "guard-knn", "--quiet"]) == 2
    assert "no in-domain test rows" in capsys.readouterr().err


def test_eval_guard_latency_sample_below_zero_is_refused_and_none_timed_reads_dash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # -1 ran, timed nothing and printed 'nan' for p50 / p99, exit 0; 0 (documented: skip)
    # printed 'nan' too
    base = ["eval", "guard", "--data", str(_guard_table(tmp_path / "g.csv")), "--embedder",
            "hashing", "--methods", "guard-knn", "--quiet"]
    assert main([*base, "--latency-sample", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--latency-sample -1: a number of queries" in err and err.count("\n") == 1
    assert main([*base, "--latency-sample", "0"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith("guard-knn"))
    assert "nan" not in row and row.split()[-2:] == ["-", "-"]


def test_eval_routing_split_without_a_quality_gap_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # two models that score the same on every prompt: APGR is undefined on every split
    rows = ["prompt,model,score,cost"]
    for i in range(40):
        for m, c in (("strong", 1.0), ("weak", 0.1)):
            rows.append(f"question number {i},{m},{i % 2},{c}")
    f = tmp_path / "t.csv"
    f.write_text("\n".join(rows) + "\n")
    assert main(["eval", "routing", "--data", str(f), "--format", "long", "--embedder",
                 "hashing", "--seeds", "1", "--routers", "knn", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "seed 0:" in err and "APGR is undefined" in err and "Traceback" not in err


def test_eval_offpolicy_refuses_meaningless_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in (["--clip", "0"], ["--clip", "-1"], ["--cost-weight", "-1"]):
        assert main(["eval", "offpolicy", "--simulate", "synthetic:300x3", *flag]) == 2
        assert "--clip must be above 0" in capsys.readouterr().err


def test_a_model_scored_on_too_few_prompts_is_left_out_and_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # auto could not cross-validate it (a clear error, before); now it is left out of every
    # family's fit, named with its count
    rows = [f"{i},{_prompt(i)},a,{i % 2},1\n{i},{_prompt(i)},b,{(i + 1) % 2},6"
            for i in range(40)]
    rows.append("0,q0 apple apple apple,c,1,3")  # model c: one score
    f = _long_table(tmp_path, rows)
    assert main(["train", "--router", "auto", "--data", str(f), "--format", "long",
                 "--embedder", "hashing", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "left out of the router" in err and ("c (1)" in err or "c (0)" in err)
    assert main(["train", "--router", "knn", "--data", str(f), "--format", "long",
                 "--embedder", "hashing", "--out", str(tmp_path / "k")]) == 0


def test_train_on_one_score_per_prompt_says_its_mean_quality_is_partial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a routing log's shape: one scored expert per prompt; the decisions the router makes
    # for another expert have no score, so the mean quality covers only part of them
    f = _long_table(tmp_path, [f"{i},{_prompt(i)},{'ab'[i % 2]},{(i // 2) % 2},"
                               f"{1 + 5 * (i % 2)}" for i in range(120)])
    assert main(["train", "--router", "knn", "--data", str(f), "--format", "long",
                 "--embedder", "hashing", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "decisions whose expert has a score)" in out and "eval offpolicy" in out


_WORDS = ["apple", "code", "music", "sport", "poem", "history", "banana", "cherry"]


def _prompt(i: int) -> str:
    return f"q{i} " + " ".join(_WORDS[(i * k) % 8] for k in (1, 3, 5))


def _long_table(tmp_path: Path, rows: list[str]) -> Path:
    """A long-format routing table (prompt_id,prompt,model,score,cost) of ``rows``."""
    f = tmp_path / "t.csv"
    f.write_text("\n".join(["prompt_id,prompt,model,score,cost", *rows]) + "\n")
    return f


def test_threads_below_one_are_refused_before_the_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # eval routing --threads 0 (or -1) ran the whole evaluation, exit 0, as if 1 were given
    from evals import routing_eval as RE

    monkeypatch.setattr(RE, "embed_table", _no_work)
    guard = str(_guard_table(tmp_path / "g.csv"))
    for n in ("0", "-1"):
        for argv in (["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
                      "--seeds", "1", "--routers", "knn", "--quiet"],
                     ["embedder", "finetune", "--data", guard, "--out", str(tmp_path / "f")],
                     ["embedder", "distill", "--out", str(tmp_path / "d")],
                     ["demo", "--work-dir", str(tmp_path / "w")]):
            assert main([*argv, "--threads", n]) == 2
            err = capsys.readouterr().err
            assert f"--threads must be at least 1, not {n}" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv"]


def test_a_negative_seed_is_refused_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # eval guard / embedder tune said 'error: expected non-negative integer' (which input?),
    # embedder finetune trained and wrote the model, eval offpolicy said 'need at least one
    # seed'
    guard = str(_guard_table(tmp_path / "g.csv"))
    for argv in (["eval", "guard", "--data", guard, "--embedder", "hashing", "--methods",
                  "guard-knn", "--quiet"],
                 ["embedder", "tune", "--data", guard, "--out", str(tmp_path / "t")],
                 ["embedder", "finetune", "--data", guard, "--out", str(tmp_path / "f")],
                 ["eval", "offpolicy", "--simulate", "synthetic:300x3"],
                 [*TRAIN, "--out", str(tmp_path / "a")]):
        assert main([*argv, "--seed", "-1"]) == 2
        err = capsys.readouterr().err
        assert "--seed must be a non-negative integer, not -1" in err
        assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.csv"]


def test_a_folder_output_that_is_a_file_fails_before_the_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # eval guard --save-selected FILE and embedder tune --out FILE ran the whole evaluation
    # or training, then failed writing the folder
    import routers.embed_tune as ET
    from evals import guard_eval as GE

    monkeypatch.setattr(GE, "load_guard_data", _no_work)
    monkeypatch.setattr(ET, "tune_table", _no_work)
    guard = str(_guard_table(tmp_path / "g.csv"))
    f = tmp_path / "file"
    f.write_text("mine")
    for argv in (["eval", "guard", "--data", guard, "--embedder", "hashing", "--methods",
                  "guard-knn", "--quiet", "--save-selected", str(f)],
                 ["eval", "guard", "--data", guard, "--embedder", "hashing", "--methods",
                  "guard-knn", "--quiet", "--save-cascade", str(f)],
                 ["embedder", "tune", "--data", guard, "--out", str(f)],
                 ["embedder", "finetune", "--data", guard, "--out", str(f)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{f}: it is a file; name a folder" in err and err.count("\n") == 1
    assert f.read_text() == "mine"


def test_strong_on_a_table_of_more_than_two_models_says_what_it_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    # --strong on a three-model table changed no figure of the printed table, without a word
    assert main(["eval", "routing", "--data", "synthetic:300x3", "--embedder", "hashing",
                 "--seeds", "1", "--routers", "knn", "--quiet", "--strong", "model-1"]) == 0
    err = capsys.readouterr().err
    assert "note: --strong 'model-1': with 3 models no figure depends on it" in err
    assert "strong_share" in err


def test_a_strong_model_that_scores_lower_is_said_before_the_embedding() -> None:
    # the dearer model scored lower than the cheaper one: APGR came out negative (or any
    # value) with no word that the strong-minus-weak gap it reads was negative
    import numpy as np

    from evals import routing_eval as RE
    from routers.base import RoutingTable

    n = 40
    scores = np.column_stack([np.tile([1.0, 0.0], n // 2), np.ones(n)])
    costs = np.tile([10.0, 1.0], (n, 1))
    table = RoutingTable([str(i) for i in range(n)], [f"q{i}" for i in range(n)],
                         ["dear", "cheap"], scores, costs)
    notes = RE.check_table(table)
    assert any("the strong model 'dear' (the dearer one) scores lower than 'cheap'" in s
               and "(0.500 against 1.000)" in s and "--strong cheap" in s for s in notes)
    assert not any("scores lower" in s for s in RE.check_table(table, strong="cheap"))
    assert any("'dear' (--strong) scores lower" in s
               for s in RE.check_table(table, strong="dear"))
