"""``expertgate bench startup --config`` with a config or a policy it cannot run: one line,
exit 2, before the first of its fresh processes starts (each builds a gateway)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from expertgate.cli import main
from tests.unit.gateway_helpers import semantic_config_file


@pytest.fixture(autouse=True)
def _no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    import expertgate.bench.startup as startup

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("a measured process started before the input was checked")

    monkeypatch.setattr(startup.subprocess, "run", refuse)


def _one_line(capsys: pytest.CaptureFixture[str], *says: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed" not in err, err
    for s in says:
        assert s in err, err


def test_a_config_that_does_not_load_or_lacks_the_policy_is_refused_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # both started the warm run's process, then said 'the warm run failed:' and the child's
    # error on the next lines, exit 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: [\n")
    assert main(["bench", "startup", "--config", str(bad)]) == 2
    _one_line(capsys, str(bad), "not valid YAML")
    good = semantic_config_file(tmp_path)
    assert main(["bench", "startup", "--config", str(good), "--policy", "nope"]) == 2
    _one_line(capsys, "no policy 'nope'", "(it has auto)")
    empty = tmp_path / "empty.yaml"
    empty.write_text("experts: [{name: a, api_base: 'http://127.0.0.1:9/v1'}]\n")
    assert main(["bench", "startup", "--config", str(empty)]) == 2
    _one_line(capsys, "has no policy to route with")
    assert main(["bench", "startup", "--config", str(tmp_path)]) == 2
    _one_line(capsys, f"{tmp_path} is a folder")
