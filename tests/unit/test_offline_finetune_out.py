"""``embedder finetune --out DIR`` on a folder of the user's wrote the model's files into it,
over any of the user's own of the same names (README.md, config.json), exit 0. It now writes
only where nothing is, into an empty folder, or over an earlier fine-tune (its
expertgate_finetune.json), and refuses anything else before the model loads (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main
from routers.finetune import META_FILE, FinetuneError, check_finetune_target


def test_the_target_rule(tmp_path: Path) -> None:
    check_finetune_target(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_finetune_target(tmp_path / "empty")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / META_FILE).write_text("{}")
    (earlier / "README.md").write_text("model card")
    check_finetune_target(earlier)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    with pytest.raises(FinetuneError, match=r"README\.md"):
        check_finetune_target(mine)


def test_finetune_never_writes_into_a_users_folder(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    data = tmp_path / "g.csv"
    data.write_text("text,label,split\nhello there,chat,train\nfix my code,code,train\n")
    rc = main(["embedder", "finetune", "--data", str(data), "--out", str(mine)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert (mine / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["README.md"]
