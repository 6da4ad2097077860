"""Embedder builds given an infinite setting: ``embedder distill --sif inf`` wrote, with exit
0, a static table whose every vector is NaN (every later embedding with it NaN), and
``embedder tune --lr inf`` trained to a validation loss of NaN at every epoch and still
exited 0. Both are refused before any work, naming the flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main
from routers.embed import EmbedderError
from routers.embed_static import distill


@pytest.mark.parametrize("sif", [float("inf"), float("nan"), 0.0])
def test_distill_refuses_a_sif_that_is_not_a_finite_positive_number(tmp_path: Path,
                                                                    sif: float) -> None:
    with pytest.raises(EmbedderError, match="sif"):
        distill(tmp_path / "d", sif=sif, vocab_limit=2000)
    assert not (tmp_path / "d").exists()


def test_tune_refuses_an_infinite_step(tmp_path: Path, capsys) -> None:
    data = tmp_path / "g.csv"
    data.write_text("text,label,split\nhello there,chat,train\nfix my code,code,train\n"
                    "hi,chat,validation\nbug,code,validation\n")
    rc = main(["embedder", "tune", "--data", str(data), "--out", str(tmp_path / "t"),
               "--lr", "inf"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--lr" in err and not (tmp_path / "t").exists()
