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
