"""``expertgate bench soak`` (docs/reliability.md) with options that cannot give a verdict
says so in one line, exit 2, before it starts the gateway: ``--sample-s 0`` sampled
/proc in a hot loop for the whole run, ``--warmup-frac 1.5`` and a run too short for the six
samples the verdict needs soaked for minutes and then died on a RuntimeError, and
``--concurrency 0`` reported "too few samples" for a run that sent nothing."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import expertgate.bench.soak as soak

    async def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the soak started")

    monkeypatch.setattr(soak, "run_soak", refuse)


@pytest.mark.parametrize(("extra", "said"), [
    (["--minutes", "0"], "--minutes must be more than 0"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--sample-s", "0"], "--sample-s must be more than 0"),
    (["--warmup-frac", "1.5"], "--warmup-frac must lie in [0, 1)"),
    (["--max-rss-growth", "-1"], "--max-rss-growth must be at least 0"),
    (["--minutes", "0.2"], "takes 6 samples after the warm-up"),
    (["--minutes", "1", "--sample-s", "10"], "at least --minutes 1.34"),
])
def test_an_option_that_cannot_give_a_verdict_is_refused_before_the_soak(
        extra: list[str], said: str, tmp_path: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    assert main(["bench", "soak", *extra, "--out", str(tmp_path / "s.json")]) == 2
    assert said in capsys.readouterr().err


def test_the_documented_one_minute_soak_is_accepted() -> None:
    import argparse

    from expertgate.bench.soak import _add_args, bad_options

    p = argparse.ArgumentParser()
    _add_args(p)
    assert bad_options(p.parse_args(["--minutes", "1"])) is None
    assert bad_options(p.parse_args(["--minutes", "10", "--sample-s", "10"])) is None
