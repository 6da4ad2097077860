"""An output flag naming the input: ``eval routing --data t.csv --json t.csv`` (tab-completion
picks the one file there) ran the evaluation and wrote its result over the user's routing
table, exit 0; ``train --metrics-json`` did the same to the table, and ``--metrics-json
OUT/router.json`` wrote the metrics over the artifact it had just saved (the artifact no
longer loads, the next train into OUT is refused). Each is now refused before the work,
naming the flag, and the files are left as they were."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expertgate.cli import main


def test_eval_routing_json_over_its_data(
        tmp_path: Path, small_long_table: Path, no_embedding: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    p = small_long_table
    before = p.read_text()
    monkeypatch.chdir(tmp_path)  # the same file by another spelling
    assert main(["eval", "routing", "--data", str(p), "--json", "./t.csv", "--embedder",
                 "hashing", "--seeds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "--data" in err and err.count("\n") == 1
    assert p.read_text() == before


def test_train_metrics_json_over_its_data(
        tmp_path: Path, small_long_table: Path, no_embedding: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    p = small_long_table
    before = p.read_text()
    assert main(["train", "--router", "knn", "--data", str(p), "--embedder", "hashing",
                 "--out", str(tmp_path / "art"), "--metrics-json", str(p)]) == 2
    err = capsys.readouterr().err
    assert "--metrics-json" in err and "--data" in err
    assert p.read_text() == before and not (tmp_path / "art").exists()


def test_train_metrics_json_inside_the_artifact(
        tmp_path: Path, small_long_table: Path, no_embedding: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    art = tmp_path / "art"
    assert main(["train", "--router", "knn", "--data", str(small_long_table), "--embedder",
                 "hashing", "--out", str(art), "--metrics-json",
                 os.path.join(str(art), "router.json")]) == 2
    err = capsys.readouterr().err
    assert "--metrics-json" in err and "--out" in err
    assert not (art / "router.json").exists()


def test_a_metrics_file_beside_the_artifact_is_written(
        tmp_path: Path, small_long_table: Path) -> None:
    assert main(["train", "--router", "knn", "--data", str(small_long_table), "--embedder",
                 "hashing", "--out", str(tmp_path / "art"), "--metrics-json",
                 str(tmp_path / "art.metrics.json")]) == 0
    assert (tmp_path / "art.metrics.json").is_file()
