"""``GuardRouter(method="auto")``: the guard variant chosen on pseudo-OOD from in-domain data.

A guard must be chosen by how well it rejects what it has never seen, but the training data
holds no out-of-domain examples. Leave-labels-out makes some: ``fraction`` of the in-domain
labels (at least one, two or more always stay, seeded) are taken out; every candidate of
:data:`CANDIDATES` is fitted on the remaining labels' training rows, its threshold calibrated
on their validation rows at the guard's ``target_frr``, and scored by the GQR (harmonic mean
of in-domain accuracy and rejection rate) with the left-out labels' rows as the OOD set. The
best candidate's settings become the guard's parameters and it is refitted on every label;
``selection_`` records every candidate's score. No OOD or test row is used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routers.base import RouterError, RoutingTable

__all__ = ["CANDIDATES", "select_guard"]

#: guard settings tried by ``method="auto"``: dense only, dense + sparse (averaged scores, or
#: one model over both: ``fused``), with the MLP head
CANDIDATES: tuple[Mapping[str, Any], ...] = (
    {"method": "knn", "head": None, "lexical": False},
    {"method": "knn+msp", "head": None, "lexical": False},
    {"method": "knn", "head": None, "lexical": True},
    {"method": "knn", "head": "mlp", "lexical": False},
    {"method": "knn", "head": "mlp", "lexical": True},
    {"method": "fused", "head": None, "lexical": False},
)


def _gqr(id_acc: float, ood_acc: float) -> float:
    return 0.0 if id_acc + ood_acc == 0 else 2 * id_acc * ood_acc / (id_acc + ood_acc)


def select_guard(params: Mapping[str, Any], X: np.ndarray, labels: Sequence[str],
                 texts: Sequence[str], Xv: np.ndarray, val_labels: Sequence[str],
                 val_texts: Sequence[str], *, fraction: float = 0.2,
                 candidates: Sequence[Mapping[str, Any]] = CANDIDATES
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the chosen candidate's settings, the selection record); see the module doc.

    ``params`` are the guard's other parameters (``target_frr``, ``seed``, ``k``, ...).
    """
    from routers.guard import GuardRouter

    labs = sorted(set(labels))
    if len(labs) < 3:
        raise RouterError("guard: method 'auto' needs at least 3 labels to leave some out "
                          f"as pseudo-OOD (has {len(labs)}); name a method instead")
    seed = int(params.get("seed", 0))
    k = min(max(1, round(len(labs) * fraction)), len(labs) - 2)
    held = set(np.random.default_rng(seed).choice(labs, size=k, replace=False).tolist())
    lab_tr, lab_va = np.asarray(labels), np.asarray(val_labels)
    tr, va = ~np.isin(lab_tr, list(held)), ~np.isin(lab_va, list(held))
    ood_X = np.concatenate([X[~tr], Xv[~va]])
    ood_t = [t for t, keep in zip(texts, tr, strict=True) if not keep] + \
        [t for t, keep in zip(val_texts, va, strict=True) if not keep]
    sub = RoutingTable([str(i) for i in range(int(tr.sum()))],
                       [t for t, keep in zip(texts, tr, strict=True) if keep], ["in-domain"],
                       np.ones((int(tr.sum()), 1)), np.zeros((int(tr.sum()), 1)),
                       lab_tr[tr].tolist())
    Xva, tva = Xv[va], [t for t, keep in zip(val_texts, va, strict=True) if keep]
    base = {k_: v for k_, v in params.items()
            if k_ not in ("method", "head", "lexical", "unsafe", "routes")}
    rows: list[dict[str, Any]] = []
    for cand in candidates:
        g = GuardRouter(**base, **cand, unsafe=False)
        g.fit(X[tr], sub, validation=(Xva, lab_va[va].tolist(), tva))
        v = g.verdict(Xva, tva)
        id_acc = float(np.mean([(x.label == y) and not x.rejected
                                for x, y in zip(v, lab_va[va], strict=True)]))
        ood_acc = float(np.mean([x.rejected for x in g.verdict(ood_X, ood_t)]))
        rows.append({**dict(cand), "in_domain_accuracy": round(id_acc, 6),
                     "pseudo_ood_rejection": round(ood_acc, 6),
                     "gqr": round(_gqr(id_acc, ood_acc), 6)})
    best = max(rows, key=lambda r: (r["gqr"], -rows.index(r)))
    chosen = {k_: best[k_] for k_ in ("method", "head", "lexical")}
    record = {"criterion": "GQR on leave-labels-out pseudo-OOD (validation rows of the kept "
                           "labels for in-domain accuracy and the threshold)",
              "held_out_labels": sorted(held), "chosen": chosen, "candidates": rows}
    return chosen, record
