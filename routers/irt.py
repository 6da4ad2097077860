"""Shared-strength router: multi-output ridge on text features, a low-rank expert factor, and
calibrated probabilities (IRT / matrix-factorisation style with text features).

With 9-11 experts most experts win on few prompts; fitting each expert alone (the
``classifier`` family) spends little data on each. Here every expert's score is regressed on
the same features in one multi-output ridge regression ``Y ≈ F B`` (F: the unit embedding, and
with ``text_stats``, standardised prompt statistics that track difficulty, see
:func:`routers.stack.text_statistics`), and the coefficient matrix is then restricted to rank
``rank``: ``B_r = B V_r V_rᵀ`` where ``V_r`` are the top right singular vectors of the fitted
scores. That is reduced-rank regression: each prompt gets an ``r``-dimensional "requirement"
vector ``F B V_r`` and each expert an ``r``-dimensional "ability" row of ``V_r`` (the model
embeddings of matrix factorisation / multidimensional IRT), so experts with few wins borrow the
directions learned from all of them.

Everything is closed-form: one thin SVD of the features gives the ridge solution for
every regularisation strength and the exact leave-one-out predictions (the hat-matrix
identity), so ``alpha`` is chosen per expert by leave-one-out error on train alone, in
well under a second for 14k prompts. Missing (prompt, expert) scores are filled by the
model's own predictions (two EM rounds).

Calibration: each expert's leave-one-out prediction is mapped to a probability by a
one-feature logistic regression (Platt scaling, soft labels for fractional scores). The
predicted qualities are therefore probabilities on every table, so the shared cost knob of
:mod:`routers.tradeoff` trades the same units of quality for cost everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.knn import unit_rows
from routers.stack import text_statistics
from routers.tradeoff import QualityRouter

__all__ = ["ALPHAS", "IRTRouter", "ridge_path"]

#: ridge strengths tried per expert (features are unit embeddings plus standardised stats)
ALPHAS = np.geomspace(0.1, 1e5, 19)
_EM_ROUNDS = 2


def ridge_path(F: np.ndarray, Y: np.ndarray, alphas: Sequence[float] | np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Ridge coefficients and leave-one-out predictions for every alpha, in closed form.

    ``F`` (n, d) and ``Y`` (n, m) are centred. Returns ``B`` (A, d, m) and ``Yloo`` (A, n, m):
    for each alpha, ``(Fᵀ F + α I)⁻¹ Fᵀ Y`` and ``y_i - (y_i - ŷ_i) / (1 - h_ii)``. Computed
    from the thin SVD ``F = U s Vᵀ`` restricted to the non-zero singular values, which stays
    exact when there are more features than prompts (the null directions of ``F`` carry no
    fit; through ``Fᵀ F``'s eigenvectors their rounding noise is amplified by ``1 / α``).
    """
    U, sv, Vt = np.linalg.svd(F, full_matrices=False)
    keep = sv > sv[0] * 1e-10 if sv.size else sv > 0
    U, sv, Vt = U[:, keep], sv[keep], Vt[keep]
    UtY = U.T @ Y  # (k, m)
    U2 = U * U
    Bs, Ls = [], []
    for a in alphas:
        shrink = sv * sv / (sv * sv + float(a))  # (k,)
        fit = U @ (shrink[:, None] * UtY)
        # diagonal of the hat matrix; 1/n is the intercept's share (F and Y are centred)
        h = U2 @ shrink + 1.0 / F.shape[0]
        Ls.append(Y - (Y - fit) / np.maximum(1.0 - h, 1e-9)[:, None])
        Bs.append(Vt.T @ ((sv / (sv * sv + float(a)))[:, None] * UtY))
    return np.stack(Bs), np.stack(Ls)


def _platt(z: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Logistic map ``sigmoid(a z + c)`` of a score to a probability, soft labels ``s``."""
    from sklearn.linear_model import LogisticRegression

    pos, neg = s > 0, s < 1
    if not pos.any() or not neg.any() or np.ptp(z) < 1e-12:
        rate = (s.sum() + 0.5) / (s.size + 1.0)
        return 0.0, float(np.log(rate / (1 - rate)))
    za = np.concatenate([z[pos], z[neg]])[:, None]
    ya = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    wa = np.concatenate([s[pos], 1 - s[neg]])
    m = LogisticRegression(C=100.0, max_iter=1000).fit(za, ya, sample_weight=wa)
    return float(m.coef_[0, 0]), float(m.intercept_[0])


@register
class IRTRouter(QualityRouter):
    name = "irt"
    _array_attrs = ("coef_", "intercept_", "feat_mean_", "stat_mean_", "stat_scale_",
                    "platt_", "alpha_", "abilities_", "costs_")
    _json_attrs = ("experts_", "dim_", "rank_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "rank": Num(1, integer=True, none_ok=True),
    }

    def __init__(self, rank: int | None = None, text_stats: bool = True,
                 cost_weight: float = 0.0, threshold: float | None = None,
                 cost_model: str = "auto") -> None:
        self.rank = rank
        self.text_stats = text_stats
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model

    # -- features ------------------------------------------------------------------------
    def _features(self, X: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        # unit rows scaled by sqrt(d): every feature column then has a variance near 1, like
        # the standardised statistics, so one ridge strength suits both
        F = unit_rows(X).astype(np.float64) * np.sqrt(X.shape[1])
        if self.text_stats:
            if texts is None:
                raise RouterError("irt: text_stats=True needs the query texts")
            H = (text_statistics(texts) - self.stat_mean_) / self.stat_scale_
            F = np.concatenate([F, H], axis=1)
        return F

    # -- learning ------------------------------------------------------------------------
    def fit(self, X: np.ndarray, table: RoutingTable) -> IRTRouter:
        X, S = self._base_checks(X, table, min_prompts=3)
        m = S.shape[1]
        if self.rank is not None and not 1 <= int(self.rank) <= m:
            raise RouterError(f"irt: rank must be None or in 1..{m}")
        if self.text_stats:
            H0 = text_statistics(table.prompts)
            self.stat_mean_, self.stat_scale_ = H0.mean(0), H0.std(0) + 1e-6
        else:
            self.stat_mean_ = self.stat_scale_ = np.zeros(0)
        F = self._features(X, table.prompts)
        self.feat_mean_ = F.mean(0)
        Fc = F - self.feat_mean_
        obs = np.isfinite(S)
        prior = np.nan_to_num(np.nanmean(S, axis=0), nan=0.5)
        Y = np.where(obs, S, prior[None, :])
        for _ in range(_EM_ROUNDS + 1):
            mu = Y.mean(0)
            Bs, Ls = ridge_path(Fc, Y - mu, ALPHAS)
            # per expert, the alpha with the least leave-one-out error on its observed rows
            err = np.stack([(((L + mu) - S) ** 2 * obs).sum(0) for L in Ls])  # (A, m)
            best = err.argmin(axis=0)
            B = Bs[best, :, np.arange(m)].T  # (d, m)
            Yloo = Ls[best, :, np.arange(m)].T + mu  # (n, m)
            if obs.all():
                break
            Y = np.where(obs, S, Fc @ B + mu)
        r = m if self.rank is None else int(self.rank)
        fitted = Fc @ B
        _, _, Vt = np.linalg.svd(fitted - fitted.mean(0), full_matrices=False)
        P = Vt[:r].T @ Vt[:r]  # (m, m) projection onto the shared expert factor
        self.coef_ = B @ P
        self.intercept_ = mu
        self.abilities_ = Vt[:r].T  # (m, r): each expert's row in the shared factor
        self.rank_ = r
        Z = (Yloo - mu) @ P + mu  # leave-one-out predictions in the low-rank model
        platt = np.zeros((m, 2))
        for j in range(m):
            platt[j] = _platt(Z[obs[:, j], j], S[obs[:, j], j])
        self.platt_ = platt
        self.alpha_ = ALPHAS[best]
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    # -- inference -----------------------------------------------------------------------
    def _quality_texts(self, X: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        Z = (self._features(X, texts) - self.feat_mean_) @ self.coef_ + self.intercept_
        a, c = self.platt_[:, 0], self.platt_[:, 1]
        return 1.0 / (1.0 + np.exp(-np.clip(Z * a + c, -30, 30)))

    def _quality(self, X: np.ndarray) -> np.ndarray:
        return self._quality_texts(X, None)

