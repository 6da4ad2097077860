"""The guarded router: calibration, rejection of far-away points, verdict vs decide, unsafe
check, persistence. Synthetic data only (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from evals.datasets.guard import guard_table_from_labels
from routers.base import RouterError, get_router_class
from routers.embed import HashingEmbedder
from routers.guard import METHODS, GuardRouter, calibrate_threshold, stratified_split

DIM = 24


def _blobs(n_per: int = 60, seed: int = 0, n_labels: int = 3) -> tuple[np.ndarray, list[str]]:
    """Tight clusters around the first ``n_labels`` basis vectors, unit-normalised."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for c in range(n_labels):
        centre = np.zeros(DIM)
        centre[c] = 1.0
        pts = centre + 0.15 * rng.standard_normal((n_per, DIM))
        X.append(pts)
        y += [f"label{c}"] * n_per
    X = np.concatenate(X)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32), y


def _far(n: int = 40, seed: int = 1) -> np.ndarray:
    """Points around basis vectors no label uses: far from every cluster."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(DIM)
    centre[DIM - 5:] = 1.0
    X = centre + 0.15 * rng.standard_normal((n, DIM))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _fit(method: str = "knn", head: str | None = None, **kw: object) -> tuple[GuardRouter,
                                                                             np.ndarray,
                                                                             list[str]]:
    X, y = _blobs()
    params: dict[str, object] = {"method": method, "head": head, "unsafe": False, "k": 5,
                                 "epochs": 15, "hidden": 32}
    params.update(kw)
    g = GuardRouter(**params)  # type: ignore[arg-type]
    return g.fit(X, guard_table_from_labels([f"t{i}" for i in range(len(y))], y)), X, y


def test_registered_under_guard() -> None:
    assert get_router_class("guard") is GuardRouter


def test_calibrate_threshold_hits_stated_frr() -> None:
    s = np.arange(1000, dtype=float)  # distinct scores
    for frr in (0.0, 0.01, 0.05, 0.2):
        thr = calibrate_threshold(s, frr)
        assert np.mean(s > thr) == pytest.approx(frr, abs=1e-12)
    ties = np.array([1.0] * 50 + [2.0] * 50)
    thr = calibrate_threshold(ties, 0.1)
    assert np.mean(ties > thr) <= 0.1  # never more than the budget, even with ties
    with pytest.raises(RouterError):
        calibrate_threshold(np.array([]), 0.05)
    with pytest.raises(RouterError):
        calibrate_threshold(s, 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_validation_frr_and_far_points(method: str) -> None:
    g, _, _ = _fit(method, target_frr=0.1)
    # the threshold rejects at most 10 % of the held-out in-domain validation queries ...
    assert g.n_val_ == 18  # 10 % of 60 per label, stratified
    assert g.val_frr_ <= 0.1 + 1e-9
    assert g.val_frr_ >= 0.1 - 1.0 / g.n_val_ - 1e-9
    Xi, yi = _blobs(seed=5)
    v_in = g.verdict(Xi)
    # ... in-domain test points are mostly accepted and labelled right
    acc = np.mean([not v.rejected and v.label == t for v, t in zip(v_in, yi, strict=True)])
    assert acc >= 0.8
    if method in ("msp", "energy"):
        return  # classifier confidence alone does not see distance to the data
    v_far = g.verdict(_far())
    assert all(v.rejected and v.reject_reason == "ood" for v in v_far)


def test_mlp_head_rejects_far_points() -> None:
    g, _, _ = _fit("knn+msp", head="mlp", target_frr=0.05)
    Xi, yi = _blobs(seed=7)
    v_in = g.verdict(Xi)
    assert np.mean([v.label == t for v, t in zip(v_in, yi, strict=True)]) >= 0.95
    assert np.mean([v.rejected for v in g.verdict(_far())]) >= 0.9


def test_given_validation_part_is_used_for_the_threshold() -> None:
    X, y = _blobs()
    Xv, yv = _blobs(n_per=20, seed=3)
    g = GuardRouter(method="centroid", unsafe=False, target_frr=0.05)
    g.fit(X, guard_table_from_labels(["t"] * len(y), y), validation=(Xv, yv))
    assert g.n_val_ == 60
    scores = g.ood_scores(Xv)
    assert np.mean(scores > g.threshold_) <= 0.05
    assert "given validation" in g.calibration_
    with pytest.raises(RouterError):
        g.fit(X, guard_table_from_labels(["t"] * len(y), y), validation=(Xv, ["nope"] * 60))


def test_verdict_agrees_with_decide() -> None:
    g, _, _ = _fit("knn")
    Xq = np.concatenate([_blobs(n_per=10, seed=9)[0], _far(10)])
    texts = [f"q{i}" for i in range(len(Xq))]
    verdicts = g.verdict(Xq, texts)
    decisions = g.decide(Xq, texts)
    assert len(decisions) == len(verdicts) == 40
    for v, d in zip(verdicts, decisions, strict=True):
        assert d.guard == v
        assert (d.mode == "reject") == v.rejected
        if not v.rejected:
            assert d.mode == "single" and d.expert == v.label
            scores = [t.score for t in d.targets]
            assert scores == sorted(scores, reverse=True)
            assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert sum(d.mode == "reject" for d in decisions[30:]) == 10


def test_routes_param_maps_labels_to_experts() -> None:
    g, X, _ = _fit("centroid", routes={"label0": "expert-a", "label1": "expert-a",
                                       "label2": "expert-b"})
    assert g.experts_ == ["expert-a", "expert-b"]
    d = g.decide(X[:1], ["x"])[0]
    assert d.expert == "expert-a" and d.guard is not None and d.guard.label == "label0"
    assert len(d.targets) == 2
    with pytest.raises(RouterError):
        _fit("centroid", routes={"unknown": "x"})


def test_table_scores_give_the_expert_of_a_label() -> None:
    from routers.base import RoutingTable

    X, y = _blobs(n_per=20)
    experts = ["big", "small"]
    scores = np.array([[1.0, 0.0] if lab == "label0" else [0.0, 1.0] for lab in y])
    t = RoutingTable([str(i) for i in range(len(y))], ["p"] * len(y), experts, scores,
                     np.zeros_like(scores), y)
    g = GuardRouter(method="centroid", unsafe=False).fit(X, t)
    assert g.label_expert_ == {"label0": "big", "label1": "small", "label2": "small"}


def test_single_label_guard_is_a_pure_ood_detector() -> None:
    X, _ = _blobs(n_per=60, n_labels=1)
    g = GuardRouter(method="knn", unsafe=False, k=5)
    g.fit(X, guard_table_from_labels(["t"] * 60, ["only"] * 60))
    assert all(v.label == "only" for v in g.verdict(X[:5]))
    assert all(v.rejected for v in g.verdict(_far(10)))
    with pytest.raises(RouterError):
        GuardRouter(method="msp", unsafe=False).fit(
            X, guard_table_from_labels(["t"] * 60, ["only"] * 60))


def test_bad_params_and_inputs_are_router_errors() -> None:
    X, y = _blobs(n_per=10)
    table = guard_table_from_labels(["t"] * len(y), y)
    with pytest.raises(RouterError):
        GuardRouter(method="nope").fit(X, table)
    with pytest.raises(RouterError):
        GuardRouter(head="transformer").fit(X, table)
    with pytest.raises(RouterError):
        GuardRouter(target_frr=1.5).fit(X, table)
    g = GuardRouter(method="centroid", unsafe=False).fit(X, table)
    with pytest.raises(RouterError):
        g.verdict(np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(RouterError):
        GuardRouter().verdict(X)


def test_stratified_split_is_seeded_and_per_label() -> None:
    labels = ["a"] * 50 + ["b"] * 30 + ["c"]
    keep, held = stratified_split(labels, 0.2, seed=3)
    keep2, held2 = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(held, held2) and np.array_equal(keep, keep2)
    assert sorted([*keep, *held]) == list(range(81))
    held_labels = [labels[i] for i in held]
    assert held_labels.count("a") == 10 and held_labels.count("b") == 6
    assert "c" not in held_labels  # a label with one row stays in train


def test_unsafe_lexicon_and_seed_similarity() -> None:
    emb = HashingEmbedder(dim=256)
    texts = ["what is my account balance", "transfer money to savings", "pay my credit card",
             "what is the weather tomorrow", "will it rain today", "set an alarm for 7"] * 5
    labels = ["bank", "bank", "bank", "weather", "weather", "clock"] * 5
    X = emb.embed(texts)
    g = GuardRouter(method="centroid", target_frr=0.0,
                    unsafe_seeds=["purple monkey dishwasher ritual"])
    g.fit(X, guard_table_from_labels(texts, labels), embedder=emb)
    assert g.unsafe_layers_ == ["lexicon", "seed-similarity"]
    assert g.unsafe_seed_emb_.shape[0] > 20  # built-in seeds + the configured one
    queries = ["those people are vermin", "what is my account balance",
               "purple monkey dishwasher ritual"]
    v = g.verdict(emb.embed(queries), queries)
    assert v[0].rejected and v[0].reject_reason == "unsafe" and v[0].unsafe_score == 1.0
    assert v[1].reject_reason != "unsafe"
    assert v[2].reject_reason == "unsafe"  # a user seed phrase, matched by similarity
    # without an embedder only the lexicon runs, and says so
    g2 = GuardRouter(method="centroid").fit(X, guard_table_from_labels(texts, labels))
    assert g2.unsafe_layers_ == ["lexicon"]
    assert g2.verdict(emb.embed(queries[:1]), queries[:1])[0].reject_reason == "unsafe"
    g3 = GuardRouter(method="centroid", unsafe=False).fit(X, guard_table_from_labels(texts,
                                                                                     labels))
    assert g3.verdict(emb.embed(queries[:1]), queries[:1])[0].unsafe_score is None


def test_save_load_round_trip_gives_the_same_decisions(tmp_path: object) -> None:
    pytest.importorskip("skops")
    from pathlib import Path

    g, _, _ = _fit("mahalanobis", head="mlp")
    Xq = np.concatenate([_blobs(n_per=5, seed=11)[0], _far(5)])
    texts = [f"q{i}" for i in range(len(Xq))]
    path = g.save(Path(str(tmp_path)) / "guard")
    g2 = GuardRouter.load(path)
    a = [d.to_dict() for d in g.decide(Xq, texts)]
    b = [d.to_dict() for d in g2.decide(Xq, texts)]
    assert a == b


def test_knn_bank_is_capped_by_per_label_prototypes() -> None:
    g, _, _ = _fit("knn", bank_size=30, target_frr=0.05)
    assert g.bank_.shape == (30, DIM)  # 162 training rows -> 10 prototypes per label
    assert sorted(np.bincount(g.bank_label_).tolist()) == [10, 10, 10]
    assert np.allclose(np.linalg.norm(g.bank_, axis=1), 1.0, atol=1e-5)
    assert all(v.rejected for v in g.verdict(_far()))
    full, _, _ = _fit("knn", bank_size=None)
    assert full.bank_.shape[0] == 162


@pytest.mark.parametrize("method", ["msp", "energy", "knn+msp"])
def test_two_label_guard_classifies_and_scores(method: str) -> None:
    # binary LogisticRegression keeps one coefficient column: both labels must get their own
    X, y = _blobs(n_labels=2)
    g = GuardRouter(method=method, unsafe=False, k=5, target_frr=0.1)
    g.fit(X, guard_table_from_labels([f"t{i}" for i in range(len(y))], y))
    Xi, yi = _blobs(seed=5, n_labels=2)
    p = g.predict_proba(Xi)
    assert np.mean(np.abs(p[:, 0] - 0.5) > 0.1) > 0.9  # confident, not 0.5/0.5
    v = g.verdict(Xi)
    assert np.mean([x.label == t for x, t in zip(v, yi, strict=True)]) >= 0.95
    assert {x.label for x in v} == {"label0", "label1"}


def test_unsafe_rejection_explains_with_the_unsafe_score() -> None:
    emb = HashingEmbedder(dim=256)
    texts = ["what is my account balance", "transfer money to savings",
             "what is the weather tomorrow", "will it rain today"] * 5
    labels = ["bank", "bank", "weather", "weather"] * 5
    g = GuardRouter(method="centroid", target_frr=0.0)
    g.fit(emb.embed(texts), guard_table_from_labels(texts, labels), embedder=emb)
    q = ["those people are vermin"]
    v = g.verdict(emb.embed(q), q)[0]
    text = g.reject_text(v)
    assert v.reject_reason == "unsafe" and text.startswith("unsafe content (score 1.000")
    assert f"{v.ood_score:.3f}" not in text
    assert g.decide(emb.embed(q), q)[0].reason == text
