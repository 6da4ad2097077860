"""The same fit saved twice is the same artifact, byte for byte: a family with scikit-learn
parts (``*.skops``) included, so its version (the gateway's decision-cache key) survives a
retraining with the same data and seed, as docs/routers.md promises."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.artifacts import artifact_version, load_router, save_router
from routers.base import make_router
from tests.unit.test_router_contract import synthetic_table


def test_a_refit_with_the_same_seed_keeps_the_classifier_version(tmp_path: Path) -> None:
    """skops names each array after id() of the object and stamps the zip with the time:
    two identical fits wrote different models.skops bytes, so every retraining of a
    classifier (or an auto that chose it) changed the version and emptied the cache."""
    X, table = synthetic_table()
    a = make_router("classifier").fit(X, table)
    b = make_router("classifier").fit(X, table)
    pa = save_router(a, tmp_path / "a", data_hash="h", embedder="hashing-16")
    pb = save_router(b, tmp_path / "b", data_hash="h", embedder="hashing-16")
    assert (pa / "models.skops").read_bytes() == (pb / "models.skops").read_bytes()
    assert artifact_version(pa) == artifact_version(pb)
    # the canonical file still loads (checked types) and decides as the fitted router did
    back = load_router(pa)
    want = [d.targets[0].expert for d in a.decide(X, None)]
    assert [d.targets[0].expert for d in back.decide(X, None)] == want
    for m0, m1 in zip(a.models_, back.models_, strict=True):
        if hasattr(m0, "coef_"):
            np.testing.assert_array_equal(m0.coef_, m1.coef_)
