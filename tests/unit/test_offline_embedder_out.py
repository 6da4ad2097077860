"""``embedder distill --out DIR`` and ``embedder tune --out DIR`` on a folder of the user's
deleted it whole (shutil.rmtree) and put the table in its place, exit 0: a notes file there
was gone. As train's --out does, they now write only where nothing is, or over a distilled
table, and refuse anything else before any work (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main
from routers.embed import EmbedderError
from routers.embed_static import check_table_target


def _users_folder(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("precious\n")
    return d


def test_the_target_rule(tmp_path: Path) -> None:
    assert check_table_target(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_table_target(tmp_path / "empty")
    table = tmp_path / "table"
    table.mkdir()
    for f in ("config.json", "embeddings.npz", "tokenizer.json"):
        (table / f).write_text("{}")
    check_table_target(table)
    with pytest.raises(EmbedderError, match=r"notes\.txt"):
        check_table_target(_users_folder(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(EmbedderError, match="not a folder"):
        check_table_target(tmp_path / "file")


@pytest.mark.parametrize("command", ["distill", "tune"])
def test_a_users_folder_is_never_replaced(tmp_path: Path, capsys, command: str) -> None:
    d = _users_folder(tmp_path)
    args = (["embedder", "distill", "--vocab-limit", "2000"] if command == "distill" else
            ["embedder", "tune", "--data", str(_guard(tmp_path))])
    rc = main([*args, "--out", str(d)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "notes.txt" in err
    assert (d / "notes.txt").read_text() == "precious\n"


def _guard(tmp_path: Path) -> Path:
    p = tmp_path / "g.csv"
    p.write_text("text,label,split\nhello there,chat,train\nfix my code,code,train\n"
                 "hi,chat,validation\nbug,code,validation\n")
    return p
