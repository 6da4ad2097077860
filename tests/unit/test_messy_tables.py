"""Messy tables from users: every case gives a clear message or is handled, and fails (when it
must) before the embedding step."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from evals import guard_eval as GE
from evals import routing_eval as RE
from evals.datasets.guard import GuardDataError, load_guard_data
from evals.datasets.routing import MISSING_CATEGORY, load_long
from routers.base import RouterError


def _csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _rows(n: int = 30, models: tuple[str, ...] = ("big", "small"), **extra: object
          ) -> list[dict]:
    out = []
    for i in range(n):
        for j, m in enumerate(models):
            out.append({"prompt_id": f"p{i}", "prompt": f"question {i} about topic {i % 3}",
                        "model": m, "score": float((i + j) % 2), "cost": 10.0 / (j + 1),
                        **extra})
    return out


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    RE.cli_register(parser)
    return int(parser.parse_args(argv).func(parser.parse_args(argv)))


@pytest.fixture
def no_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad table must fail before anything is embedded."""
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("embedding started on a table that should have been refused")

    monkeypatch.setattr(RE, "embed_table", boom)


def test_category_column_present_but_empty_is_dropped(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    t = load_long(_csv(tmp_path / "t.csv", _rows(category="")))
    assert t.categories is None
    assert "category column is empty" in capsys.readouterr().err


def test_category_column_partly_empty_gets_a_named_category(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows()
    for r in rows:
        r["category"] = "" if r["prompt_id"] in ("p0", "p1") else "maths"
    t = load_long(_csv(tmp_path / "t.csv", rows))
    assert t.categories is not None
    assert t.categories[:2] == [MISSING_CATEGORY] * 2 and set(t.categories[2:]) == {"maths"}
    assert "4 of 60 rows have no category" in capsys.readouterr().err


def test_numeric_prompt_ids_are_one_id_whatever_their_spelling(tmp_path: Path) -> None:
    rows = _rows(4)
    for r in rows:
        r["prompt_id"] = int(r["prompt_id"][1:])
    rows[1]["prompt_id"] = 0.0  # a float id from a spreadsheet: the same prompt as 0
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = load_long(p)
    assert t.prompt_ids == ["0", "1", "2", "3"] and len(t.models) == 2


def test_one_id_with_two_texts_is_an_error(tmp_path: Path) -> None:
    rows = _rows(3)
    rows[1]["prompt"] = "another text"
    with pytest.raises(RouterError, match="'p0' carries more than one prompt text"):
        load_long(_csv(tmp_path / "t.csv", rows))


def test_scores_outside_0_1_name_the_rows(tmp_path: Path) -> None:
    rows = _rows(3)
    rows[3]["score"] = 7.0
    with pytest.raises(RouterError, match=r"\[0, 1\].*row 4 \(prompt_id='p1', "
                                          r"model='small', score=7.0\)"):
        load_long(_csv(tmp_path / "t.csv", rows))


def test_repeated_prompt_model_pairs_are_said_and_averaged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a table concatenated with a rerun of one model: the pairs were averaged without a word
    rows = _rows(4)
    rerun = [{**r, "score": 1.0 - r["score"]} for r in rows if r["model"] == "big"]
    t = load_long(_csv(tmp_path / "t.csv", rows + rerun))
    err = capsys.readouterr().err
    assert "8 rows repeat a (prompt, model) pair (rows 1 (prompt_id='p0', model='big')" in err
    assert "averaged" in err
    assert t.scores[:, t.models.index("big")].tolist() == [0.5] * 4
    load_long(_csv(tmp_path / "u.csv", rows))
    assert "repeat" not in capsys.readouterr().err


def test_an_infinite_cost_names_its_row(tmp_path: Path) -> None:
    # 'inf' (a spreadsheet's overflow, a division by a zero token count) passed the check and
    # the run stopped later with "costs must be finite ... use a larger table", naming neither
    # the row nor the real cause
    rows = _rows(3)
    rows[3]["cost"] = float("inf")
    with pytest.raises(RouterError, match=r"infinite or non-numeric cost in row 4 "
                                          r"\(prompt_id='p1', model='small', cost=inf\)"):
        load_long(_csv(tmp_path / "t.csv", rows))


def test_missing_pairs_are_announced_and_scored_on_complete_prompts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [r for r in _rows(40) if not (r["model"] == "small" and r["prompt_id"] in
                                         ("p0", "p1", "p2"))]
    out = tmp_path / "r.json"
    assert _run(["--data", str(_csv(tmp_path / "t.csv", rows)), "--embedder", "hashing",
                 "--seeds", "1", "--routers", "knn", "--quiet", "--cache-dir",
                 str(tmp_path / "c"), "--json", str(out)]) == 0
    assert "3 of 40 prompts lack a score" in capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["table"]["n_scored_by_every_model"] == 37
    sc = res["n_scored"][0]
    assert sc["validation"] + sc["test"] + sc["validation_dropped"] + sc["test_dropped"] \
        + sc["train"] == 40


def test_one_model_table_fails_before_embedding(tmp_path: Path, no_embedding: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv(tmp_path / "t.csv", _rows(models=("only",)))
    assert _run(["--data", str(data), "--embedder", "hashing", "--quiet"]) == 2
    assert "1 model(s) (only); routing needs at least two" in capsys.readouterr().err


def test_models_of_one_cost_fail_before_embedding_with_more_than_two(
        tmp_path: Path, no_embedding: None, capsys: pytest.CaptureFixture[str]) -> None:
    # three models and no cost column (or the same cost everywhere): every figure of an
    # N-model run needs a cost axis, and the run printed a table of dashes, selected nothing
    # and exited 0
    models = ("big", "mid", "small")
    no_cost = [{k: v for k, v in r.items() if k != "cost"} for r in _rows(models=models)]
    same = [{**r, "cost": 2.5} for r in _rows(models=models)]
    for rows, says in ((no_cost, "(0, as a table without a cost column has)"),
                       (same, "(2.5)")):
        assert _run(["--data", str(_csv(tmp_path / "t.csv", rows)), "--embedder",
                     "hashing", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"every model has the same mean cost {says}" in err and "no router" in err
        assert err.count("\n") == 1


def test_two_models_of_one_cost_say_which_is_taken_as_strong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{**r, "cost": 1.0, "score": float(r["model"] == "big" or r["score"])}
            for r in _rows(40)]
    out = tmp_path / "r.json"
    assert _run(["--data", str(_csv(tmp_path / "t.csv", rows)), "--embedder", "hashing",
                 "--seeds", "1", "--routers", "knn", "--quiet", "--cache-dir",
                 str(tmp_path / "c"), "--json", str(out)]) == 0
    strong = json.loads(out.read_text())["table"]["strong"]
    assert f"the strong model, by default the dearer one, is {strong!r} only by the " \
           "table's order (name it with --strong)" in capsys.readouterr().err


def test_bad_router_name_and_bad_strong_fail_before_embedding(
        tmp_path: Path, no_embedding: None, capsys: pytest.CaptureFixture[str]) -> None:
    data = _csv(tmp_path / "t.csv", _rows())
    assert _run(["--data", str(data), "--embedder", "hashing", "--routers", "knn,nope"]) == 2
    assert "unknown router family nope" in capsys.readouterr().err
    assert _run(["--data", str(data), "--embedder", "hashing", "--strong", "gpt"]) == 2
    assert "--strong 'gpt' is not a model" in capsys.readouterr().err


def test_csv_with_multi_line_prompts(tmp_path: Path) -> None:
    rows = _rows(30)
    for r in rows:
        r["prompt"] = r["prompt"] + "\nsecond line, with a comma\n\nand a blank line"
    p = _csv(tmp_path / "t.csv", rows)
    t = load_long(p)
    assert len(t) == 30 and t.prompts[0].count("\n") == 3
    assert _run(["--data", str(p), "--embedder", "hashing", "--seeds", "1", "--routers",
                 "knn", "--quiet", "--cache-dir", str(tmp_path / "c")]) == 0


def test_a_routerbench_table_evaluates_with_its_models_costs_and_categories(
        tmp_path: Path) -> None:
    """RouterBench's shape (one row per prompt, per model a score and a ``|total_cost``
    column, ``eval_name``; responses beside them) through ``eval routing --format
    routerbench``: its three models, the per-query costs and the category reach the run."""
    models = ("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat", "claude-instant-v1")
    wide = pd.DataFrame({"sample_id": [f"s{i}" for i in range(60)],
                         "prompt": [f"question {i} about topic {i % 3}" for i in range(60)],
                         "eval_name": [f"bench-{i % 3}" for i in range(60)]})
    for j, m in enumerate(models):
        wide[m] = [float((i + j) % 2) for i in range(60)]
        wide[f"{m}|model_response"] = "an answer"
        wide[f"{m}|total_cost"] = [10.0 / (j + 1) + 0.01 * i for i in range(60)]
    p = tmp_path / "rb.parquet"
    wide.to_parquet(p)
    out = tmp_path / "r.json"
    assert _run(["--data", str(p), "--format", "routerbench", "--embedder", "hashing",
                 "--seeds", "1", "--routers", "knn", "--quiet", "--cache-dir",
                 str(tmp_path / "c"), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert sorted(res["table"]["models"]) == sorted(models)
    assert res["table"]["has_categories"] and res["format"] == "routerbench"
    assert res["table"]["mean_costs"][res["table"]["models"].index(models[0])] == \
        pytest.approx(10.0 + 0.01 * 59 / 2)


# --------------------------------------------------------------------------- guard tables


def _guard_csv(path: Path, extra: list[dict] | None = None) -> Path:
    rows = []
    for label, words in (("weather", "rain sun wind snow fog"), ("music", "song jazz rock pop"),
                         ("bank", "card loan fee debt cash")):
        for i, w in enumerate(words.split() * 4):
            split = "test" if i % 5 == 0 else "validation" if i % 5 == 1 else "train"
            rows.append({"text": f"tell me about {w} number {i}\nplease", "label": label,
                         "split": split})
    rows += extra or []
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_guard_test_labels_never_in_train_are_named_and_can_be_opted_out(
        tmp_path: Path) -> None:
    extra = [{"text": "book a flight to rome", "label": "travel", "split": "test"},
             {"text": "who won the cup", "label": "sport", "split": "test"}]
    p = _guard_csv(tmp_path / "g.csv", extra)
    said: list[str] = []
    d = load_guard_data(p, log=said.append)
    assert set(d.ood) == {"travel", "sport"} and d.meta["unseen_test_labels"] == ["sport",
                                                                                  "travel"]
    assert "'sport', 'travel'" in said[0] and "become OOD sets" in said[0]
    d = load_guard_data(p, unseen_labels="drop", log=said.append)
    assert not d.ood and "dropped" in said[-1]
    with pytest.raises(GuardDataError, match="never in train"):
        load_guard_data(p, unseen_labels="error")


def test_guard_csv_with_multi_line_texts_and_selection(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    p = _guard_csv(tmp_path / "g.csv",
                   [{"text": "what is the capital of peru", "label": "oos", "split": "test"}])
    d = load_guard_data(p)
    assert all("\n" in t for t in d.train_texts)
    out = tmp_path / "g.json"
    parser = argparse.ArgumentParser()
    GE.cli_register(parser)
    args = parser.parse_args(["--data", str(p), "--embedder", "hashing", "--methods",
                              "guard-centroid,guard-knn", "--target-frr", "0.05,0.2",
                              "--latency-sample", "0", "--quiet", "--json", str(out)])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    sel = res["selected"]
    # no validation OOD rows in the file: whole labels were held out as pseudo-OOD
    assert sel["validation_ood"]["source"] == "leave-labels-out"
    assert len(sel["validation_ood"]["held_out_labels"]) == 1
    val = {k: r["validation"]["gqr_score"] for k, r in res["methods"].items()}
    assert set(val) == {"guard-centroid@0.05", "guard-centroid@0.2", "guard-knn@0.05",
                        "guard-knn@0.2"}
    assert sel["validation_score"] == pytest.approx(max(val.values()))
    assert res["methods"][sel["method"]]["target_frr"] == sel["operating_point"]["target_frr"]
    for r in res["methods"].values():
        assert r["fit"]["validation_frr"] <= r["target_frr"] + 1e-9
    assert res["provenance"]["data"][0]["path"] == str(p)
