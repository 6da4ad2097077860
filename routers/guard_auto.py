"""``GuardRouter(method="auto")``: the guard variant chosen on pseudo-OOD from in-domain data.

A guard must be chosen by how well it rejects what it has never seen, but the training data
holds no out-of-domain examples. Leave-labels-out makes some: ``fraction`` of the in-domain
labels (at least one, two or more always stay, seeded) are taken out; every candidate of
:data:`CANDIDATES` is fitted on the remaining labels' training rows, its threshold calibrated
on their validation rows at the guard's ``target_frr``, and scored by the GQR (harmonic mean
of in-domain accuracy and rejection rate) with the left-out labels' rows as the OOD set. The
best candidate's settings become the guard's parameters and it is refitted on every label;
``selection_`` records every candidate's score. No OOD or test row is used.

With fewer than three labels (a one-route guard: "is this about banking?") whole labels
cannot be left out; topic groups of the in-domain texts are, the same way
(:func:`topic_groups`: ``GROUPS`` k-means groups of a TF-IDF, ``fraction`` of them held out),
among the candidates that run on that many labels (the lexical, fused and softmax-score
guards need two).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routers.base import RouterError, RoutingTable

__all__ = ["CANDIDATES", "GROUPS", "held_out_groups", "runs_on", "select_guard", "topic_groups"]

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


#: topic groups of the in-domain texts when there are too few labels to leave some out
GROUPS = 10


def topic_groups(texts: Sequence[str], groups: int = GROUPS, seed: int = 0) -> np.ndarray:
    """A topic group (0 .. ``groups`` - 1) per text: k-means (seeded) on a TF-IDF of words
    (1-2) and character n-grams (3-5), reduced to at most 64 dimensions and L2-normalised.
    Read from the texts alone (no embedder), so pseudo-OOD can be decided before embedding."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    if len(texts) < 2 * groups:
        raise RouterError(f"guard: {len(texts)} texts are too few for {groups} topic groups")
    tfidf = make_union(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                       TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2,
                                       sublinear_tf=True)).fit_transform(list(texts))
    Z = TruncatedSVD(max(2, min(64, tfidf.shape[1] - 1)),
                     random_state=seed).fit_transform(tfidf)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12
    return np.asarray(KMeans(groups, n_init=3, random_state=seed).fit_predict(Z))


def held_out_groups(groups: int, fraction: float, seed: int) -> list[int]:
    """Which topic groups are left out (``fraction`` of them, at least one, seeded)."""
    k = min(max(1, round(groups * fraction)), groups - 1)
    return sorted(int(g) for g in np.random.default_rng(seed).choice(groups, size=k,
                                                                      replace=False))


def runs_on(candidate: Mapping[str, Any], n_labels: int) -> bool:
    """Whether a guard setting can be fitted on ``n_labels`` labels: the lexical SVM's and
    the fused model's margins, and the softmax scores, are between labels."""
    return n_labels >= 2 or not (candidate.get("lexical") or candidate.get("method") in
                                 ("fused", "msp", "energy", "knn+msp"))


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
    seed = int(params.get("seed", 0))
    lab_tr, lab_va = np.asarray(labels), np.asarray(val_labels)
    if len(labs) >= 3:
        k = min(max(1, round(len(labs) * fraction)), len(labs) - 2)
        held = sorted(np.random.default_rng(seed).choice(labs, size=k, replace=False).tolist())
        tr, va = ~np.isin(lab_tr, held), ~np.isin(lab_va, held)
        how = {"criterion": "GQR on leave-labels-out pseudo-OOD (validation rows of the kept "
                            "labels for in-domain accuracy and the threshold)",
               "held_out_labels": held}
    else:
        if len(texts) + len(val_texts) < 2 * GROUPS:
            raise RouterError(
                f"guard: method 'auto' chooses on held-out labels (3 or more) or held-out "
                f"topic groups of the texts; this table has {len(labs)} label(s), and its "
                f"{len(texts) + len(val_texts)} texts are too few for {GROUPS} topic groups "
                f"({2 * GROUPS} or more): name a method instead (--param method=knn)")
        group = topic_groups([*texts, *val_texts], seed=seed)
        held_g = held_out_groups(GROUPS, fraction, seed)
        tr, va = ~np.isin(group[:len(texts)], held_g), ~np.isin(group[len(texts):], held_g)
        if tr.all() or va.all() or not va.any():
            raise RouterError("guard: the held-out topic groups leave no validation rows in "
                              "or out of domain; name a method instead (--param method=knn)")
        candidates = [c for c in candidates if runs_on(c, len(labs))]
        how = {"criterion": f"GQR on leave-groups-out pseudo-OOD ({len(labs)} label(s): "
                            f"{len(held_g)} of {GROUPS} topic groups of the in-domain texts "
                            "held out; validation rows of the kept groups for in-domain "
                            "accuracy and the threshold)",
               "held_out_groups": held_g}
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
    record = {**how, "chosen": chosen, "candidates": rows}
    return chosen, record
