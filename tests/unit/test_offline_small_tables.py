"""A table too small for a family's fit once the split holds prompts out: ``train --router
irt`` on a table of 3 prompts said 'routing table has 2 prompt(s); need at least 3', a count
the user's table does not have and a need it already meets. The error now says the 2 are the
training part of its 3 prompts and how to train on them all."""

from __future__ import annotations

from pathlib import Path

from expertgate.cli import main


def test_a_too_small_training_part_is_said_as_such(tmp_path: Path, capsys) -> None:
    data = tmp_path / "t.csv"
    data.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"question {i}",a,{i % 2},0.1\n{i},"question {i}",b,{(i + 1) % 2},0.01\n'
        for i in range(3)))
    rc = main(["train", "--router", "irt", "--data", str(data), "--embedder", "hashing",
               "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = next(ln for ln in err.splitlines() if ln.startswith("error:"))
    assert "training part" in line and "of the table's 3" in line and "--test 0" in line
