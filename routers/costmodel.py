"""Per-query cost prediction shared by every :class:`~routers.tradeoff.QualityRouter` family.

A routing table records what each (prompt, expert) pair cost: tokens times the expert's
price. Input tokens are known when the request arrives and output tokens are partly
predictable from the prompt, so a long prompt makes every expert dearer, and the dear
experts dearer by more. A router that trades quality against each expert's *mean* cost
cannot see that; with ``cost_model="predicted"`` it trades against :class:`CostModel`'s
estimate for the query instead.

The model, per expert: a ridge regression of ``log(cost + offset)`` on features available at
request time, the prompt's token count as the gateway estimates it (:func:`prompt_tokens`,
log scale) and the first ``k`` principal components of the prompt embedding. Features are
standardised; per expert, ``k`` (one of :data:`COMPONENTS`) and the ridge strength are chosen
together by exact leave-one-out error on the training prompts (:func:`routers.irt.ridge_path`):
answers' lengths follow the topic where topics are distinct (a synthetic table's 20 topics
need 16-32 components) and barely at all elsewhere (NQ: the held-out correlation of log cost
stays near 0.2 with any ``k``). Back on the cost scale the estimate is multiplied by
Duan's smearing factor (the mean of the exponentiated residuals), so that on the training
prompts the mean prediction matches the mean cost instead of the (lower) geometric mean.

Robustness: only pairs with a finite score and a finite cost are used (missing cells are
skipped); ``offset`` (a thousandth of the expert's mean cost) keeps zero costs finite on the
log scale; an expert with fewer than :data:`MIN_ROWS` usable pairs, a zero mean cost or a
constant cost keeps its mean cost (``fitted_`` says which experts were fitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from routers.base import RouterError

__all__ = ["COMPONENTS", "COST_MODELS", "MIN_ROWS", "CostModel", "check_cost_model",
           "prompt_tokens"]

#: the values of a router's ``cost_model`` parameter
COST_MODELS = ("mean", "predicted")
#: numbers of the embedding's principal components tried beside the token count
COMPONENTS = (0, 4, 8, 16, 32)
#: fewest usable (prompt, cost) pairs to fit an expert's model; fewer keep the mean cost
MIN_ROWS = 20
#: ridge strengths tried per expert (standardised features)
ALPHAS = np.geomspace(1e-2, 1e4, 13)


def check_cost_model(value: object, name: str) -> str:
    """``value`` as a cost-model name, or a :class:`RouterError` naming the choices."""
    if value not in COST_MODELS:
        raise RouterError(f"{name}: cost_model must be one of {', '.join(COST_MODELS)}, "
                          f"got {value!r}")
    return str(value)


def prompt_tokens(texts: Sequence[str]) -> np.ndarray:
    """Each text's token count as the gateway estimates it before calling an expert:
    characters / 4 + 1 (:func:`gateway.ratelimit.estimate_tokens` without the completion
    budget), shape (n,)."""
    return np.array([len(str(t)) // 4 + 1 for t in texts], dtype=np.float64)


@dataclass
class CostModel:
    """Fitted per-expert cost regressions (see the module doc); arrays only, so a router
    artifact stores it in its npz (:meth:`to_arrays` / :meth:`from_arrays`)."""

    mean_: np.ndarray  # (m,) mean training cost: the fallback
    pca_mean_: np.ndarray  # (d,)
    components_: np.ndarray  # (k, d)
    feat_mean_: np.ndarray  # (k + 1,)
    feat_scale_: np.ndarray  # (k + 1,)
    coef_: np.ndarray  # (m, k + 1)
    intercept_: np.ndarray  # (m,)
    smear_: np.ndarray  # (m,)
    offset_: np.ndarray  # (m,)
    fitted_: np.ndarray  # (m,) bool

    _FIELDS = ("mean_", "pca_mean_", "components_", "feat_mean_", "feat_scale_", "coef_",
               "intercept_", "smear_", "offset_", "fitted_")

    @classmethod
    def fit(cls, X: np.ndarray, texts: Sequence[str], costs: np.ndarray,
            scores: np.ndarray | None = None,
            components: tuple[int, ...] = COMPONENTS) -> CostModel:
        """Fit on ``X`` (n, d) embeddings, their ``texts`` and ``costs`` (n, m); pairs whose
        ``scores`` (n, m) are NaN (the expert did not answer) are left out."""
        from routers.irt import ridge_path

        X = np.asarray(X, dtype=np.float64)
        C = np.asarray(costs, dtype=np.float64)
        if X.ndim != 2 or C.ndim != 2 or X.shape[0] != C.shape[0] or len(texts) != len(X):
            raise RouterError(f"cost model: need one embedding, text and cost row per prompt: "
                              f"X {X.shape}, {len(texts)} texts, costs {C.shape}")
        use = np.isfinite(C)
        if scores is not None:
            use &= np.isfinite(np.asarray(scores, dtype=np.float64))
        if np.any(C[use] < 0):
            raise RouterError("cost model: costs must be non-negative")
        m = C.shape[1]
        mean = np.array([C[use[:, j], j].mean() if use[:, j].any() else 0.0
                         for j in range(m)])
        pca_mean = X.mean(axis=0)
        k = max(0, min(max(components), X.shape[0] - 1, X.shape[1]))
        if k:
            # eigenvectors of the (d, d) covariance: cheaper than an SVD of (n, d) when n >> d
            Xc = X - pca_mean
            vals, vecs = np.linalg.eigh(Xc.T @ Xc)
            comps = vecs[:, np.argsort(vals)[::-1][:k]].T
        else:
            comps = np.zeros((0, X.shape[1]))
        F = cls._raw_features(X, texts, pca_mean, comps)
        f_mean, f_scale = F.mean(axis=0), F.std(axis=0)
        f_scale = np.where(f_scale > 1e-12, f_scale, 1.0)
        Z = (F - f_mean) / f_scale
        coef = np.zeros((m, Z.shape[1]))
        icpt, smear = np.zeros(m), np.ones(m)
        offset = np.maximum(mean * 1e-3, 0.0)
        fitted = np.zeros(m, dtype=bool)
        for j in range(m):
            rows = use[:, j]
            if rows.sum() < MIN_ROWS or mean[j] <= 0:
                continue
            y = np.log(C[rows, j] + offset[j])
            if y.std() < 1e-9:
                continue
            Zj = Z[rows]
            zc, yc = Zj.mean(axis=0), y.mean()
            best_err = np.inf
            for kk in sorted({min(int(c), k) for c in components}):
                B, loo = ridge_path(Zj[:, :1 + kk] - zc[:1 + kk], (y - yc)[:, None], ALPHAS)
                err = ((loo[:, :, 0] - (y - yc)) ** 2).mean(axis=1)
                a = int(np.argmin(err))
                if err[a] < best_err - 1e-12:  # ties keep the fewer components
                    best_err = float(err[a])
                    coef[j] = 0.0
                    coef[j, :1 + kk] = B[a, :, 0]
            icpt[j] = yc - zc @ coef[j]
            resid = y - (Zj @ coef[j] + icpt[j])
            smear[j] = float(np.mean(np.exp(resid)))
            fitted[j] = True
        return cls(mean, pca_mean, comps, f_mean, f_scale, coef, icpt, smear, offset, fitted)

    @staticmethod
    def _raw_features(X: np.ndarray, texts: Sequence[str], pca_mean: np.ndarray,
                      comps: np.ndarray) -> np.ndarray:
        logt = np.log(prompt_tokens(texts))[:, None]
        return np.hstack([logt, (X - pca_mean) @ comps.T])

    def predict(self, X: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Predicted cost of every expert for every query, (n, m), non-negative."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.pca_mean_.shape[0] or len(texts) != len(X):
            raise RouterError(f"cost model: need one embedding of dimension "
                              f"{self.pca_mean_.shape[0]} and one text per query: X {X.shape},"
                              f" {len(texts)} texts")
        Z = (self._raw_features(X, texts, self.pca_mean_, self.components_)
             - self.feat_mean_) / self.feat_scale_
        logc = Z @ self.coef_.T + self.intercept_
        # a query far outside the training range cannot cost more than e^30 times the mean
        pred = np.exp(np.clip(logc, -30.0, 30.0)) * self.smear_ - self.offset_
        pred = np.maximum(pred, 0.0)
        return np.where(self.fitted_[None, :], pred, self.mean_[None, :])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f: np.asarray(getattr(self, f)) for f in self._FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CostModel:
        missing = [f for f in cls._FIELDS if f not in arrays]
        if missing:
            raise RouterError(f"cost model: arrays missing: {', '.join(missing)}")
        return cls(*(np.asarray(arrays[f]) for f in cls._FIELDS))
