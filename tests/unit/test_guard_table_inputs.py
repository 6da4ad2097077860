"""Guard tables as people have them: the errors name the file and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_guard_table_that_is_not_utf8_is_named_with_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    # a Latin-1 file (Excel's CSV export) gave "error: 'utf-8' codec can't decode byte 0xe9 in
    # position 2605": no file, no line
    rows = [("solve the equation", "math"), ("tell me a joke", "chat")] * 10
    if suffix == ".csv":
        body = "text,label,split\n" + "".join(f"{t},{lab},train\n" for t, lab in rows)
        bad = "caf\xe9 cr\xe8me,chat,train\n"
    else:
        body = "".join(f'{{"text": "{t}", "label": "{lab}"}}\n' for t, lab in rows)
        bad = '{"text": "caf\xe9", "label": "chat"}\n'
    f = tmp_path / f"g{suffix}"
    f.write_bytes(body.encode() + bad.encode("latin-1"))
    for argv in (["eval", "guard", "--data", str(f), "--embedder", "hashing"],
                 ["embedder", "tune", "--data", str(f), "--out", str(tmp_path / "t")],
                 ["train", "--router", "guard", "--format", "guard", "--data", str(f),
                  "--embedder", "hashing", "--out", str(tmp_path / "a")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        line = 22 if suffix == ".csv" else 21
        assert f"{f}: line {line} is not UTF-8" in err and err.count("\n") == 1, err


def test_test_rows_that_repeat_a_training_text_are_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a test row that repeats a training text (after case and spaces) is a query the guard
    # has seen: the test figures counted it as unseen without a word
    from evals.datasets.guard import load_guard_data

    lines = ["text,label,split"]
    for i in range(30):
        lines += [f"solve equation {i},math,train", f"tell joke {i},chat,train"]
    lines += ["Solve  equation 3,math,test", "tell joke 4,chat,test", "a new sum,math,test",
              "TELL JOKE 5,oos,test", "volcanoes,oos,test"]
    f = tmp_path / "g.csv"
    f.write_text("\n".join(lines) + "\n")
    data = load_guard_data(f)
    err = capsys.readouterr().err
    assert ("2 of 3 in-domain test rows and 1 of 2 OOD test rows repeat a training text"
            in err)
    assert len(data.test_texts) == 3  # said, not dropped: the file is the user's
