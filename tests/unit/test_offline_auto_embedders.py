"""``train --router auto --auto-embedders ,,`` (a list that names no kind) ended in
'IndexError: list index out of range' (exit 1, the crash path) after loading the table, and a
kind named twice embedded the whole table twice to compare it with itself. An empty list is a
usage error naming the flag (exit 2); a repeated kind is embedded once."""

from __future__ import annotations

from pathlib import Path

import pytest

import routers.embed
from expertgate.cli import main


def maths_poems_table(tmp_path: Path) -> Path:
    """A two-expert table of 40 prompts, half about maths (expert a right), half poems (b)."""
    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"question {i} about {"maths" if i % 2 else "poems"}",a,{i % 2},0.1\n'
        f'{i},"question {i} about {"maths" if i % 2 else "poems"}",b,{(i + 1) % 2},0.01\n'
        for i in range(40)))
    return p


@pytest.mark.parametrize("kinds", [",,", " , "])
def test_a_list_naming_no_kind_is_a_usage_error(tmp_path: Path, capsys, kinds: str) -> None:
    rc = main(["train", "--router", "auto", "--data", str(maths_poems_table(tmp_path)), "--out",
               str(tmp_path / "a"), "--auto-embedders", kinds])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--auto-embedders" in err and "IndexError" not in err


def test_a_kind_named_twice_is_embedded_once(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = routers.embed.embed_cached

    def counting(e, texts, *a, **k):
        calls.append(e.name)
        return real(e, texts, *a, **k)

    monkeypatch.setattr(routers.embed, "embed_cached", counting)
    assert main(["train", "--router", "auto", "--data", str(maths_poems_table(tmp_path)), "--out",
                 str(tmp_path / "a"), "--embedder", "hashing", "--auto-embedders",
                 "hashing,hashing", "--cache-dir", str(tmp_path / "c")]) == 0
    assert calls == ["hashing-512"]
