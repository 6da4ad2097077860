"""``--router lora`` without ``--param base_model``: the router cannot fit without the base
model its decisions fall back to, but train and eval routing said so only after every prompt
was embedded (minutes with minilm). The parameter check now names it first."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main
from routers.base import RouterError, make_router


def test_the_parameter_check_names_the_missing_base_model() -> None:
    with pytest.raises(RouterError, match="base_model"):
        make_router("lora").check_params()
    make_router("lora", base_model="base").check_params()


def test_train_refuses_before_the_embedding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import routers.embed as E

    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedding started for a router that cannot fit")

    p = tmp_path / "t.csv"
    p.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f"q{i},question {i},{m},{(i + j) % 2},0\n"
        for i in range(12) for j, m in enumerate(("ad1", "ad2"))))
    monkeypatch.setattr(E, "embed_cached", no_embedding)
    rc = main(["train", "--router", "lora", "--data", str(p), "--out", str(tmp_path / "o"),
               "--embedder", "hashing"])
    err = capsys.readouterr().err
    assert rc == 2 and "base_model" in err and "Traceback" not in err
