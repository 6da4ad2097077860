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

``cost_model="auto"`` (every family's default) fits the same model and keeps an expert's
prediction only where it explains enough of that expert's cost: its R^2 of log cost, from a
:data:`CV_FOLDS`-fold cross-validation on the training prompts (``r2_``), is at least
:data:`MIN_R2`; the other experts keep their mean cost, and a router none of whose experts
qualify trades mean costs exactly as ``"mean"`` does. Why a gate: on a table whose costs follow
the prompt (tokens times price, prompts of different lengths) the prediction lowers the cost at
a given quality for every family; where they do not, a prediction is the mean plus noise. The
cut was chosen on the development seeds' validation parts (docs/routers.md, "Per-query
costs"): on NQ a lower cut let one or two experts through and no family's validation AIQ rose;
0.25 is above every NQ expert on every seed and far below the length-priced synthetic table's.

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

__all__ = ["COMPONENTS", "COST_MODELS", "MIN_R2", "MIN_ROWS", "CostModel", "check_cost_model",
           "fit_cost_model", "prompt_tokens"]

#: the values of a router's ``cost_model`` parameter
COST_MODELS = ("auto", "mean", "predicted")
#: ``cost_model="auto"`` keeps an expert's prediction when its cross-validated R^2 of log cost
#: on the training prompts reaches this; below it the expert's mean cost is used
MIN_R2 = 0.25
#: numbers of the embedding's principal components tried beside the token count
COMPONENTS = (0, 4, 8, 16, 32)
#: fewest usable (prompt, cost) pairs to fit an expert's model; fewer keep the mean cost
MIN_ROWS = 20
#: folds of the cross-validated R^2 that ``cost_model="auto"`` reads (:meth:`CostModel._cv_r2`)
CV_FOLDS = 5
#: most prompts the cross-validated R^2 is computed on (a seeded sample of them)
CV_MAX_ROWS = 2000
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
    #: (m,) cross-validated R^2 of log cost on the training prompts; NaN where not modelled
    #: (and in artifacts written before it was recorded)
    r2_: np.ndarray | None = None

    _FIELDS = ("mean_", "pca_mean_", "components_", "feat_mean_", "feat_scale_", "coef_",
               "intercept_", "smear_", "offset_", "fitted_")
    _OPTIONAL = ("r2_",)

    @classmethod
    def fit(cls, X: np.ndarray, texts: Sequence[str], costs: np.ndarray,
            scores: np.ndarray | None = None,
            components: tuple[int, ...] = COMPONENTS, min_r2: float | None = None
            ) -> CostModel:
        """Fit on ``X`` (n, d) embeddings, their ``texts`` and ``costs`` (n, m); pairs whose
        ``scores`` (n, m) are NaN (the expert did not answer) are left out. With ``min_r2``
        an expert whose cross-validated R^2 of log cost is below it keeps its mean cost."""
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
        # every expert's cost constant (a two-model table priced per model): nothing to model,
        # so no principal components either
        varies = any(np.ptp(C[use[:, j], j]) > 0 for j in range(m) if use[:, j].any())
        k = max(0, min(max(components), X.shape[0] - 1, X.shape[1])) if varies else 0
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
        r2 = np.full(m, np.nan)
        ks = sorted({min(int(c), k) for c in components})
        # experts costed on the same prompts share the regressions' decompositions: one
        # multi-output ridge per group of experts (on a complete table, one for all)
        groups: dict[bytes, list[int]] = {}
        for j in range(m):
            rows = use[:, j]
            if rows.sum() < MIN_ROWS or mean[j] <= 0:
                continue
            if np.log(C[rows, j] + offset[j]).std() < 1e-9:
                continue
            groups.setdefault(rows.tobytes(), []).append(j)
        for experts in groups.values():
            rows = use[:, experts[0]]
            Zg = Z[rows]
            Y = np.log(C[rows][:, experts] + offset[experts])
            cg, bg, _ = cls._select(Zg, Y, ks)
            r2g = cls._cv_r2(Zg, Y, ks)
            for g, j in enumerate(experts):
                coef[j], icpt[j] = cg[:, g], bg[g]
                smear[j] = float(np.mean(np.exp(Y[:, g] - (Zg @ coef[j] + icpt[j]))))
                r2[j] = r2g[g]
                fitted[j] = min_r2 is None or r2[j] >= min_r2
        return cls(mean, pca_mean, comps, f_mean, f_scale, coef, icpt, smear, offset, fitted,
                   r2)

    @staticmethod
    def _select(Z: np.ndarray, Y: np.ndarray, ks: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per column of ``Y`` (n, e), a ridge on the first ``1 + kk`` columns of ``Z``, ``kk``
        in ``ks`` and the strength in :data:`ALPHAS` chosen together by exact leave-one-out
        error (ties keep the fewer components): (coefficients (p, e) over all of ``Z``'s
        columns, intercepts (e,), errors (e,))."""
        from routers.irt import ridge_path

        zc, yc = Z.mean(axis=0), Y.mean(axis=0)
        coef = np.zeros((Z.shape[1], Y.shape[1]))
        best = np.full(Y.shape[1], np.inf)
        for kk in ks:
            B, loo = ridge_path(Z[:, :1 + kk] - zc[:1 + kk], Y - yc, ALPHAS)
            err = ((loo - (Y - yc)) ** 2).mean(axis=1)  # (alphas, e)
            a = np.argmin(err, axis=0)
            e_min = err[a, np.arange(Y.shape[1])]
            better = e_min < best - 1e-12
            for g in np.flatnonzero(better):
                coef[:, g] = 0.0
                coef[:1 + kk, g] = B[a[g], :, g]
            best = np.where(better, e_min, best)
        return coef, yc - zc @ coef, best

    @classmethod
    def _cv_r2(cls, Z: np.ndarray, Y: np.ndarray, ks: Sequence[int]) -> np.ndarray:
        """Per column of ``Y``, R^2 of log cost on held-out prompts: :data:`CV_FOLDS`-fold
        cross-validation of the whole :meth:`_select` (components and strength chosen inside
        each fold, so the figure carries no optimism from choosing them among 65
        configurations), on a seeded sample of :data:`CV_MAX_ROWS` prompts when there are
        more."""
        rng = np.random.default_rng(0)
        if len(Y) > CV_MAX_ROWS:  # the gate needs R^2 to a few hundredths, not more rows
            keep = np.sort(rng.choice(len(Y), CV_MAX_ROWS, replace=False))
            Z, Y = Z[keep], Y[keep]
        n = len(Y)
        folds = rng.permutation(n) % CV_FOLDS
        sse = np.zeros(Y.shape[1])
        for f in range(CV_FOLDS):
            tr, te = folds != f, folds == f
            if tr.sum() < 2 or not te.any():
                continue
            c, b, _ = cls._select(Z[tr], Y[tr], ks)
            sse += ((Y[te] - (Z[te] @ c + b)) ** 2).sum(axis=0)
        return 1.0 - sse / (n * Y.var(axis=0))

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

    def summary(self, experts: Sequence[str]) -> dict[str, object]:
        """What a training report says about the model: the experts whose cost is predicted
        per query, and every modelled expert's cross-validated R^2 of log cost."""
        r2 = self.r2_ if self.r2_ is not None else np.full(len(self.fitted_), np.nan)
        return {"predicted": [e for e, f in zip(experts, self.fitted_, strict=True) if f],
                "cv_r2": {e: round(float(v), 4) for e, v in zip(experts, r2, strict=True)
                           if np.isfinite(v)}}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f: np.asarray(getattr(self, f)) for f in self._FIELDS}
        out.update({f: np.asarray(getattr(self, f)) for f in self._OPTIONAL
                    if getattr(self, f) is not None})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CostModel:
        missing = [f for f in cls._FIELDS if f not in arrays]
        if missing:
            raise RouterError(f"cost model: arrays missing: {', '.join(missing)}")
        return cls(*(np.asarray(arrays[f]) for f in cls._FIELDS),
                   *(np.asarray(arrays[f]) if f in arrays else None for f in cls._OPTIONAL))


def fit_cost_model(mode: str, X: np.ndarray, texts: Sequence[str], costs: np.ndarray,
                   scores: np.ndarray | None = None
                   ) -> tuple[CostModel | None, CostModel | None]:
    """(the cost model a router with ``cost_model=mode`` trades against, the model fitted):
    None with ``"mean"``; every modelled expert with ``"predicted"``; with ``"auto"`` the
    experts whose cross-validated R^2 reaches :data:`MIN_R2`, None when there is none (the
    second item still says what each expert's R^2 was)."""
    if mode == "mean":
        return None, None
    model = CostModel.fit(X, texts, costs, scores,
                          min_r2=MIN_R2 if mode == "auto" else None)
    if mode == "auto" and not model.fitted_.any():
        return None, model
    return model, model
