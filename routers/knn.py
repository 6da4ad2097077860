"""Nearest-neighbour router (C3PO / RouterDC-style similarity-weighted success).

For a query, the ``k`` most similar training prompts (cosine similarity of unit embeddings)
vote for each expert with weights ``exp(sim / temperature)``; an expert's predicted quality
is the weighted mean of its scores on those neighbours where it was evaluated, shrunk toward
its overall mean by ``prior_strength`` pseudo-neighbours (so missing scores (NaN) and thin
neighbourhoods fall back gracefully). The choice trades that quality against cost with the
shared knob of :mod:`routers.tradeoff`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.tradeoff import QualityRouter

__all__ = ["KNNRouter", "knn_quality", "neighbour_lists", "neighbour_vote", "unit_rows"]


def unit_rows(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def knn_quality(Xq: np.ndarray, Xtrain: np.ndarray, S: np.ndarray, prior: np.ndarray, *,
                k: int, temperature: float, prior_strength: float,
                chunk: int = 512) -> np.ndarray:
    """Similarity-weighted neighbour success per expert, (n, m); see the module doc. Each
    query's neighbours are chosen ``chunk`` queries at a time: the partition of a whole
    batch's similarities made a negated copy of them and an index array of 8 bytes per query
    and training prompt (with the similarities 1.7 GB for 6,000 test prompts against 24,000
    training ones, the peak of an evaluation). The similarities stay one matrix product:
    products of fewer rows may round differently in the last bits."""
    sims = unit_rows(Xq) @ Xtrain.T
    kk = min(int(k), Xtrain.shape[0])
    idx = np.empty((sims.shape[0], kk), np.intp)
    top = np.empty((sims.shape[0], kk), np.float64)
    step = max(1, int(chunk))
    for lo in range(0, sims.shape[0], step):
        part = sims[lo:lo + step]
        idx[lo:lo + step] = np.argpartition(-part, kk - 1, axis=1)[:, :kk]
        top[lo:lo + step] = np.take_along_axis(part, idx[lo:lo + step], axis=1)
    return neighbour_vote(idx, top, S, prior, temperature=temperature,
                          prior_strength=prior_strength)


def neighbour_vote(idx: np.ndarray, top: np.ndarray, S: np.ndarray, prior: np.ndarray, *,
                   temperature: float, prior_strength: float) -> np.ndarray:
    """:func:`knn_quality` from each query's chosen neighbours: their rows ``idx`` (n, k) of
    the score table ``S`` and their similarities ``top`` (n, k)."""
    w = np.exp((top - top.max(axis=1, keepdims=True)) / float(temperature))
    Sn = S[idx]  # (n, k, m)
    finite = np.isfinite(Sn)
    num = np.einsum("nk,nkm->nm", w, np.where(finite, Sn, 0.0))
    den = np.einsum("nk,nkm->nm", w, finite.astype(np.float64))
    # weights are relative (max 1): prior_strength counts as that many best neighbours
    return (num + prior_strength * prior[None, :]) / (den + prior_strength)


def neighbour_lists(Xq: np.ndarray, Xtrain: np.ndarray, depth: int, chunk: int = 512
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``depth`` most similar training rows, most similar first: their indices
    (n, depth) and similarities (n, depth), the similarities computed as
    :func:`knn_quality` computes them, ``chunk`` queries at a time (bounded memory)."""
    d = min(int(depth), Xtrain.shape[0])
    idx = np.empty((Xq.shape[0], d), np.int64)
    top = np.empty((Xq.shape[0], d), np.float64)
    for s in range(0, Xq.shape[0], chunk):
        sims = unit_rows(Xq[s:s + chunk]) @ Xtrain.T
        part = np.argpartition(-sims, d - 1, axis=1)[:, :d] if d < sims.shape[1] else \
            np.broadcast_to(np.arange(d), (sims.shape[0], d))
        ps = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s:s + chunk] = np.take_along_axis(part, order, axis=1)
        top[s:s + chunk] = np.take_along_axis(ps, order, axis=1)
    return idx, top


@register
class KNNRouter(QualityRouter):
    name = "knn"
    _array_attrs = ("train_X_", "train_scores_", "prior_", "costs_")
    _json_attrs = ("experts_", "dim_")
    param_ranges: ClassVar[dict[str, Num]] = {
        "k": Num(1, integer=True),
        "temperature": Num(0, lo_open=True),
        "prior_strength": Num(0),
    }

    def __init__(self, k: int = 20, temperature: float = 0.05, prior_strength: float = 0.5,
                 cost_weight: float = 0.0, threshold: float | None = None,
                 cost_model: str = "auto") -> None:
        self.k = k
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model

    def fit(self, X: np.ndarray, table: RoutingTable) -> KNNRouter:
        X, S = self._base_checks(X, table)
        if int(self.k) < 1:
            raise RouterError("knn: k must be at least 1")
        if not float(self.temperature) > 0:
            raise RouterError("knn: temperature must be > 0")
        if float(self.prior_strength) < 0:
            raise RouterError("knn: prior_strength must be >= 0")
        self.experts_ = list(table.models)
        self.train_X_ = unit_rows(X)
        self.train_scores_ = S.astype(np.float32)
        self.prior_ = np.nanmean(S, axis=0)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    def _quality(self, X: np.ndarray) -> np.ndarray:
        return knn_quality(X, self.train_X_, self.train_scores_.astype(np.float64),
                           np.asarray(self.prior_, dtype=np.float64), k=int(self.k),
                           temperature=float(self.temperature),
                           prior_strength=float(self.prior_strength))
