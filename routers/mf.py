"""Matrix-factorisation router (RouteLLM ``mf``), generalised to N experts.

As in RouteLLM's ``MFModel``, each expert m has a learned embedding ``v_m`` (L2-normalised)
and prompts are projected by a learned matrix ``W`` (d -> ``dim``); the score of expert m on
prompt q is ``s(q, m) = w · (v_m ⊙ W q)``. RouteLLM trains only on pairwise preferences,
``sigmoid(s(q, a) - s(q, b))`` for the winner a, and routes a strong/weak pair by a threshold
on the strong model's predicted win rate. Here each expert also gets a bias ``b_m`` and the
loss adds a pointwise term, binary cross-entropy of ``sigmoid(s(q, m) + b_m)`` against the
observed score, so the model yields calibrated per-expert quality for any number of experts
(and missing pairs simply contribute no loss). ``pairwise_weight`` sets the RouteLLM-style
term's weight. Training is full-batch Adam in numpy (seeded, deterministic, a few seconds);
the choice uses the shared knob of :mod:`routers.tradeoff` (``threshold`` on the strong
expert's predicted advantage for the RouteLLM behaviour).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.tradeoff import QualityRouter

__all__ = ["MFRouter"]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


@register
class MFRouter(QualityRouter):
    name = "mf"
    _array_attrs = ("W_", "V_", "w_", "b_", "costs_")
    _json_attrs = ("experts_", "dim_", "train_loss_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "dim": Num(1, integer=True),
        "epochs": Num(1, integer=True),
        "batch_size": Num(1, integer=True),
        "lr": Num(0, lo_open=True),
        "weight_decay": Num(0),
    }

    def __init__(self, dim: int = 64, epochs: int = 60, lr: float = 3e-3,
                 weight_decay: float = 1e-4, pairwise_weight: float = 1.0,
                 batch_size: int = 1024, cost_weight: float = 0.0,
                 threshold: float | None = None, cost_model: str = "auto", seed: int = 0) -> None:
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.pairwise_weight = pairwise_weight
        self.batch_size = batch_size
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model
        self.seed = seed

    # -- model ---------------------------------------------------------------------------
    @staticmethod
    def _scores(X: np.ndarray, W: np.ndarray, V: np.ndarray, w: np.ndarray) -> np.ndarray:
        Vn = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        H = X @ W  # (n, dim)
        return (H * w[None, :]) @ Vn.T  # (n, m)

    def _quality(self, X: np.ndarray) -> np.ndarray:
        s = self._scores(np.asarray(X, np.float64), self.W_, self.V_, self.w_)
        return _sigmoid(s + self.b_[None, :])

    # -- training ------------------------------------------------------------------------
    def fit(self, X: np.ndarray, table: RoutingTable) -> MFRouter:
        X, S = self._base_checks(X, table)
        for p in ("dim", "epochs", "batch_size"):
            if int(getattr(self, p)) < 1:
                raise RouterError(f"mf: {p} must be at least 1")
        if not float(self.lr) > 0 or float(self.weight_decay) < 0:
            raise RouterError("mf: lr must be > 0 and weight_decay >= 0")
        rng = np.random.default_rng(int(self.seed))
        n, d = X.shape
        m, k = S.shape[1], int(self.dim)
        Xd = np.asarray(X, np.float64)
        finite = np.isfinite(S)
        T = np.where(finite, S, 0.0)
        M = finite.astype(np.float64)
        prior = np.clip(np.nanmean(S, axis=0), 1e-3, 1 - 1e-3)
        params = {
            "W": rng.normal(0, 1 / np.sqrt(d), (d, k)),
            "V": rng.normal(0, 1, (m, k)),
            "w": rng.normal(0, 1 / np.sqrt(k), k),
            "b": np.log(prior / (1 - prior)),
        }
        mom = {key: np.zeros_like(v) for key, v in params.items()}
        vel = {key: np.zeros_like(v) for key, v in params.items()}
        lam = float(self.pairwise_weight)
        bs = int(self.batch_size)
        step = 0
        loss = float("nan")
        for _ in range(int(self.epochs)):
            perm = rng.permutation(n)
            for start in range(0, n, bs):
                idx = perm[start:start + bs]
                grads, loss = self._grads(params, Xd[idx], T[idx], M[idx], lam)
                step += 1
                for key, g in grads.items():
                    g = g + float(self.weight_decay) * params[key] if key != "b" else g
                    mom[key] = 0.9 * mom[key] + 0.1 * g
                    vel[key] = 0.999 * vel[key] + 0.001 * g * g
                    mh = mom[key] / (1 - 0.9 ** step)
                    vh = vel[key] / (1 - 0.999 ** step)
                    params[key] = params[key] - float(self.lr) * mh / (np.sqrt(vh) + 1e-8)
        self.W_, self.V_, self.w_, self.b_ = (params[k_] for k_ in ("W", "V", "w", "b"))
        self.train_loss_ = float(loss)
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(d)
        return self

    @staticmethod
    def _grads(p: dict[str, np.ndarray], X: np.ndarray, T: np.ndarray, M: np.ndarray,
               lam: float) -> tuple[dict[str, np.ndarray], float]:
        """Loss and gradients of pointwise BCE + λ · pairwise BCE (RouteLLM) on one batch."""
        W, V, w, b = p["W"], p["V"], p["w"], p["b"]
        vnorm = np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
        Vn = V / vnorm
        H = X @ W
        G = H * w[None, :]
        s = G @ Vn.T
        z = s + b[None, :]
        pz = _sigmoid(z)
        cnt = max(M.sum(), 1.0)
        eps = 1e-9
        loss = -float(np.sum(M * (T * np.log(pz + eps) + (1 - T) * np.log(1 - pz + eps)))) / cnt
        dz = M * (pz - T) / cnt  # d loss / d z  (n, m)
        ds = dz.copy()
        db = dz.sum(axis=0)
        if lam > 0:
            # all ordered pairs (a, b) of evaluated experts where a scored higher than b
            diff = T[:, :, None] - T[:, None, :]
            both = M[:, :, None] * M[:, None, :]
            win = (diff > 0) & (both > 0)
            npairs = max(int(win.sum()), 1)
            sd = s[:, :, None] - s[:, None, :]
            ps = _sigmoid(sd)
            loss += lam * -float(np.sum(np.where(win, np.log(ps + eps), 0.0))) / npairs
            g = np.where(win, ps - 1.0, 0.0) * lam / npairs  # d/d sd
            ds += g.sum(axis=2) - g.sum(axis=1)
        dG = ds @ Vn  # (n, k)
        dVn = ds.T @ G  # (m, k)
        dV = (dVn - Vn * np.sum(dVn * Vn, axis=1, keepdims=True)) / vnorm
        dH = dG * w[None, :]
        dw = np.sum(dG * H, axis=0)
        dW = X.T @ dH
        return {"W": dW, "V": dV, "w": dw, "b": db}, loss
