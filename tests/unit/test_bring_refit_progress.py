"""``eval routing``'s refit reading fits the selected method and both simple baselines again
on train + validation, seed by seed: on a 30,000-prompt, 11-model table that is minutes (the
stack's fit alone is about two minutes a seed on two cores), and nothing was shown after the
'refit check' bar reached 100 %, though each long step has a progress bar. It has its own."""

from __future__ import annotations

import pytest

from evals import routing_eval as RE


def test_the_refit_shows_its_progress(capsys: pytest.CaptureFixture[str]) -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table("synthetic:200x2")
    X = make_embedder("hashing").embed(table.prompts)
    res = RE.evaluate(table, X, routers=["classifier"], seeds=[0, 1], progress=True,
                      refit="always")
    assert res["selected"]["refit"]["applied"]
    err = capsys.readouterr().err
    assert "refit on train + validation" in err and "2/2" in err


def test_quiet_shows_no_refit_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from routers.embed import make_embedder

    table = RE.load_routing_table("synthetic:200x2")
    X = make_embedder("hashing").embed(table.prompts)
    RE.evaluate(table, X, routers=["classifier"], seeds=[0], progress=False, refit="always")
    assert "refit on train" not in capsys.readouterr().err
