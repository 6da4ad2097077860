"""``expertgate bench overhead`` with an option it cannot honour says so in one line, exit 2,
before it starts anything: ``--stream-requests 0`` ran the whole benchmark (minutes on the
2-core box, every path and round) and then died on an IndexError, writing no JSON."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import expertgate.bench.overhead as overhead

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the benchmark started its upstream")

    monkeypatch.setattr(overhead, "UpstreamStub", refuse)


@pytest.mark.parametrize("n", ["0", "-5"])
def test_no_streamed_requests_is_refused_before_the_run(
        n: str, capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    assert main(["bench", "overhead", "--skip-litellm", "--stream-requests", n]) == 2
    assert "--stream-requests must be at least 1" in capsys.readouterr().err
