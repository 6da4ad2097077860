"""Stacked router: several per-expert quality estimates combined by a learned meta-model.

For each expert three base estimates of P(the expert answers well | query) are computed:

* a logistic regression on the prompt embedding (topic, domain);
* a logistic regression on a few prompt statistics that track difficulty and which no
  embedding of the text sees well: length in characters and words, count of numbers and of
  distinct numbers, sentences, percent signs, fractions, decimals, currency, questions, lines;
* a similarity-weighted nearest-neighbour success rate (as :mod:`routers.knn`);
* when the table has categories (two or more), the expert's per-category success rate
  (shrunk toward its mean) mixed by a soft nearest-centroid assignment of the query to the
  categories — queries arrive without a category, so it is inferred from the embedding.

A per-expert logistic regression on the logits of the three, fitted on out-of-fold
estimates of the training prompts (``folds``-fold), combines them into a calibrated
probability. Scores in [0, 1] that are not 0/1 count as soft labels (sample weights).
Every learned part is stored as plain arrays (coefficients, scaler statistics), so the
artifact needs neither pickle nor skops.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from routers.base import Decision, RouterError, RoutingTable, register
from routers.knn import knn_quality, unit_rows
from routers.tradeoff import QualityRouter

__all__ = ["StackRouter", "text_statistics"]

_NUM = re.compile(r"\d+(?:[.,]\d+)?")


def text_statistics(texts: Sequence[str]) -> np.ndarray:
    """Difficulty-related statistics of each prompt, log1p-scaled, shape (n, 12)."""
    rows = []
    for p in texts:
        nums = _NUM.findall(p)
        vals = [float(n.replace(",", "")) for n in nums] or [0.0]
        rows.append([len(p), len(p.split()), len(nums), len(set(nums)), p.count("."),
                     p.count("%") + p.lower().count("percent"), p.count("/"),
                     np.log1p(max(vals)), sum("." in n for n in nums), p.count("$"),
                     p.count("?"), p.count("\n")])
    return np.log1p(np.abs(np.asarray(rows, dtype=np.float64).reshape(len(rows), 12)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _fit_lr(F: np.ndarray, s: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Logistic regression with soft labels ``s`` in [0, 1]; returns (coef, intercept)."""
    from sklearn.linear_model import LogisticRegression

    pos, neg = s > 0, s < 1
    if not pos.any() or not neg.any():
        # one outcome only: a constant at the (smoothed) base rate
        rate = (s.sum() + 0.5) / (s.size + 1.0)
        return np.zeros(F.shape[1]), float(_logit(np.array([rate]))[0])
    Fa = np.concatenate([F[pos], F[neg]])
    ya = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    wa = np.concatenate([s[pos], 1 - s[neg]])
    m = LogisticRegression(C=C, max_iter=1000).fit(Fa, ya, sample_weight=wa)
    return m.coef_[0].astype(np.float64), float(m.intercept_[0])


@register
class StackRouter(QualityRouter):
    name = "stack"
    _array_attrs = ("train_X_", "train_scores_", "prior_", "costs_", "emb_coef_", "emb_bias_",
                    "stat_mean_", "stat_scale_", "stat_coef_", "stat_bias_", "meta_coef_",
                    "meta_bias_", "centroids_", "category_rates_")
    _json_attrs = ("experts_", "dim_")

    def __init__(self, C_embed: float = 0.3, C_stats: float = 1.0, C_meta: float = 1.0,
                 k: int = 50, temperature: float = 0.05, prior_strength: float = 2.0,
                 folds: int = 5, seed: int = 0, cost_weight: float = 0.0,
                 threshold: float | None = None) -> None:
        self.C_embed = C_embed
        self.C_stats = C_stats
        self.C_meta = C_meta
        self.k = k
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.folds = folds
        self.seed = seed
        self.cost_weight = cost_weight
        self.threshold = threshold

    # -- learning ----------------------------------------------------------------------
    def _category_prior(self, C: np.ndarray, R: np.ndarray, Xq: np.ndarray) -> np.ndarray:
        """Per-category rates R (K, m) mixed by soft nearest-centroid weights, (nq, m)."""
        sims = Xq @ C.T
        w = np.exp((sims - sims.max(axis=1, keepdims=True)) / float(self.temperature))
        return (w / w.sum(axis=1, keepdims=True)) @ R

    @staticmethod
    def _centroids(Xtr: np.ndarray, cats: np.ndarray, K: int) -> np.ndarray:
        C = np.zeros((K, Xtr.shape[1]))
        np.add.at(C, cats, Xtr)
        return C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)

    def _rates(self, s: np.ndarray, cats: np.ndarray, K: int) -> np.ndarray:
        n = np.bincount(cats, minlength=K).astype(np.float64)
        tot = np.bincount(cats, weights=s, minlength=K)
        return (tot + self.prior_strength_cat * s.mean()) / (n + self.prior_strength_cat)

    #: pseudo-counts shrinking a category's success rate toward the expert's mean
    prior_strength_cat = 5.0

    def _base(self, Xtr: np.ndarray, Htr: np.ndarray, s: np.ndarray, Xq: np.ndarray,
              Hq: np.ndarray, cats: np.ndarray | None = None, K: int = 0
              ) -> tuple[np.ndarray, tuple[np.ndarray, float, np.ndarray, float]]:
        """Base estimates (nq, 3 or 4) for one expert and its fitted coefficients.

        ``Htr``/``Hq`` are the prompt statistics already standardised; ``cats`` the training
        prompts' category indices (None: no category component).
        """
        ce, be = _fit_lr(Xtr, s, float(self.C_embed))
        ch, bh = _fit_lr(Htr, s, float(self.C_stats))
        prior = np.array([s.mean()])
        kn = knn_quality(Xq, Xtr, s[:, None], prior, k=int(self.k),
                         temperature=float(self.temperature),
                         prior_strength=float(self.prior_strength))[:, 0]
        parts = [_sigmoid(Xq @ ce + be), _sigmoid(Hq @ ch + bh), kn]
        if cats is not None:
            C = self._centroids(Xtr, cats, K)
            parts.append(self._category_prior(C, self._rates(s, cats, K)[:, None], Xq)[:, 0])
        return np.stack(parts, 1), (ce, be, ch, bh)

    def fit(self, X: np.ndarray, table: RoutingTable) -> StackRouter:
        X, S = self._base_checks(X, table, min_prompts=max(4, int(self.folds)))
        if int(self.folds) < 2 or int(self.k) < 1 or not float(self.temperature) > 0:
            raise RouterError("stack: need folds >= 2, k >= 1 and temperature > 0")
        Xu = unit_rows(X).astype(np.float64)
        H0 = text_statistics(table.prompts)
        self.stat_mean_ = H0.mean(0)
        self.stat_scale_ = H0.std(0) + 1e-6
        H = (H0 - self.stat_mean_) / self.stat_scale_
        m = S.shape[1]
        labels = sorted(set(table.categories)) if table.categories is not None else []
        K = len(labels) if len(labels) >= 2 else 0
        cat_all = np.array([labels.index(c) for c in table.categories or []]) if K else None
        n_comp = 4 if K else 3
        rng = np.random.default_rng(int(self.seed))
        emb_c, emb_b = np.zeros((m, Xu.shape[1])), np.zeros(m)
        st_c, st_b = np.zeros((m, H.shape[1])), np.zeros(m)
        meta_c, meta_b = np.zeros((m, n_comp)), np.zeros(m)
        rates = np.zeros((K, m))
        for j in range(m):
            ok = np.flatnonzero(np.isfinite(S[:, j]))
            Xa, Ha, s = Xu[ok], H[ok], S[ok, j]
            fold = rng.permutation(ok.size) % int(self.folds)
            ca = cat_all[ok] if cat_all is not None else None
            oof = np.zeros((ok.size, n_comp))
            for f in range(int(self.folds)):
                te, tr = fold == f, fold != f
                if tr.sum() < 2 or not te.any():
                    continue
                oof[te] = self._base(Xa[tr], Ha[tr], s[tr], Xa[te], Ha[te],
                                     ca[tr] if ca is not None else None, K)[0]
            meta_c[j], meta_b[j] = _fit_lr(_logit(oof), s, float(self.C_meta))
            _, (emb_c[j], emb_b[j], st_c[j], st_b[j]) = self._base(Xa, Ha, s, Xa[:1], Ha[:1])
            if ca is not None:
                rates[:, j] = self._rates(s, ca, K)
        self.centroids_ = self._centroids(Xu, cat_all, K) if cat_all is not None else \
            np.zeros((0, Xu.shape[1]))
        self.category_rates_ = rates
        self.emb_coef_, self.emb_bias_ = emb_c, emb_b
        self.stat_coef_, self.stat_bias_ = st_c, st_b
        self.meta_coef_, self.meta_bias_ = meta_c, meta_b
        self.train_X_ = Xu.astype(np.float32)
        self.train_scores_ = S.astype(np.float32)
        self.prior_ = np.nan_to_num(np.nanmean(S, axis=0), nan=0.0)
        self.experts_ = list(table.models)
        self.costs_ = table.mean_costs()
        self.dim_ = int(X.shape[1])
        return self

    # -- inference ---------------------------------------------------------------------
    def _quality_texts(self, X: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        Xu = unit_rows(X).astype(np.float64)
        Hs = (text_statistics(texts) - self.stat_mean_) / self.stat_scale_
        kn = knn_quality(Xu, self.train_X_, self.train_scores_.astype(np.float64),
                         np.asarray(self.prior_, dtype=np.float64), k=int(self.k),
                         temperature=float(self.temperature),
                         prior_strength=float(self.prior_strength))
        pe = _sigmoid(Xu @ self.emb_coef_.T + self.emb_bias_)
        ph = _sigmoid(Hs @ self.stat_coef_.T + self.stat_bias_)
        parts = [_logit(pe), _logit(ph), _logit(kn)]
        if len(self.centroids_):
            parts.append(_logit(self._category_prior(self.centroids_, self.category_rates_, Xu)))
        Z = np.stack(parts, axis=2)  # (n, m, components)
        return _sigmoid(np.einsum("nmc,mc->nm", Z, self.meta_coef_) + self.meta_bias_)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        raise RouterError("stack router needs the query texts (prompt statistics)")

    def predict_quality(self, X: np.ndarray, texts: Sequence[str] | None = None) -> np.ndarray:
        self.check_fitted()
        if texts is None:
            raise RouterError("stack router needs the query texts (prompt statistics)")
        X = self.check_X(X, texts)
        return np.clip(self._quality_texts(X, texts), 0.0, 1.0)

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        return self.decisions_from_quality(self.predict_quality(X, texts))
