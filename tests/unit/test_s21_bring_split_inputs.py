"""Split settings and tables the split cannot divide, as ``train`` and ``eval routing`` meet
them.

* ``train --test 0.99`` (or ``--val 0.6 --test 0.6``, ``--val nan``) was refused only after
  the table was loaded and every prompt embedded ('fitting knn ...' then the error): minutes
  on a large table with a slow embedder. It is refused with the other flags, first.
* A table whose prompts all read the same (one text under many ids, a template filled with
  nothing) is split by text, so all of it lands in one part: ``train`` said 'no training
  prompts left after the split' and ``eval routing`` 'no validation or test prompt has a
  score from every model; use larger --val/--test shares', advice that cannot help. Both now
  say the table holds one distinct text, before the embedding.
* ``train --val 0.04 --test 0.95`` (40 prompts) said 'no training prompts left' without
  naming the flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


def _table(tmp_path: Path, n: int = 40, same: bool = False) -> Path:
    p = tmp_path / "t.csv"
    rows = []
    for i in range(n):
        text = "the same prompt" if same else f"question {i} about topic {i % 4}"
        for m, cost in (("small", 0.001), ("big", 0.01)):
            rows.append(f'p{i},"{text}",{m},{float((i + (m == "big")) % 3 != 0)},{cost}')
    p.write_text("prompt_id,prompt,model,score,cost\n" + "\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("flags", [["--test", "0.99"], ["--val", "0.6", "--test", "0.6"],
                                   ["--val", "-0.1"], ["--val", "nan"]])
def test_train_refuses_split_shares_before_loading(tmp_path: Path, flags: list[str],
                                                   no_embedding: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "knn", "--data", str(tmp_path / "absent.csv"),
                 "--embedder", "hashing", "--out", str(tmp_path / "art"), *flags]) == 2
    err = capsys.readouterr().err
    assert "--val" in err and "--test" in err and "sum" in err
    assert "no such file" not in err and err.count("\n") == 1  # said before the table is read


def test_train_on_one_distinct_text_says_so(tmp_path: Path, no_embedding: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "knn", "--data", str(_table(tmp_path, same=True)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err
    assert "1 distinct text" in err and "40 prompts" in err
    assert not (tmp_path / "art").exists()


def test_train_shares_that_leave_no_training_prompt_are_named(
        tmp_path: Path, no_embedding: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--router", "knn", "--data", str(_table(tmp_path)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art"),
                 "--val", "0.04", "--test", "0.95"]) == 2
    err = capsys.readouterr().err
    assert "no training prompts" in err and "--val 0.04 and --test 0.95" in err
    assert "all 40 prompts" in err


def test_train_with_every_prompt_in_train_still_works(tmp_path: Path) -> None:
    assert main(["train", "--router", "knn", "--data", str(_table(tmp_path)),
                 "--embedder", "hashing", "--out", str(tmp_path / "art"),
                 "--val", "0", "--test", "0"]) == 0


def test_eval_routing_on_one_distinct_text_says_so(tmp_path: Path, no_embedding: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "routing", "--data", str(_table(tmp_path, same=True)),
                 "--embedder", "hashing", "--seeds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1 distinct text" in err.strip().splitlines()[-1]
    assert "larger --val/--test" not in err and err.count("eval routing:") == 1
