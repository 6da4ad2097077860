"""``train --param`` outside a family's range (``classifier success_threshold=2``: no score
reaches it, every expert predicted 0) trained and saved, exit 0, a router that always picks
the cheapest expert, though a gateway policy's ``params: {success_threshold: 2}`` is refused
(Router.check_params). train now checks the same ranges before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

import routers.embed
from tests.unit.test_offline_param_values import assert_train_refuses


@pytest.mark.parametrize("family,param", [("classifier", "success_threshold=2"),
                                          ("knn", "temperature=-1"),
                                          ("knn", "k=2.5")])
def test_train_checks_the_families_ranges_before_embedding(tmp_path: Path, capsys,
                                                           monkeypatch, family: str,
                                                           param: str) -> None:
    def no_embedding(*a: object, **k: object) -> None:
        raise AssertionError("embedding started with a parameter out of range")

    monkeypatch.setattr(routers.embed, "embed_cached", no_embedding)
    assert_train_refuses(tmp_path, capsys, family, param)
