"""``expertgate eval guard`` flags a user gets slightly wrong: one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_guard_eval import _run_cli, _write_csv


@pytest.mark.parametrize("spec", [",", " , ,"])
def test_a_methods_list_naming_no_method_is_refused(
        spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "--methods ," ended in "no method can run on g: " (an empty reason), after loading
    # the data
    data = _write_csv(tmp_path / "g.csv")
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods", spec,
                     "--quiet"]) == 2
    assert "--methods names no method" in capsys.readouterr().err
