"""Stacked router: several per-expert quality estimates combined by a learned meta-model.

For each expert three base estimates of P(the expert answers well | query) are computed:

* a logistic regression on the prompt embedding (topic, domain);
* a logistic regression on a few prompt statistics that track difficulty and which no
  embedding of the text sees well: length in characters and words, count of numbers and of
  distinct numbers, sentences, percent signs, fractions, decimals, currency, questions, lines;
* a similarity-weighted nearest-neighbour success rate (as :mod:`routers.knn`).

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
    _param_names = ("C_embed", "C_stats", "C_meta", "k", "temperature", "prior_strength",
                    "folds", "seed", "cost_weight", "threshold")
    _array_attrs = ("train_X_", "train_scores_", "prior_", "costs_", "emb_coef_", "emb_bias_",
                    "stat_mean_", "stat_scale_", "stat_coef_", "stat_bias_", "meta_coef_",
                    "meta_bias_")
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
    def _base(self, Xtr: np.ndarray, Htr: np.ndarray, s: np.ndarray, Xq: np.ndarray,
              Hq: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, float, np.ndarray, float]]:
        """Base estimates (nq, 3) for one expert and its fitted coefficients.

        ``Htr``/``Hq`` are the prompt statistics already standardised.
        """
        ce, be = _fit_lr(Xtr, s, float(self.C_embed))
        ch, bh = _fit_lr(Htr, s, float(self.C_stats))
        prior = np.array([s.mean()])
        kn = knn_quality(Xq, Xtr, s[:, None], prior, k=int(self.k),
                         temperature=float(self.temperature),
                         prior_strength=float(self.prior_strength))[:, 0]
        Z = np.stack([_sigmoid(Xq @ ce + be), _sigmoid(Hq @ ch + bh), kn], 1)
        return Z, (ce, be, ch, bh)

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
        rng = np.random.default_rng(int(self.seed))
        emb_c, emb_b = np.zeros((m, Xu.shape[1])), np.zeros(m)
        st_c, st_b = np.zeros((m, H.shape[1])), np.zeros(m)
        meta_c, meta_b = np.zeros((m, 3)), np.zeros(m)
        for j in range(m):
            ok = np.flatnonzero(np.isfinite(S[:, j]))
            Xa, Ha, s = Xu[ok], H[ok], S[ok, j]
            fold = rng.permutation(ok.size) % int(self.folds)
            oof = np.zeros((ok.size, 3))
            for f in range(int(self.folds)):
                te, tr = fold == f, fold != f
                if tr.sum() < 2 or not te.any():
                    continue
                oof[te] = self._base(Xa[tr], Ha[tr], s[tr], Xa[te], Ha[te])[0]
            meta_c[j], meta_b[j] = _fit_lr(_logit(oof), s, float(self.C_meta))
            _, (emb_c[j], emb_b[j], st_c[j], st_b[j]) = self._base(Xa, Ha, s, Xa[:1], Ha[:1])
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
        Z = np.stack([_logit(pe), _logit(ph), _logit(kn)], axis=2)  # (n, m, 3)
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
