"""A user's own guard table (``expertgate eval guard --data``) as spreadsheets and scripts
write it: a UTF-8 byte-order mark, spaces or capitals in the header, a long text, a field
that is a list. Each reads as the table it is, or fails with one line naming the row or
the header it found (exit 2), never ``lacks column(s): text`` over a file that has it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evals.datasets.guard import GuardDataError, load_guard_data
from expertgate.cli import main

ROWS = [(f"{t} {i}", lab, "train") for lab, ts in
        {"bank": ["my card was declined", "transfer money", "what is my balance"],
         "travel": ["book a flight", "hotel near the station", "cancel my train"]}.items()
        for t in ts for i in range(4)]
ROWS += [("my card was declined now", "bank", "test"), ("book a flight now", "travel", "test"),
         ("who won the match", "oos", "test"),
         ("transfer money please", "bank", "validation"),
         ("book a flight please", "travel", "validation")]


def _csv(path: Path, header: list[str], rows: list[tuple[str, ...]] = ROWS,
         encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def _quiet(s: str) -> None:
    pass


def test_a_byte_order_mark_spaces_and_capitals_in_the_header_read_as_the_columns(
        tmp_path: Path) -> None:
    # Excel's 'CSV UTF-8' starts with a byte-order mark: 'guard table lacks column(s):
    # text' over a file whose first column is text; 'text, label, split' (a space after
    # each comma) lacked 'label'; a JSONL file saved with the mark: 'bad JSON: Unexpected
    # UTF-8 BOM' on line 1
    plain = load_guard_data(_csv(tmp_path / "plain.csv", ["text", "label", "split"]), log=_quiet)
    files = [_csv(tmp_path / "bom.csv", ["text", "label", "split"], encoding="utf-8-sig"),
             _csv(tmp_path / "spaced.csv", ["text", " label", " split "]),
             _csv(tmp_path / "caps.csv", ["Text", "Label", "Split"]),
             _csv(tmp_path / "bom.tsv", ["text", "label", "split"], encoding="utf-8-sig",
                  delimiter="\t")]
    jl = tmp_path / "bom.jsonl"
    jl.write_text("".join(json.dumps({"text": t, "label": lab, "split": s}) + "\n"
                          for t, lab, s in ROWS), encoding="utf-8-sig")
    files.append(jl)
    for f in files:
        d = load_guard_data(f, log=_quiet)
        assert (d.train_texts, d.train_labels, d.test_texts, d.ood) == (
            plain.train_texts, plain.train_labels, plain.test_texts, plain.ood), f


def test_a_header_without_the_columns_says_what_it_found(tmp_path: Path) -> None:
    # 'text;label;split' (a semicolon-separated export) said only 'lacks column(s): label,
    # text', as if the file had no header
    f = _csv(tmp_path / "semi.csv", ["text", "label", "split"], delimiter=";")
    with pytest.raises(GuardDataError, match=r"lacks column\(s\): label, text \(its columns: "
                       r"'text;label;split'\)"):
        load_guard_data(f, log=_quiet)


def test_a_long_text_in_a_csv_is_read(tmp_path: Path) -> None:
    # a text over 131,072 characters (a pasted document) ended in 'error: Error: field
    # larger than field limit (131072)', exit 1, whatever the rest of the table
    long = "word " * 40_000
    before = csv.field_size_limit()
    d = load_guard_data(_csv(tmp_path / "long.csv", ["text", "label", "split"],
                             [*ROWS, (long, "bank", "test")]), log=_quiet)
    assert d.test_texts[-1] == long
    assert csv.field_size_limit() == before  # the csv module's limit is left as it was


@pytest.mark.parametrize("row, says", [
    ({"text": ["a", "b"], "label": "bank", "split": "test"}, "row 1: text is a list"),
    ({"text": "a b", "label": {"x": 1}, "split": "test"}, "row 1: label is an object"),
])
def test_a_text_or_label_that_is_no_string_is_named(row: dict[str, object], says: str,
                                                    tmp_path: Path) -> None:
    # a JSONL text ["a", "b"] became the text "['a', 'b']"; with no train row the table
    # was then refused for another reason ('no in-domain test rows')
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(row) + "\n" + "".join(
        json.dumps({"text": t, "label": lab, "split": s}) + "\n" for t, lab, s in ROWS))
    with pytest.raises(GuardDataError, match=says):
        load_guard_data(f, log=_quiet)


def test_eval_guard_reads_a_spreadsheet_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    f = _csv(tmp_path / "export.csv", ["Text", "Label", "Split"], encoding="utf-8-sig")
    assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing", "--methods",
                 "guard-knn", "--latency-sample", "0", "--quiet"]) == 0
    assert "guard-knn (selected)" in capsys.readouterr().out


def test_a_table_without_ood_test_rows_says_what_is_not_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the run printed '-' for OOD mean and GQR, exit 0, with no word why: a user's own
    # suite without OOD rows (or a GQR-Bench export whose ood_test is empty) measures only
    # the in-domain half
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    f = _csv(tmp_path / "in.csv", ["text", "label", "split"],
             [r for r in ROWS if r[1] != "oos"])
    assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing", "--methods",
                 "guard-knn", "--latency-sample", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no OOD test rows" in err and "GQR" in err and "oos" in err
    assert main(["eval", "guard", "--data", str(_csv(tmp_path / "g.csv", ["text", "label",
                                                                          "split"])),
                 "--embedder", "hashing", "--methods", "guard-knn", "--latency-sample", "0",
                 "--quiet"]) == 0
    assert "no OOD test rows" not in capsys.readouterr().err


def test_gqr_ood_rows_without_text_are_counted_not_dropped_silently(tmp_path: Path) -> None:
    from evals.datasets.guard import load_gqr_bench

    def write(name: str, rows: list[dict[str, object]]) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    for stem in ("train", "eval", "test"):
        write(f"{stem}.jsonl", [{"text": f"law {stem} {i}", "label": i % 2} for i in range(6)])
    write("ood_test.jsonl", [{"text": "pizza", "label": 3, "dataset": "web_questions"},
                             {"text": " ", "label": 3, "dataset": "jigsaw"},
                             {"text": None, "label": 3, "dataset": "jigsaw"}])
    said: list[str] = []
    d = load_gqr_bench(tmp_path, log=said.append)
    assert d.ood == {"web_questions": ["pizza"]}
    assert len(said) == 1 and "2 rows of" in said[0] and "ood_test.jsonl" in said[0] \
        and "no text" in said[0]


def test_one_label_too_small_to_select_on_says_what_to_give(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # 'cannot select among 6 candidates: one: too few validation rows (3) to hold 10 topic
    # groups out': a user with a one-label suite was not told what would let it run
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    f = _csv(tmp_path / "one.csv", ["text", "label", "split"],
             [r for r in ROWS if r[1] != "travel"])
    assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing",
                 "--latency-sample", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too few validation rows" in err
    assert "validation rows labelled oos" in err and "--methods" in err


def test_a_table_with_no_validation_rows_to_calibrate_on_is_refused_before_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # one train row per label and no validation split: nothing to carve 10 % from; the run
    # embedded everything, then said 'cannot calibrate a threshold on zero validation
    # scores' (or, with the default methods, 'the held-out labels have no validation rows')
    from evals import guard_eval as GE

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(GE, "evaluate", no_work)
    rows = [(f"question {i} about topic {i}", f"lab{i}", "train") for i in range(12)]
    rows += [(f"question {i} again", f"lab{i}", "test") for i in range(12)]
    rows += [("what is the weather", "oos", "test")]
    f = _csv(tmp_path / "uniq.csv", ["text", "label", "split"], rows)
    for methods in (["--methods", "guard-knn"], []):
        assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing",
                     "--latency-sample", "0", "--quiet", *methods]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no in-domain validation rows" in err
        assert "split validation" in err


def test_default_methods_left_out_for_one_label_are_said_under_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a one-label suite ran the default methods minus the five that need two labels; the
    # line saying so is progress output, silenced by --quiet: the table just lacked them
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    rows = [r for r in ROWS if r[1] != "travel"]
    rows += [("weather in rome", "oos", "validation"), ("tell me a joke", "oos", "validation")]
    f = _csv(tmp_path / "one.csv", ["text", "label", "split"], rows)
    assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing",
                 "--latency-sample", "0", "--quiet"]) == 0
    err = capsys.readouterr().err
    note = next((ln for ln in err.splitlines() if "left out" in ln), "")
    assert "guard-msp" in note and "guard-fused" in note
    assert "needs at least 2 in-domain labels" in note
