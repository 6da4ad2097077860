"""A tuned embedding table records what made it: the command, the sha256 of the data it was
trained on, and the commit with the dirty flag (as every result's provenance does)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest


def test_a_tuned_table_records_its_data_and_commit(tmp_path: Path) -> None:
    """embedder tune wrote the command and the source table's hash only: not the data it
    tuned on, nor the commit (a result read with it could not say what made its encoder)."""
    from evals.provenance import git_state
    from expertgate.cli import main
    from routers.embed_static import default_static_dir

    if not (default_static_dir() / "config.json").is_file():
        pytest.skip("the distilled table is not built here (expertgate embedder distill)")
    rows = [{"text": f"{t} {i}", "label": lab, "split": "train" if i < 16 else "validation"}
            for i in range(20) for t, lab in (("solve the equation", "math"),
                                               ("tell me a joke", "chat"))]
    data = tmp_path / "g.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    out = tmp_path / "tuned"
    assert main(["embedder", "tune", "--data", str(data), "--out", str(out),
                 "--epochs", "1"]) == 0
    info = json.loads((out / "config.json").read_text())["routing_tuned"]
    assert info["data"][0]["path"] == str(data) and len(info["data"][0]["sha256"]) == 64
    assert info["git"] == {k: git_state()[k] for k in ("commit", "dirty")}
