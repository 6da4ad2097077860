"""``expertgate embedder finetune`` with a loss setting that cannot train: --margin nan,
--scale nan or 0, --lr inf (or a finite step so large the weights overflow) trained on,
printed 'mean loss nan' and saved, with exit 0, an encoder whose every embedding is NaN (a
guard or router built on it with --embedder-path decided on NaN). The settings are checked
before the model loads, and weights that are not finite after training are never saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main
from routers.finetune import FinetuneError, finetune_encoder


def _guard_csv(tmp_path: Path) -> Path:
    p = tmp_path / "g.csv"
    p.write_text("text,label,split\nhello there,chat,train\nfix my code,code,train\n"
                 "how are you,chat,train\ndebug this,code,train\nhi,chat,validation\n"
                 "bug,code,validation\n")
    return p


@pytest.mark.parametrize("flag,value", [("--margin", "nan"), ("--margin", "-0.2"),
                                        ("--scale", "nan"), ("--scale", "0"),
                                        ("--scale", "inf"), ("--lr", "inf")])
def test_a_loss_setting_that_cannot_train_is_refused(tmp_path: Path, capsys, flag: str,
                                                      value: str) -> None:
    out = tmp_path / "ft"
    rc = main(["embedder", "finetune", "--data", str(_guard_csv(tmp_path)), "--out", str(out),
               "--epochs", "1", "--threads", "1", flag, value])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert flag.lstrip("-") in err
    assert not out.exists()


def test_weights_that_overflow_in_training_are_not_saved(tmp_path: Path) -> None:
    out = tmp_path / "ft"
    with pytest.raises(FinetuneError, match="not finite"):
        finetune_encoder(["hello there", "fix my code", "how are you", "debug this"],
                         ["chat", "code", "chat", "code"], out, epochs=1, batch_size=4,
                         lr=1e30, threads=1)
    assert not out.exists()
