"""A router parameter that is no finite number: ``train --param temperature=Infinity`` (JSON's
Infinity, NaN) trained and saved, exit 0, an artifact whose router.json stores the value as
null (JSON has no infinity), so the gateway's router failed on every request ('router failed
(TypeError): fallback chain'), and mf's lr=Infinity a router predicting NaN for every expert.
The value is refused where it is read (exit 2 naming the parameter, before any work), and
save_router refuses a router whose parameters JSON cannot hold, rather than writing an
artifact that does not reload as trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from expertgate.cli import main
from routers.base import RouterError, RoutingTable, make_router
from routers.embed import HashingEmbedder
from routers.train import parse_params


@pytest.mark.parametrize("raw", ["Infinity", "-Infinity", "NaN", "[1, NaN]"])
def test_parse_params_refuses_what_is_no_finite_number(raw: str) -> None:
    with pytest.raises(RouterError, match=r"--param temperature"):
        parse_params([f"temperature={raw}"])


def test_parse_params_keeps_finite_values() -> None:
    assert parse_params(["k=5", "temperature=0.1", "aggregator=gpt-4", "adapters=[1, 2]"]) == {
        "k": 5, "temperature": 0.1, "aggregator": "gpt-4", "adapters": [1, 2]}


@pytest.mark.parametrize("family,param", [("knn", "temperature=Infinity"),
                                          ("mf", "lr=Infinity")])
def test_train_refuses_an_infinite_param(tmp_path: Path, capsys, family: str,
                                         param: str) -> None:
    assert_train_refuses(tmp_path, capsys, family, param)


def assert_train_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], family: str,
                         param: str) -> None:
    """``train --router family --param param`` on a small two-expert table: exit 2 naming the
    parameter, no artifact written."""
    data = tmp_path / "t.csv"
    data.write_text("prompt_id,prompt,model,score,cost\n" + "".join(
        f'{i},"question {i}",a,{i % 2},0.1\n{i},"question {i}",b,{(i + 1) % 2},0.01\n'
        for i in range(30)))
    rc = main(["train", "--router", family, "--data", str(data), "--embedder", "hashing",
               "--out", str(tmp_path / "a"), "--param", param])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert param.split("=")[0] in err and not (tmp_path / "a").exists()


def test_save_refuses_a_router_whose_params_json_cannot_hold(tmp_path: Path) -> None:
    texts = [f"question {i}" for i in range(12)]
    S = np.array([[i % 2, (i + 1) % 2] for i in range(12)], dtype=float)
    t = RoutingTable([str(i) for i in range(12)], texts, ["a", "b"], S, np.zeros_like(S))
    r = make_router("knn", temperature=float("inf")).fit(HashingEmbedder().embed(texts), t)
    with pytest.raises(RouterError, match="temperature"):
        r.save(tmp_path / "a", embedder="hashing-512")
    assert not (tmp_path / "a").exists()
