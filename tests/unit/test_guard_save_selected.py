"""``expertgate eval guard --save-selected`` says what the saved guard does not check."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_guard_eval import _run_cli, _write_csv


def test_a_saved_guard_without_an_unsafe_check_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the selected baseline-lr-knn (the plain command's choice on banking77-domain) was
    # saved as "the selected guard" to serve, with no word that it has no unsafe layer: a
    # hateful in-domain-sounding query passes it
    pytest.importorskip("skops")
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    data = _write_csv(tmp_path / "g.csv")
    common = ["--data", str(data), "--embedder", "hashing", "--latency-sample", "0",
              "--quiet"]
    assert _run_cli([*common, "--methods", "baseline-lr-knn", "--target-frr", "0.05,0.1",
                     "--save-selected", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "no unsafe check" in err and "baseline-lr-knn" in err
    assert _run_cli([*common, "--methods", "guard-knn",
                     "--save-selected", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "saved the selected guard" in err and "no unsafe check" not in err
