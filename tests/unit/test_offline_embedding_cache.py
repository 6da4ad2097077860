"""A damaged file in the embedding cache (a copy cut short, a full disk, an empty file) is a
cache miss: the prompts are embedded again, the file rewritten, and a note names it. It was
read as the embeddings: every later ``expertgate train`` of that table ended in 'ValueError:
EOF: reading array header' (exit 2) or 'EOFError: No data left in file' (exit 1), naming no
file, until the user found and deleted it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertgate.cli import main
from routers.embed import embed_cached, embedding_cache_path, make_embedder

_TEXTS = [f"question {i} about {'maths' if i % 2 else 'poems'}" for i in range(30)]


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"not an array\n")


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage"])
def test_a_damaged_cache_file_is_embedded_again(tmp_path: Path, capsys, how: str) -> None:
    e = make_embedder("hashing")
    want = embed_cached(e, _TEXTS, tmp_path)
    path = embedding_cache_path(e, _TEXTS, tmp_path)
    _damage(path, how)
    got = embed_cached(e, _TEXTS, tmp_path)
    np.testing.assert_array_equal(got, want)
    assert str(path) in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(path), want)  # rewritten: the next run reads it


def test_train_over_a_damaged_cache_trains(tmp_path: Path, capsys) -> None:
    table = tmp_path / "t.csv"
    table.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"{t}",a,{i % 2},0.1\n{i},"{t}",b,{(i + 1) % 2},0.01\n'
        for i, t in enumerate(_TEXTS)))
    args = ["train", "--router", "knn", "--data", str(table), "--embedder", "hashing",
            "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--out", str(tmp_path / "a1")]) == 0
    (cached,) = (tmp_path / "c").glob("*.npy")
    _damage(cached, "truncated")
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "a2")]) == 0, capsys.readouterr().err
    assert (tmp_path / "a2" / "router.json").is_file()
