"""``--embedder-path`` where it cannot be used: a usage error naming the flag, before anything
is embedded (it was a TypeError from the hashing embedder in ``train``, and silently dropped
by ``eval offpolicy`` without ``--embedder`` or with ``--simulate``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


def _table(tmp_path: Path) -> Path:
    rows = [{"prompt_id": f"p{i}", "prompt": f"question {i}", "model": m,
             "score": float((i + j) % 2), "cost": 1.0 / (j + 1)}
            for i in range(30) for j, m in enumerate(("big", "small"))]
    p = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    return p


def test_train_refuses_a_model_folder_for_the_hashing_embedder(tmp_path: Path, capsys) -> None:
    from expertgate.cli import main

    rc = main(["train", "--router", "knn", "--data", str(_table(tmp_path)), "--embedder",
               "hashing", "--embedder-path", str(tmp_path), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert rc == 2 and "--embedder-path needs --embedder distilled" in err
    assert "TypeError" not in err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("extra", [
    ["--simulate", "synthetic:40x2"],
    ["--logs", "x.jsonl", "--router", "art"],
    ["--logs", "x.jsonl", "--router", "art", "--embedder", "hashing"],
])
def test_offpolicy_refuses_an_embedder_path_it_would_not_read(tmp_path: Path, capsys,
                                                              extra: list[str]) -> None:
    from expertgate.cli import main

    rc = main(["eval", "offpolicy", *extra, "--embedder-path", str(tmp_path)])
    assert rc == 2 and "--embedder-path needs --logs" in capsys.readouterr().err
