"""Router artifacts: round trip, manifest content, and refusal of every kind of bad artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routers.artifacts import (
    TRUSTED_SKOPS_TYPES,
    artifact_version,
    load_router,
    read_manifest,
    save_router,
)
from routers.base import RouterError, make_router
from tests.unit.test_router_contract import synthetic_table


@pytest.fixture(scope="module")
def fitted_knn() -> tuple:
    X, table = synthetic_table(40)
    return make_router("knn", k=5).fit(X, table), X, table


def _save(router, path: Path) -> Path:
    return save_router(router, path, metrics={"q": 0.5, "nan": float("nan")}, data_hash="h1",
                       embedder="hashing-16")


def test_manifest_records_everything(fitted_knn, tmp_path: Path) -> None:
    router, X, _ = fitted_knn
    path = _save(router, tmp_path / "a")
    m = json.loads((path / "router.json").read_text())
    assert m["format"] == "expertgate-router" and m["format_version"] == 1
    assert m["type"] == "knn" and m["version"] == router.version
    assert m["params"] == router.get_params()
    assert m["json_state"]["experts_"] == router.experts_
    assert m["data_hash"] == "h1" and m["embedder"] == "hashing-16" and m["dim"] == X.shape[1]
    assert m["metrics"] == {"q": 0.5, "nan": None}
    assert set(m["files"]) == {"arrays.npz"}
    assert read_manifest(path)["type"] == "knn"


def test_round_trip_and_version(fitted_knn, tmp_path: Path) -> None:
    router, X, table = fitted_knn
    path = _save(router, tmp_path / "a")
    loaded = load_router(path)
    np.testing.assert_allclose(loaded.predict_quality(X), router.predict_quality(X))
    v1 = artifact_version(path)
    assert len(v1) == 12 and v1 == artifact_version(path)
    other = make_router("knn", k=3).fit(X, table)
    assert artifact_version(_save(other, tmp_path / "b")) != v1
    # saving over an existing artifact replaces it
    _save(other, path)
    assert load_router(path).get_params()["k"] == 3


def test_skops_part_round_trip(tmp_path: Path) -> None:
    X, table = synthetic_table(40)
    router = make_router("classifier", calibration="sigmoid").fit(X, table)
    path = _save(router, tmp_path / "c")
    assert "models.skops" in json.loads((path / "router.json").read_text())["files"]
    np.testing.assert_allclose(load_router(path).predict_quality(X), router.predict_quality(X))


def _edit_manifest(path: Path, **changes) -> None:
    m = json.loads((path / "router.json").read_text())
    m.update(changes)
    (path / "router.json").write_text(json.dumps(m))


@pytest.mark.parametrize("breakage,message", [
    (lambda p: (p / "arrays.npz").unlink(), "missing"),
    (lambda p: (p / "router.json").unlink(), "router.json"),
    (lambda p: (p / "arrays.npz").write_bytes(b"tampered"), "checksum"),
    (lambda p: _edit_manifest(p, format="something-else"), "not an expertgate"),
    (lambda p: _edit_manifest(p, format_version=99), "format version"),
    (lambda p: _edit_manifest(p, version=99), "version"),
    (lambda p: _edit_manifest(p, type="no-such-router"), "unknown router"),
    (lambda p: _edit_manifest(p, params={"k": 5, "evil": 1}), "unknown parameter"),
    (lambda p: _edit_manifest(p, json_state={}), "state missing"),
    (lambda p: (p / "router.json").write_text("{not json"), "not valid JSON"),
])
def test_refuses_bad_artifacts(fitted_knn, tmp_path: Path, breakage, message: str) -> None:
    router, _, _ = fitted_knn
    path = _save(router, tmp_path / "bad")
    breakage(path)
    with pytest.raises(RouterError, match=message):
        load_router(path)


def test_refuses_wrong_expected_type(fitted_knn, tmp_path: Path) -> None:
    router, _, _ = fitted_knn
    path = _save(router, tmp_path / "a")
    with pytest.raises(RouterError, match="expected 'mf'"):
        load_router(path, expected_type="mf")
    with pytest.raises(RouterError):
        make_router("mf").load(path)


def test_refuses_untrusted_skops_type(tmp_path: Path) -> None:
    """A skops file naming a type outside the allow-list is refused, not loaded."""
    import skops.io as sio
    from sklearn.tree import DecisionTreeClassifier

    X, table = synthetic_table(40)
    router = make_router("classifier").fit(X, table)
    path = _save(router, tmp_path / "c")
    assert "sklearn.tree._classes.DecisionTreeClassifier" not in TRUSTED_SKOPS_TYPES
    tree = DecisionTreeClassifier(max_depth=1).fit(X, np.arange(len(X)) % 2)
    sio.dump([tree], path / "models.skops")
    _edit_manifest(path)  # keep manifest valid JSON; fix the checksum as an attacker could
    m = json.loads((path / "router.json").read_text())
    import hashlib

    m["files"]["models.skops"] = hashlib.sha256((path / "models.skops").read_bytes()).hexdigest()
    (path / "router.json").write_text(json.dumps(m))
    with pytest.raises(RouterError, match="untrusted"):
        load_router(path)


def test_unfitted_router_cannot_be_saved(tmp_path: Path) -> None:
    with pytest.raises(RouterError, match="not fitted"):
        save_router(make_router("knn"), tmp_path / "x")


def test_version_follows_content_not_timings(fitted_knn, tmp_path: Path) -> None:
    """Report h3 D11: a re-run with the same seed wrote identical arrays but another version,
    because router.json's creation time and timing metrics were hashed."""
    router, _, _ = fitted_knn
    a = save_router(router, tmp_path / "a", metrics={"fit_seconds": 0.1}, data_hash="h1",
                    embedder="hashing-16")
    b = save_router(router, tmp_path / "b", metrics={"fit_seconds": 0.7}, data_hash="h1",
                    embedder="hashing-16")
    _edit_manifest(b, created="2001-01-01T00:00:00+00:00")
    v = artifact_version(a)
    assert v == artifact_version(b)
    assert len(v) == 12 and int(v, 16) >= 0
    # what the router is made of still changes it
    c = save_router(router, tmp_path / "c", metrics={"fit_seconds": 0.1}, data_hash="h2",
                    embedder="hashing-16")
    assert artifact_version(c) != v
    _edit_manifest(b, params={**router.get_params(), "k": 2})
    assert artifact_version(b) != v
