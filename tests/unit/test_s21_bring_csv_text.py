"""Table files written by hand or by another tool, read as text.

* A CSV whose prompts hold an unquoted comma (``Hello, world,a,1,0.1`` under
  ``prompt,model,score,cost``): every row has one field more than the header, which pandas
  reads as an index column, so each prompt silently lost its text up to the comma ('Hello,
  world' trained on as ' world'). It is now refused, naming the header's and the rows'
  field counts and the fix (quote the field).
* A CSV or JSONL that is not UTF-8 (Latin-1 from a spreadsheet, UTF-16): 'cannot read:
  'utf-8' codec can't decode byte 0xe9 in position 16', a position in some internal buffer.
  It now says the file is not UTF-8, the line that holds the first such byte, and how to
  convert it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.datasets.routing import load_table
from expertgate.cli import main
from routers.base import RouterError


def _rows(n: int = 12) -> list[str]:
    return [f"question {i} about topic {i % 3},{m},{float((i + j) % 2)},{c}"
            for i in range(n) for j, (m, c) in enumerate((("small", 0.001), ("big", 0.01)))]


def test_a_prompt_with_an_unquoted_comma_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt,model,score,cost\n" + "\n".join(
        "Hello, " + r for r in _rows()) + "\n")
    with pytest.raises(RouterError) as e:
        load_table(p, "long")
    msg = str(e.value)
    assert "4 columns" in msg and "5 fields" in msg and "quote" in msg


def test_a_quoted_comma_and_a_written_index_still_load(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("prompt,model,score,cost\n" + "\n".join(f'"Hello, {r.split(",", 1)[0]}",'
                                                          + r.split(",", 1)[1]
                                                          for r in _rows()) + "\n")
    t = load_table(p, "long")
    assert t.prompts[0] == "Hello, question 0 about topic 0"
    q = tmp_path / "indexed.csv"  # pandas' to_csv writes its index under an empty name
    q.write_text(",prompt,model,score,cost\n" + "\n".join(
        f"{i},{r}" for i, r in enumerate(_rows())) + "\n")
    assert load_table(q, "long").prompts[0] == "question 0 about topic 0"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"latin{suffix}"
    if suffix == ".csv":
        lines = ["prompt,model,score,cost", *_rows()]
    else:
        lines = [json.dumps(dict(zip(("prompt", "model", "score", "cost"), r.split(","),
                                     strict=True)), ensure_ascii=False) for r in _rows()]
    lines[5] = lines[5].replace("question", "question numéro")
    p.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    with pytest.raises(RouterError) as e:
        load_table(p, "long")
    msg = str(e.value)
    assert "not UTF-8" in msg and "line 6" in msg and "iconv" in msg


def test_the_command_says_it_in_one_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "u16.csv"
    p.write_bytes(("prompt,model,score,cost\n" + "\n".join(_rows())).encode("utf-16"))
    assert main(["eval", "routing", "--data", str(p), "--embedder", "hashing", "--seeds",
                 "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "line 1" in err and err.count("\n") == 1
    assert "iconv -f utf-16" in err  # its byte-order mark says what it is


def test_a_delimiter_ending_every_row_but_the_header_is_read_as_an_empty_field(
        tmp_path: Path) -> None:
    # a spreadsheet's export: 'hello,a,1,0.1,' under 'prompt,model,score,cost'; pandas alone
    # would take the prompts as the index and shift every column left
    from evals.datasets.routing import load_long

    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f"q{i},question {i},{m},{(i + j) % 2},{0.1 * (j + 1)},\n"
        for i in range(6) for j, m in enumerate(("a", "b"))))
    t = load_long(p)
    assert t.models == ["a", "b"] and len(t.prompts) == 6
    assert t.prompts[0] == "question 0"
