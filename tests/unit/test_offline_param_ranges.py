"""``train --param`` outside a family's range (``classifier success_threshold=2``: no score
reaches it, every expert predicted 0) trained and saved, exit 0, a router that always picks
the cheapest expert, though a gateway policy's ``params: {success_threshold: 2}`` is refused
(Router.check_params). train now checks the same ranges before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

import routers.embed
from expertgate.cli import main


@pytest.mark.parametrize("family,param", [("classifier", "success_threshold=2"),
                                          ("knn", "temperature=-1"),
                                          ("knn", "k=2.5")])
def test_train_checks_the_families_ranges_before_embedding(tmp_path: Path, capsys,
                                                           monkeypatch, family: str,
                                                           param: str) -> None:
    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedding started with a parameter out of range")

    monkeypatch.setattr(routers.embed, "embed_cached", no_embedding)
    data = tmp_path / "t.csv"
    data.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"question {i}",a,{i % 2},0.1\n{i},"question {i}",b,{(i + 1) % 2},0.01\n'
        for i in range(30)))
    rc = main(["train", "--router", family, "--data", str(data), "--embedder", "hashing",
               "--out", str(tmp_path / "a"), "--param", param])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert param.split("=")[0] in err and not (tmp_path / "a").exists()
