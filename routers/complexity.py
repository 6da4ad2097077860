"""Complexity-aware router (EllieSQL): predicted difficulty -> cheapest expert good enough.

A ridge regression on prompt embeddings predicts the query's difficulty,
``d = 1 - mean success over experts`` (NaN-aware). On a validation part of the training
table (``val_fraction``, split by prompt with ``seed``) the router

* fits, per expert, an isotonic (non-increasing) curve of its score against predicted
  difficulty: ``predict_quality`` reads these curves, for offline sweeps;
* calibrates one difficulty threshold ``threshold_``: queries harder than it go to the
  strong expert (the table's best mean quality), the others to the cheap expert (the table's
  lowest mean cost; for two experts, the weak one). On an N-model table these are the two
  ends of the table's quality and cost, whatever the order of its columns; when the best
  expert is also the cheapest, it answers everything. The threshold comes from either a cost budget
  ``max_strong_share`` ("at most 30% of queries to the strong expert") or a quality target
  ``quality_target`` (the smallest strong share whose validation quality reaches it).

Set exactly one of ``max_strong_share`` and ``quality_target``. The threshold is stored in
the artifact, so the gateway applies the budget calibrated at training time.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from routers.base import Decision, Num, RouterError, RoutingTable, Target, register
from routers.tradeoff import QualityRouter

__all__ = ["ComplexityRouter"]


def _isotonic_curve(d: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    from sklearn.isotonic import IsotonicRegression

    if len(np.unique(d)) < 2:
        return np.full_like(grid, float(np.mean(y)))
    iso = IsotonicRegression(increasing=False, out_of_bounds="clip", y_min=0.0, y_max=1.0)
    iso.fit(d, y)
    return np.asarray(iso.predict(grid), dtype=np.float64)


@register
class ComplexityRouter(QualityRouter):
    name = "complexity"
    _array_attrs = ("coef_", "intercept_", "grid_", "curves_", "costs_")
    _json_attrs = ("experts_", "dim_", "strong_", "threshold_", "calibration_")
    n_grid = 64

    param_ranges: ClassVar[dict[str, Num]] = {
        "max_strong_share": Num(0, 1, none_ok=True),
        "quality_target": Num(0, 1, none_ok=True),
        "alpha": Num(0, lo_open=True),
        "val_fraction": Num(0, 1, lo_open=True, hi_open=True),
    }

    def __init__(self, max_strong_share: float | None = 0.3,
                 quality_target: float | None = None, alpha: float = 1.0,
                 val_fraction: float = 0.25, seed: int = 0) -> None:
        self.max_strong_share = max_strong_share
        self.quality_target = quality_target
        self.alpha = alpha
        self.val_fraction = val_fraction
        self.seed = seed

    # the shared knob is replaced by the calibrated difficulty threshold
    cost_weight = 0.0
    threshold = None

    def fit(self, X: np.ndarray, table: RoutingTable) -> ComplexityRouter:
        from sklearn.linear_model import Ridge

        X, S = self._base_checks(X, table, min_prompts=4)
        if (self.max_strong_share is None) == (self.quality_target is None):
            raise RouterError("complexity: set exactly one of max_strong_share and "
                              "quality_target")
        if self.max_strong_share is not None and not 0 <= float(self.max_strong_share) <= 1:
            raise RouterError("complexity: max_strong_share must lie in [0, 1]")
        if self.quality_target is not None and not 0 <= float(self.quality_target) <= 1:
            raise RouterError("complexity: quality_target must lie in [0, 1]")
        if not 0 < float(self.val_fraction) < 1 or not float(self.alpha) > 0:
            raise RouterError("complexity: val_fraction must lie in (0, 1) and alpha be > 0")
        n = len(table)
        perm = np.random.default_rng(int(self.seed)).permutation(n)
        n_val = max(2, round(n * float(self.val_fraction)))
        val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        difficulty = 1.0 - np.nanmean(S, axis=1)
        reg = Ridge(alpha=float(self.alpha))
        reg.fit(X[tr], difficulty[tr])
        self.coef_ = np.asarray(reg.coef_, dtype=np.float64)
        self.intercept_ = np.asarray([reg.intercept_], dtype=np.float64)
        d_val = X[val].astype(np.float64) @ self.coef_ + self.intercept_[0]
        self.grid_ = np.quantile(d_val, np.linspace(0, 1, self.n_grid))
        self.grid_ = np.maximum.accumulate(self.grid_)
        glob = np.nanmean(S, axis=0)
        curves = np.empty((S.shape[1], self.n_grid))
        for j in range(S.shape[1]):
            ok = np.isfinite(S[val, j])
            curves[j] = (_isotonic_curve(d_val[ok], S[val, j][ok], self.grid_) if ok.sum() >= 2
                         else np.full(self.n_grid, glob[j]))
        self.curves_ = curves
        self.experts_ = list(table.models)
        self.costs_ = table.mean_costs()
        self.dim_ = int(X.shape[1])
        self.strong_ = int(np.argmax(glob))
        self.threshold_, self.calibration_ = self._calibrate(d_val, S[val])
        return self

    def difficulty(self, X: np.ndarray) -> np.ndarray:
        """Predicted difficulty per query (higher = harder), shape (n,)."""
        self.check_fitted()
        return self._difficulty(self.check_X(X))

    def _difficulty(self, X: np.ndarray) -> np.ndarray:
        """:meth:`difficulty` of a checked X (decide checked it once)."""
        return X.astype(np.float64) @ np.asarray(self.coef_) + float(self.intercept_[0])

    def _quality_at(self, d: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(d, self.grid_, c) for c in self.curves_], axis=1)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        return self._quality_at(self._difficulty(X))

    @property
    def cheap_(self) -> int:
        """The table's cheapest expert (by mean cost; ties: the first column)."""
        return int(np.argmin(np.asarray(self.costs_)))

    def _weak_choice(self, Q: np.ndarray) -> np.ndarray:
        return np.full(Q.shape[0], self.cheap_, dtype=np.int64)

    def _choose(self, d: np.ndarray, thr: float, weak: np.ndarray) -> np.ndarray:
        return np.where(d > thr, self.strong_, weak)

    def _calibrate(self, d_val: np.ndarray, S_val: np.ndarray) -> tuple[float, dict[str, Any]]:
        cands = np.concatenate([[-np.inf], np.sort(d_val)])
        rows = np.arange(len(d_val))
        weak = self._weak_choice(self._quality_at(d_val))
        results = []
        for t in cands:
            ch = self._choose(d_val, float(t), weak)
            got = S_val[rows, ch]
            q = float(np.nanmean(got)) if np.isfinite(got).any() else float("nan")
            # the budget limits calls to the strong expert because it costs more; when it is
            # also the cheapest, sending it everything spends nothing extra
            share = float(np.mean(ch == self.strong_)) if self.cheap_ != self.strong_ else 0.0
            results.append((float(t), share, q))
        if self.max_strong_share is not None:
            ok = [r for r in results if r[1] <= float(self.max_strong_share) + 1e-12]
            t, share, q = min(ok, key=lambda r: r[0]) if ok else results[-1]
        else:
            target = float(self.quality_target)  # type: ignore[arg-type]
            ok = [r for r in results if np.isfinite(r[2]) and r[2] >= target - 1e-12]
            t, share, q = max(ok, key=lambda r: r[0]) if ok else results[0]
        info = {"val_prompts": len(d_val), "val_strong_share": share, "val_quality": q,
                "target_met": bool(ok)}
        return (t if np.isfinite(t) else -1e300), info

    def decide(self, X: np.ndarray, texts: Any) -> list[Decision]:
        self.check_fitted()
        X = self.check_X(X, texts)
        d = self._difficulty(X)
        Q = self._quality_at(d)
        thr = float(self.threshold_)
        chosen = self._choose(d, thr, self._weak_choice(Q))
        out = []
        for i in range(len(d)):
            rest = sorted((j for j in range(len(self.experts_)) if j != chosen[i]),
                          key=lambda j: (-Q[i, j], self.costs_[j]))
            order = [int(chosen[i]), *rest]
            hard = d[i] > thr
            j = order[0]
            why = (f"strongest expert {self.experts_[j]} (best mean quality in the table)"
                   if hard or j == self.strong_ else
                   f"cheapest expert {self.experts_[j]} (lowest mean cost in the table, "
                   f"{float(self.costs_[j]):.3g})")
            reason = (f"complexity: difficulty {d[i]:.3f} {'>' if hard else '<='} threshold "
                      f"{thr:.3f} -> {why}")
            out.append(Decision("single", [Target(self.experts_[j], float(Q[i, j]))
                                           for j in order], reason, router=self.name))
        return out
