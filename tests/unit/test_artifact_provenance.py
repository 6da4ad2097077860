"""An artifact says what made it (commit, dirty tree, command line, data sha256) in its
``router.json``, and that record stays out of its version: retraining the same data with the
same seed keeps the version, and the gateway's decision cache (docs/routers.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd

from routers.artifacts import artifact_version, read_manifest, save_router
from routers.base import make_router
from tests.unit.test_router_contract import synthetic_table


def _table(tmp_path: Path) -> Path:
    rows = [{"prompt_id": f"p{i}", "prompt": f"{'solve' if i % 2 else 'hello'} {i}",
             "model": m, "score": float((i % 2) == (m == "big")), "cost": c}
            for i in range(40) for m, c in (("big", 0.01), ("small", 0.001))]
    data = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    return data


def test_train_records_its_provenance_in_router_json_outside_the_version(
        tmp_path: Path) -> None:
    """router.json recorded neither the commit nor the command that trained it (only
    policy.yaml's comment had the command). Two runs from other folders, with other
    command lines, on the same data and seed: each records its own command, the same
    commit and the data's sha256, and both artifacts have the same version."""
    from evals.provenance import path_sha256
    from expertgate.cli import main

    data = _table(tmp_path)
    arts = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["train", "--router", "knn", "--data", str(data), "--embedder", "hashing",
                     "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                     "--seed", "3"]) == 0
        arts.append(out)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    for out in arts:
        prov = json.loads((out / "router.json").read_text())["provenance"]
        assert prov["git"]["commit"] == head and isinstance(prov["git"]["dirty"], bool)
        assert prov["command"].startswith("expertgate train --router knn")
        assert f"--out {out}" in prov["command"]
        assert prov["data"][0]["sha256"] == path_sha256(data)["sha256"]
        assert prov["seeds"]["used"] == [3]
    assert read_manifest(arts[0])["provenance"]["command"] != \
        read_manifest(arts[1])["provenance"]["command"]
    assert artifact_version(arts[0]) == artifact_version(arts[1])


def test_the_version_follows_the_model_not_its_provenance(tmp_path: Path) -> None:
    """The same fit saved with two provenances keeps one version; another model (another
    parameter) gets another version whatever its provenance."""
    X, table = synthetic_table()
    r = make_router("knn", k=3).fit(X, table)
    kw = {"data_hash": "h", "embedder": "hashing-16"}
    plain = save_router(r, tmp_path / "plain", **kw)
    one = save_router(r, tmp_path / "one", provenance={
        "git": {"commit": "a" * 40, "dirty": False}, "command": "expertgate train x"}, **kw)
    two = save_router(r, tmp_path / "two", provenance={
        "git": {"commit": "b" * 40, "dirty": True}, "command": "expertgate train y"}, **kw)
    assert "provenance" not in read_manifest(plain)
    assert read_manifest(one)["provenance"]["git"]["commit"] == "a" * 40
    assert artifact_version(plain) == artifact_version(one) == artifact_version(two)
    other = save_router(make_router("knn", k=5).fit(X, table), tmp_path / "other",
                        provenance={"git": {"commit": "a" * 40, "dirty": False},
                                    "command": "expertgate train x"}, **kw)
    assert artifact_version(other) != artifact_version(one)
