"""Stacked router: several per-expert quality estimates combined by a learned meta-model.

For each expert these base estimates of P(the expert answers well | query) are computed:

* a logistic regression on the prompt embedding (topic, domain);
* a logistic regression on a few prompt statistics that track difficulty and which no
  embedding of the text sees well: length in characters and words, count of numbers and of
  distinct numbers, sentences, percent signs, fractions, decimals, currency, questions, lines;
* a similarity-weighted nearest-neighbour success rate (as :mod:`routers.knn`);
* with ``lexical=True`` and ``C_lexical`` set (the defaults), a logistic regression on the
  prompt's word and character n-gram TF-IDF (:mod:`routers.lexical`): the exact words a
  mean of static token vectors blurs (dense + sparse views of the text);
* with ``trees=True`` (the default), gradient-boosted trees (:mod:`routers.trees`) on the
  embedding's first ``tree_components`` principal components and the same prompt statistics:
  the interactions a logistic regression cannot read (whether a long prompt is hard depends
  on its topic);
* when the table has categories (two or more), the expert's per-category success rate
  (shrunk toward its mean) mixed by a soft nearest-centroid assignment of the query to the
  categories — queries arrive without a category, so it is inferred from the embedding.
  With ``lexical=True`` the assignment also compares the query's word and character n-gram
  TF-IDF (:mod:`routers.lexical`) with each category's TF-IDF centroid: a subject is named by
  its words, which a mean of static token vectors blurs (on MMLU's 57 subjects the nearest
  centroid finds the subject of 58% of held-out prompts from the distilled embedding, 74%
  with both views).

Chosen on validation (report-free development seeds, distilled embedder): the lexical views
raised the mean validation APGR on MMLU from 0.663 to 0.683 (the per-subject rule, which
is told each test prompt's true subject: 0.679) and on GSM8K from 0.627 to 0.634; AIQ on
NQ 0.442 -> 0.444. Their cost is the TF-IDF fit (~5 s on 10k MMLU prompts, pure Python)
and ~0.2-0.4 ms per query.

Experts scored on the same prompts share the out-of-fold assignment, so the parts that do
not depend on the expert (nearest neighbours, category weights) are computed once per fold,
and each fold's logistic regressions start from the all-prompts fit (same optimum, fewer
solver steps). Experts scored on different prompts, each on most of them (missing scores),
share one neighbour search per fold too, filtered to each one's scored prompts
(:meth:`StackRouter._fold_neighbours`).

A per-expert logistic regression combines them into a calibrated probability, fitted on
out-of-fold estimates of the training prompts (``folds``-fold). It reads the logits of every
component of every expert scored on the same prompts, not only its own (whether Mixtral gets
a question right says something about GPT-4), and the prompt statistics (how far to trust
each view can depend on the prompt's length). With trees and categories, the trees also read
each expert's category success rate estimated for the prompt (cross-fitted on the training
prompts), so they can split a subject's hard prompts from its easy ones. Two experts scored
right/wrong on the same prompts (a strong/weak pair) get one multinomial model of their four
joint outcomes instead (``joint_pairs``): the two-expert knob ranks prompts by P(only the
strong one is right) - P(only the weak one is right), which it models directly. Chosen on the
development seeds' validation parts, with ``shared_meta=False`` (the meta-model of version 3)
and ``joint_pairs=False`` as the comparisons: ``docs/results/stack4/`` and the
``routing-validation`` block of docs/routers.md. Scores in [0, 1] that are not 0/1 count as
soft labels (sample weights). Every learned part is stored as plain arrays (coefficients,
scaler statistics), so the artifact needs neither pickle nor skops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from routers.base import Num, RouterError, RoutingTable, register
from routers.knn import knn_quality, neighbour_lists, neighbour_vote, unit_rows
from routers.tradeoff import QualityRouter

if TYPE_CHECKING:
    from routers.lexical import Lexical

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


#: at most this many stored entries (a few queries): :func:`_rows_dot` gathers the columns
#: they need; a batch of 32 MMLU prompts (~10,000) is faster through scipy
_GATHER_MAX_NNZ = 2000


def _rows_dot(L: Any, W: np.ndarray) -> np.ndarray:
    """``L @ W.T`` for TF-IDF rows ``L`` (scipy sparse, (n, V)) and per-expert or
    per-category weights ``W`` (k, V), as float64 (n, k). For a few queries (the request
    path) it reads only the columns of ``W`` the rows name: scipy's product first converts
    the whole (V, k) operand (a transposed float32 array) to a contiguous float64 copy,
    ~0.3 ms per call for MMLU's vocabulary."""
    L = L.tocsr()
    if L.nnz > _GATHER_MAX_NNZ:
        return np.asarray(L @ W.T, dtype=np.float64)
    prod = W[:, L.indices].T.astype(np.float64) * L.data[:, None]  # (nnz, k)
    out = np.zeros((L.shape[0], W.shape[0]))
    full = np.flatnonzero(np.diff(L.indptr))  # rows with entries (reduceat needs them)
    if full.size:
        out[full] = np.add.reduceat(prod, L.indptr[full], axis=0)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _fit_lr(F: np.ndarray, s: np.ndarray, C: float, coef: np.ndarray | None = None,
            intercept: float | None = None) -> tuple[np.ndarray, float]:
    """Logistic regression with soft labels ``s`` in [0, 1]; returns (coef, intercept).
    ``coef``/``intercept``: where the solver starts (a fit on related data; default zero)."""
    from sklearn.linear_model import LogisticRegression

    pos, neg = s > 0, s < 1
    if not pos.any() or not neg.any():
        # one outcome only: a constant at the (smoothed) base rate
        rate = (s.sum() + 0.5) / (s.size + 1.0)
        return np.zeros(F.shape[1]), float(_logit(np.array([rate]))[0])
    # the positive copies, then the negative ones, taken in one pass (a stack of two row
    # selections copied the rows twice: a fifth of a TF-IDF fit's time on 15,000 prompts)
    rows = np.concatenate([np.flatnonzero(pos), np.flatnonzero(neg)])
    Fa = F.tocsr()[rows] if hasattr(F, "tocsr") else F[rows]
    ya = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    wa = np.concatenate([s[pos], 1 - s[neg]])
    m = LogisticRegression(C=C, max_iter=1000, warm_start=coef is not None)
    if coef is not None and intercept is not None:
        m.coef_, m.intercept_ = np.asarray(coef, np.float64)[None, :], np.array([intercept])
    m.fit(Fa, ya, sample_weight=wa)
    return m.coef_[0].astype(np.float64), float(m.intercept_[0])


#: threads that fit the out-of-fold estimates side by side (each fold writes its own rows,
#: so the result does not depend on it); None: the usable cores. ``auto``'s fold workers,
#: which already fill the cores, set it to 1
FIT_THREADS: int | None = None


def _each(fn: Callable[[int], None], items: Sequence[int]) -> None:
    """``fn`` on every item, in :data:`FIT_THREADS` threads with one BLAS thread each (the
    logistic regressions' sparse and dense products and the neighbour search release the GIL;
    two folds at a time nearly halved the stack's fit on two cores)."""
    items = list(items)
    threads = FIT_THREADS if FIT_THREADS is not None else _usable_cores()
    threads = max(1, min(int(threads), len(items)))
    if threads == 1:
        for it in items:
            fn(it)
        return
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), ThreadPoolExecutor(threads) as ex:
        for _ in ex.map(fn, items):
            pass


def _each_group(groups: int, folds: int, final: Callable[[int], None],
                fold: Callable[[int, int], None], meta: Callable[[int], None]) -> None:
    """Per group of experts: ``final(g)``, then ``fold(g, f)`` for every fold (they start
    from the final fit's coefficients), then ``meta(g)`` (it reads every fold's estimates).
    In :data:`FIT_THREADS` threads with one BLAS thread each, all groups' steps in one pool:
    a group's folds start as soon as its final fit is done and its meta-model as soon as its
    last fold is, while the other threads go on with other groups' steps (a pool per group
    left a core idle during each group's final fit and the last of its five folds). Each
    step writes only its own group's (and fold's) results, so the order does not change
    them."""
    threads = FIT_THREADS if FIT_THREADS is not None else _usable_cores()
    threads = max(1, min(int(threads), groups * folds))
    if threads == 1:
        for g in range(groups):
            final(g)
            for f in range(folds):
                fold(g, f)
            meta(g)
        return
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from threadpoolctl import threadpool_limits

    left = [folds] * groups
    with threadpool_limits(1), ThreadPoolExecutor(threads) as ex:
        step: dict[Future[None], tuple[str, int]] = {ex.submit(final, g): ("final", g)
                                                      for g in range(groups)}
        pending = set(step)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fu in done:
                    fu.result()  # a step's error ends the fit
                    what, g = step.pop(fu)
                    nxt: list[Future[None]] = []
                    if what == "final":
                        nxt = [ex.submit(fold, g, f) for f in range(folds)]
                        step.update((n, ("fold", g)) for n in nxt)
                    elif what == "fold":
                        left[g] -= 1
                        if not left[g]:
                            nxt = [ex.submit(meta, g)]
                            step[nxt[0]] = ("meta", g)
                    pending.update(nxt)
        except BaseException:
            for fu in pending:  # queued steps do not run after an error
                fu.cancel()
            raise


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: the TF-IDF views' default cut of long prompts (``lexical_max_chars``, characters)
LEXICAL_MAX_CHARS = 2000


@register
class StackRouter(QualityRouter):
    name = "stack"
    #: 2: the lexical views (TF-IDF state, category centroids, per-expert coefficients);
    #: 3: the boosted trees' view (principal components, node tables); 4: the meta-model reads
    #: every co-scored expert's components and the prompt statistics, the trees the category
    #: rates, and a 0/1 pair has one joint model (``pair_*``); 5: the TF-IDF views read a long
    #: prompt's head and tail (``lexical_max_chars``; the fitted cut in ``lex_max_text_chars_``)
    version = 5
    _array_attrs = ("train_X_", "train_scores_", "prior_", "costs_", "emb_coef_", "emb_bias_",
                    "stat_mean_", "stat_scale_", "stat_coef_", "stat_bias_", "meta_coef_",
                    "meta_bias_", "centroids_", "category_rates_", "lex_idf_",
                    "lex_centroids_", "lex_coef_", "lex_bias_", "tree_pca_", "tree_pca_mean_",
                    "tree_feature_", "tree_threshold_", "tree_left_", "tree_right_",
                    "tree_value_", "tree_roots_", "tree_owner_", "tree_base_",
                    "pair_experts_", "pair_coef_", "pair_bias_")
    _json_attrs = ("experts_", "dim_", "lex_terms_", "lex_n_words_", "lex_max_text_chars_",
                   "tree_category_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "k": Num(1, integer=True),
        "temperature": Num(0, lo_open=True),
        "prior_strength": Num(0),
        "folds": Num(2, integer=True),
    }

    def __init__(self, C_embed: float = 0.3, C_stats: float = 1.0, C_meta: float = 1.0,
                 k: int = 50, temperature: float = 0.05, prior_strength: float = 2.0,
                 folds: int = 5, seed: int = 0, lexical: bool = True,
                 lexical_weight: float = 2.0, C_lexical: float | None = 1.0,
                 trees: bool = True, tree_components: int = 16,
                 shared_meta: bool = True, joint_pairs: bool = True,
                 lexical_max_chars: int | None = LEXICAL_MAX_CHARS,
                 cost_weight: float = 0.0,
                 threshold: float | None = None,
                 cost_model: str = "auto") -> None:
        self.C_embed = C_embed
        self.C_stats = C_stats
        self.C_meta = C_meta
        self.k = k
        self.temperature = temperature
        self.prior_strength = prior_strength
        self.folds = folds
        self.seed = seed
        self.lexical = lexical
        self.lexical_weight = lexical_weight
        self.C_lexical = C_lexical
        self.trees = trees
        self.tree_components = tree_components
        self.shared_meta = shared_meta
        self.joint_pairs = joint_pairs
        self.lexical_max_chars = lexical_max_chars
        self.cost_weight = cost_weight
        self.threshold = threshold
        self.cost_model = cost_model

    # -- learning ----------------------------------------------------------------------
    def _category_weights(self, C: np.ndarray, Xq: np.ndarray,
                          lex: tuple[Any, np.ndarray] | None = None) -> np.ndarray:
        """Soft nearest-centroid weights of the queries over the categories, (nq, K).

        ``lex``: the queries' TF-IDF rows and the categories' TF-IDF centroids (K, V), whose
        similarities join the dense ones with weight ``lexical_weight``."""
        sims = Xq @ C.T
        if lex is not None:
            sims = sims + float(self.lexical_weight) * _rows_dot(lex[0], lex[1])
        w = np.exp((sims - sims.max(axis=1, keepdims=True)) / float(self.temperature))
        return w / w.sum(axis=1, keepdims=True)

    @staticmethod
    def _centroids(Xtr: Any, cats: np.ndarray, K: int) -> np.ndarray:
        """Unit-norm mean row of each category; ``Xtr`` dense or scipy sparse."""
        from scipy.sparse import csr_matrix

        onehot = csr_matrix((np.ones(len(cats)), (cats, np.arange(len(cats)))),
                            shape=(K, len(cats)))
        C = np.asarray((onehot @ Xtr).todense() if hasattr(Xtr, "tocsr") else onehot @ Xtr,
                       dtype=np.float64)
        return C / np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-12)

    def _rates(self, s: np.ndarray, cats: np.ndarray, K: int) -> np.ndarray:
        n = np.bincount(cats, minlength=K).astype(np.float64)
        tot = np.bincount(cats, weights=s, minlength=K)
        return (tot + self.prior_strength_cat * s.mean()) / (n + self.prior_strength_cat)

    #: pseudo-counts shrinking a category's success rate toward the expert's mean
    prior_strength_cat = 5.0
    #: the trees view needs a table of this many training prompts: on the development seeds'
    #: validation parts it moved GSM8K (790 training prompts) and NQ (300) by less than the
    #: seeds' noise, either way, and raised MMLU's (8,400); boosting needs data
    trees_min_prompts = 2000

    def _shared(self, Xtr: np.ndarray, S: np.ndarray, Xq: np.ndarray,
                cats: np.ndarray | None, K: int, lex: tuple[Any, Any] | None,
                kn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """The parts that do not depend on which expert is fitted, for experts scored on the
        same prompts (columns of ``S``): the nearest-neighbour estimate of each, (nq, m), and
        the queries' category weights (None: no category component). ``kn``: the estimate,
        already computed (:meth:`_fold_knn`)."""
        if kn is None:
            kn = self._knn(Xq, Xtr, S, S.mean(axis=0))
        if cats is None:
            return kn, None
        lq = None if lex is None else (lex[1], self._centroids(lex[0], cats, K))
        return kn, self._category_weights(self._centroids(Xtr, cats, K), Xq, lq)

    def _knn(self, Xq: np.ndarray, Xtr: np.ndarray, S: np.ndarray, prior: np.ndarray
             ) -> np.ndarray:
        """:func:`routers.knn.knn_quality` with this router's ``k``, ``temperature`` and
        ``prior_strength``."""
        return knn_quality(Xq, Xtr, S, prior, k=int(self.k),
                           temperature=float(self.temperature),
                           prior_strength=float(self.prior_strength))

    #: experts scored on different prompts (a table with missing scores) share one
    #: neighbour search per fold when each is scored on at least this share of the training
    #: prompts; below it (a routing log: one expert per prompt) each searches its own
    shared_search_min_coverage = 0.5

    def _fold_neighbours(self, Xu: np.ndarray, fold_all: np.ndarray, S: np.ndarray,
                         groups: dict[bytes, list[int]]
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
        """One neighbour search per fold for every group of experts (:meth:`_fold_knn`):
        per fold, its prompts (global rows), and each one's nearest prompts of the other
        folds, most similar first (global rows, (nq, depth)), with their similarities.
        ``depth`` leaves room for the prompts a group's expert has no score on. None: a
        single group (its own search is already shared), or a group too thin to share."""
        if len(groups) < 2:
            return None
        cover = min(float(np.isfinite(S[:, js[0]]).mean()) for js in groups.values())
        if cover < self.shared_search_min_coverage:
            return None
        depth = int(np.ceil(1.5 * int(self.k) / cover)) + 8
        out: list[Any] = [None] * int(self.folds)

        def one(f: int) -> None:
            q, t = np.flatnonzero(fold_all == f), np.flatnonzero(fold_all != f)
            if not q.size or not t.size:
                out[f] = (q, np.zeros((q.size, 0), np.int64), np.zeros((q.size, 0)))
                return
            idx, top = neighbour_lists(Xu[q], Xu[t], depth)
            out[f] = (q, t[idx], top)

        _each(one, range(int(self.folds)))
        return out

    def _fold_knn(self, lists: tuple[np.ndarray, np.ndarray, np.ndarray], rows: np.ndarray,
                  S: np.ndarray, finite: np.ndarray, Xq: np.ndarray, Xtr: np.ndarray,
                  Str: np.ndarray) -> np.ndarray:
        """:meth:`_shared`'s nearest-neighbour estimate of a group of experts for one fold's
        prompts ``rows`` (global; their vectors ``Xq``), from the fold's shared search
        ``lists``: each prompt's first ``k`` listed neighbours the group has scores on
        (``finite``, global), voting with the group's scores ``S`` (global rows, the group's
        columns). A prompt with fewer than ``k`` such neighbours in its list gets the group's
        own search over its training prompts ``Xtr`` / ``Str``."""
        q, nbr, top = lists
        pos = np.searchsorted(q, rows)
        L, T = nbr[pos], top[pos]
        prior = Str.mean(axis=0)
        kk = min(int(self.k), Xtr.shape[0])
        mask = finite[L]
        c = np.cumsum(mask, axis=1)
        full = c[:, -1] >= kk if L.shape[1] else np.zeros(rows.size, bool)
        out = np.empty((rows.size, S.shape[1]))
        if full.any():
            take = mask[full] & (c[full] <= kk)
            out[full] = neighbour_vote(L[full][take].reshape(-1, kk),
                                       T[full][take].reshape(-1, kk), S, prior,
                                       temperature=float(self.temperature),
                                       prior_strength=float(self.prior_strength))
        if not full.all():
            out[~full] = self._knn(Xq[~full], Xtr, Str, prior)
        return out

    def _base(self, Xtr: np.ndarray, Htr: np.ndarray, s: np.ndarray, Xq: np.ndarray,
              Hq: np.ndarray, kn: np.ndarray, catw: np.ndarray | None,
              cats: np.ndarray | None, K: int, lex: tuple[Any, Any] | None,
              init: tuple[Any, ...] | None = None,
              trees: tuple[np.ndarray, np.ndarray, int] | None = None
              ) -> tuple[np.ndarray, tuple[Any, ...]]:
        """Base estimates (nq, components) for one expert and its fitted coefficients.

        ``Htr``/``Hq`` are the prompt statistics already standardised; ``kn`` and ``catw``
        the expert's nearest-neighbour estimate and the queries' category weights
        (:meth:`_shared`); ``cats`` the training prompts' category indices; ``lex`` the
        training and query prompts' TF-IDF rows; ``init``: coefficients of a fit on more
        prompts to start the logistic regressions from (the same optimum, fewer steps);
        ``trees``: the training and query prompts' tree features (:meth:`_fit_tree_space`)
        and the boosting's seed. The last coefficient is the fitted trees (or None).
        """
        i = init or (None,) * 6
        ce, be = _fit_lr(Xtr, s, float(self.C_embed), i[0], i[1])
        ch, bh = _fit_lr(Htr, s, float(self.C_stats), i[2], i[3])
        parts = [_sigmoid(Xq @ ce + be), _sigmoid(Hq @ ch + bh), kn]
        cl, bl = np.zeros(0), 0.0
        if lex is not None and self.C_lexical is not None:
            cl, bl = _fit_lr(lex[0], s, float(self.C_lexical), i[4], i[5])
            parts.append(_sigmoid(np.asarray(lex[1] @ cl).ravel() + bl))
        if catw is not None and cats is not None:
            parts.append(catw @ self._rates(s, cats, K))
        fitted = None
        if trees is not None:
            from routers.trees import fit_expert_trees, pack_trees, tree_logits

            fitted = fit_expert_trees(trees[0], s, seed=trees[2])
            parts.append(_sigmoid(tree_logits(pack_trees([fitted]), trees[1])[:, 0]))
        return np.stack(parts, 1), (ce, be, ch, bh, cl, bl, fitted)

    #: the joint model of a pair needs each of its four outcomes this often in the training
    #: prompts (else the two experts keep their own meta-models)
    pair_min_outcome = 10

    def _fit_pair(self, Z: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Two experts scored 0/1 on the same prompts: one multinomial logistic regression
        of their joint outcome (neither, only the second, only the first, both) on the
        meta-model's inputs ``Z``; the two experts' probabilities are its marginals, and
        what the two-expert knob ranks by, P(only the first) - P(only the second), is
        modelled directly instead of as a difference of two separate fits. Coefficients
        (4, inputs) and intercepts (4,), or None (``joint_pairs`` off, soft scores, or an
        outcome rarer than :attr:`pair_min_outcome`)."""
        if not (self.joint_pairs and self.shared_meta) or not np.isin(S, (0.0, 1.0)).all():
            return None
        y = (2 * S[:, 0] + S[:, 1]).astype(np.int64)
        if np.bincount(y, minlength=4).min() < self.pair_min_outcome:
            return None
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=float(self.C_meta), max_iter=2000).fit(Z, y)
        return np.asarray(lr.coef_, np.float64), np.asarray(lr.intercept_, np.float64)

    def _cross_fitted_rates(self, Xu: np.ndarray, S: np.ndarray, cats: np.ndarray, K: int
                            ) -> np.ndarray:
        """Each training prompt's category success rate of every expert (n, m), as a query
        gets it (soft nearest-centroid weights of the embedding, :meth:`_category_weights`
        without the TF-IDF), from centroids and rates of the other folds: the trees' view
        of the category. Rates count only the prompts an expert was scored on."""
        n, m = S.shape
        out = np.zeros((n, m))
        fold = np.random.default_rng((int(self.seed), 1)).permutation(n) % int(self.folds)
        for f in range(int(self.folds)):
            te, tr = fold == f, fold != f
            if not te.any() or tr.sum() < 2:
                continue
            w = self._category_weights(self._centroids(Xu[tr], cats[tr], K), Xu[te])
            for j in range(m):
                ok = tr & np.isfinite(S[:, j])
                out[te, j] = w @ self._rates(S[ok, j], cats[ok], K) if ok.any() else 0.5
        return out

    def _fit_tree_space(self, Xu: np.ndarray, H: np.ndarray) -> np.ndarray | None:
        """The trees' features of the training prompts: the embedding's first
        ``tree_components`` principal components (fitted here, on every training prompt:
        label-free) beside the standardised prompt statistics. None: no trees (``trees``
        off, or fewer than :attr:`trees_min_prompts` prompts)."""
        k = min(int(self.tree_components), Xu.shape[1], Xu.shape[0] - 1)
        if not self.trees or Xu.shape[0] < self.trees_min_prompts or k < 1:
            self.tree_pca_mean_ = np.zeros(0)
            self.tree_pca_ = np.zeros((0, Xu.shape[1]))
            return None
        mean = Xu.mean(axis=0)
        _, _, Vt = np.linalg.svd(Xu - mean, full_matrices=False)
        self.tree_pca_mean_, self.tree_pca_ = mean, Vt[:k]
        return np.hstack([(Xu - mean) @ Vt[:k].T, H])

    def _set_trees(self, experts: Sequence[Any]) -> None:
        from routers.trees import pack_trees

        t = pack_trees(experts)
        self.tree_feature_, self.tree_threshold_ = t.feature, t.threshold
        self.tree_left_, self.tree_right_, self.tree_value_ = t.left, t.right, t.value
        self.tree_roots_, self.tree_owner_, self.tree_base_ = t.roots, t.owner, t.base

    def _tree_arrays(self) -> tuple[Any, int]:
        """The node table and its depth, built once from the arrays (fitted or loaded)."""
        from routers.trees import TreeArrays, tree_depth

        cached = getattr(self, "_trees", None)
        if cached is None or cached[0].value is not self.tree_value_:
            t = TreeArrays(self.tree_feature_, self.tree_threshold_, self.tree_left_,
                           self.tree_right_, self.tree_value_, self.tree_roots_,
                           self.tree_owner_, self.tree_base_)
            cached = self._trees = (t, tree_depth(t))
        return cached

    @staticmethod
    def new_lexical(max_text_chars: int | None = LEXICAL_MAX_CHARS) -> Lexical:
        """The (unfitted) TF-IDF views' featuriser; the vocabulary bounds the artifact: one
        float per term and category. ``max_text_chars``: the ``lexical_max_chars`` parameter
        (the default's)."""
        from routers.lexical import Lexical

        return Lexical(max_words=10000, max_chars=20000, max_text_chars=max_text_chars)

    def uses_lexical(self) -> bool:
        """Whether :meth:`fit` may use TF-IDF views (they need categories or ``C_lexical``)."""
        return bool(self.lexical)

    def fit(self, X: np.ndarray, table: RoutingTable, *,
            lexical: Lexical | None = None) -> StackRouter:
        """Fit on ``table``; ``lexical``: the TF-IDF views' featuriser already fitted on the
        table's prompts (:meth:`new_lexical`'s settings; ``auto`` fits one for all its folds),
        which then also serves this router's queries.

        Runs with one BLAS thread, as the CLIs do already: the logistic regressions' solver
        makes thousands of tiny BLAS calls, and a pool of threads woken for each made a
        library call several times slower (an 11-expert meta-model fit: 3.0 s with the
        default pool of two threads, 0.2 s with one)."""
        # the solvers run on scipy's own OpenBLAS, which threadpoolctl limits only once it is
        # loaded: a process whose first solver is this fit's (a CLI) kept its pool of threads
        import sklearn.ensemble
        import sklearn.linear_model  # noqa: F401
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            return self._fit(X, table, lexical)

    def _fit(self, X: np.ndarray, table: RoutingTable, lexical: Lexical | None
             ) -> StackRouter:
        X, S = self._base_checks(X, table, min_prompts=max(4, int(self.folds)))
        if int(self.folds) < 2 or int(self.k) < 1 or not float(self.temperature) > 0:
            raise RouterError("stack: need folds >= 2, k >= 1 and temperature > 0")
        cap = self.lexical_max_chars
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 20):
            raise RouterError("stack: lexical_max_chars must be an integer of at least 20 "
                              f"(characters) or null (whole prompts), got {cap!r}")
        Xu = unit_rows(X).astype(np.float64)
        H0 = text_statistics(table.prompts)
        self.stat_mean_ = H0.mean(0)
        self.stat_scale_ = H0.std(0) + 1e-6
        H = (H0 - self.stat_mean_) / self.stat_scale_
        m = S.shape[1]
        labels = sorted(set(table.categories)) if table.categories is not None else []
        K = len(labels) if len(labels) >= 2 else 0
        cat_all = np.array([labels.index(c) for c in table.categories or []]) if K else None
        use_lr = self.lexical and self.C_lexical is not None
        F = self._fit_tree_space(Xu, H)
        self.tree_category_ = False
        if F is not None and cat_all is not None and self.shared_meta:
            F = np.hstack([F, _logit(self._cross_fitted_rates(Xu, S, cat_all, K))])
            self.tree_category_ = True
        L = None
        self._lex: Lexical | None = None
        self.lex_terms_: list[str] = []
        self.lex_n_words_ = 0
        self.lex_max_text_chars_: int | None = None
        self.lex_idf_ = np.zeros(0, np.float32)
        self.lex_centroids_ = np.zeros((0, 0), np.float32)
        self.lex_coef_, self.lex_bias_ = np.zeros((0, 0), np.float32), np.zeros(0)
        if lexical is not None and lexical.max_text_chars != cap:
            lexical = None  # fitted for another cut (``auto``'s shared one has the default's)
        if self.lexical and (K or use_lr):
            if lexical is not None:
                lex = lexical
                L = lex.transform(table.prompts)
            else:  # the vocabulary and the training rows from one pass over the texts
                from routers.lexical import MemoLexical

                memo = MemoLexical(self.new_lexical(cap), table.prompts)
                L = memo.transform(table.prompts)
                memo.forget()
                lex = memo
            self._lex = lexical
            self.lex_terms_, self.lex_idf_, self.lex_n_words_ = lex.state()
            self.lex_max_text_chars_ = lex.max_text_chars
            if not lex.n_features:  # no prompt has a word: no lexical view to learn
                use_lr, L = False, None
            elif K and cat_all is not None:
                self.lex_centroids_ = self._centroids(L, cat_all, K).astype(np.float32)
            if use_lr:
                self.lex_coef_ = np.zeros((m, lex.n_features), np.float32)
                self.lex_bias_ = np.zeros(m)
        n_comp = 3 + bool(K) + use_lr + (F is not None)
        rng = np.random.default_rng(int(self.seed))
        # one fold assignment for every expert: experts scored on the same prompts share
        # the folds, so the parts that do not depend on the expert are computed once
        fold_all = rng.permutation(S.shape[0]) % int(self.folds)
        groups: dict[bytes, list[int]] = {}
        for j in range(m):
            groups.setdefault(np.isfinite(S[:, j]).tobytes(), []).append(j)
        emb_c, emb_b = np.zeros((m, Xu.shape[1])), np.zeros(m)
        st_c, st_b = np.zeros((m, H.shape[1])), np.zeros(m)
        # the meta-model's inputs: every expert's components, then the prompt statistics
        meta_c, meta_b = np.zeros((m, m * n_comp + H.shape[1])), np.zeros(m)
        rates = np.zeros((K, m))
        expert_trees: list[Any] = [None] * m
        lists = self._fold_neighbours(Xu, fold_all, S, groups)
        group_list = list(groups.values())
        oks = [np.flatnonzero(np.isfinite(S[:, js[0]])) for js in group_list]
        fulls: list[list[Any]] = [[] for _ in group_list]
        oofs = [np.zeros((len(js), ok.size, n_comp)) for js, ok in zip(group_list, oks,
                                                                       strict=True)]
        group_pairs: list[tuple[list[int], np.ndarray, np.ndarray] | None] = \
            [None] * len(group_list)
        seed = int(self.seed)

        def final(gi: int) -> None:
            """The group's fits on all its prompts (they start the fold fits)."""
            experts, ok = group_list[gi], oks[gi]
            Xa, Ha, Sa = Xu[ok], H[ok], S[ok][:, experts]
            ca = cat_all[ok] if cat_all is not None else None
            La = L[ok] if L is not None else None
            Fa = F[ok] if F is not None else None
            for g, j in enumerate(experts):
                _, coefs = self._base(Xa, Ha, Sa[:, g], Xa[:1], Ha[:1], Sa[:1, g], None,
                                      None, K, None if La is None else (La, La[:1]),
                                      trees=None if Fa is None else (Fa, Fa[:1], seed))
                fulls[gi].append(coefs)
                emb_c[j], emb_b[j], st_c[j], st_b[j], cl, bl, expert_trees[j] = coefs
                if use_lr:
                    self.lex_coef_[j], self.lex_bias_[j] = cl, bl
                if ca is not None:
                    rates[:, j] = self._rates(Sa[:, g], ca, K)

        def one_fold(gi: int, f: int) -> None:
            """The group's out-of-fold estimates of fold ``f``'s prompts (its rows of the
            group's ``oofs``). Rows are taken from the whole table (``ok[tr]``: the same rows
            as the group's rows' ``[tr]``), so no group's copy of the table stays alive."""
            experts, ok = group_list[gi], oks[gi]
            fold = fold_all[ok]
            te, tr = fold == f, fold != f
            if tr.sum() < 2 or not te.any():
                return
            rtr, rte = ok[tr], ok[te]
            Xtr, Xte, Str = Xu[rtr], Xu[rte], S[rtr][:, experts]
            ctr = cat_all[rtr] if cat_all is not None else None
            lex_f = None if L is None else (L[rtr], L[rte])
            trees_f = None if F is None else (F[rtr], F[rte], seed + 1 + f)
            pre = None if lists is None else self._fold_knn(  # the shared search
                lists[f], rte, S[:, experts], np.isfinite(S[:, experts[0]]), Xte, Xtr, Str)
            kn, catw = self._shared(Xtr, Str, Xte, ctr, K, lex_f, kn=pre)
            Htr, Hte = H[rtr], H[rte]
            for g in range(len(experts)):
                oofs[gi][g, te] = self._base(Xtr, Htr, Str[:, g].copy(), Xte, Hte, kn[:, g],
                                             catw, ctr, K, lex_f, init=fulls[gi][g],
                                             trees=trees_f)[0]

        def meta(gi: int) -> None:
            """The group's meta-models, on its out-of-fold estimates (every fold done)."""
            experts, ok, oof = group_list[gi], oks[gi], oofs[gi]
            Ha, Sa = H[ok], S[ok][:, experts]
            # each expert's meta-model reads the components of every expert of its group
            # and the statistics (``shared_meta``), or its own components only
            Z = np.hstack([_logit(oof).transpose(1, 0, 2).reshape(ok.size, -1), Ha])
            cols = np.concatenate([np.arange(j * n_comp, (j + 1) * n_comp) for j in experts]
                                  + [m * n_comp + np.arange(H.shape[1])])
            for g, j in enumerate(experts):
                if self.shared_meta:
                    meta_c[j, cols], meta_b[j] = _fit_lr(Z, Sa[:, g], float(self.C_meta))
                else:
                    own = np.arange(j * n_comp, (j + 1) * n_comp)
                    meta_c[j, own], meta_b[j] = _fit_lr(_logit(oof[g]), Sa[:, g],
                                                        float(self.C_meta))
            joint = self._fit_pair(Z, Sa) if len(experts) == 2 else None
            if joint is not None:
                W = np.zeros((4, meta_c.shape[1]))
                W[:, cols] = joint[0]
                group_pairs[gi] = (list(experts), W, joint[1])

        _each_group(len(group_list), int(self.folds), final, one_fold, meta)
        pairs: list[tuple[list[int], np.ndarray, np.ndarray]] = \
            [p for p in group_pairs if p is not None]
        self.centroids_ = self._centroids(Xu, cat_all, K) if cat_all is not None else \
            np.zeros((0, Xu.shape[1]))
        self.category_rates_ = rates
        self.emb_coef_, self.emb_bias_ = emb_c, emb_b
        self.stat_coef_, self.stat_bias_ = st_c, st_b
        self.meta_coef_, self.meta_bias_ = meta_c, meta_b
        self.pair_experts_ = np.array([p[0] for p in pairs], np.int64).reshape(-1, 2)
        self.pair_coef_ = np.array([p[1] for p in pairs]).reshape(-1, 4, meta_c.shape[1])
        self.pair_bias_ = np.array([p[2] for p in pairs]).reshape(-1, 4)
        self._set_trees(expert_trees if F is not None else [])
        self.train_X_ = Xu.astype(np.float32)
        self.train_scores_ = S.astype(np.float32)
        self.prior_ = np.nan_to_num(np.nanmean(S, axis=0), nan=0.0)
        self.experts_ = list(table.models)
        self._fit_costs(X, table)
        self.dim_ = int(X.shape[1])
        return self

    # -- inference ---------------------------------------------------------------------
    def _quality_texts(self, X: np.ndarray, texts: Sequence[str] | None) -> np.ndarray:
        if texts is None:
            raise RouterError("stack router needs the query texts (prompt statistics)")
        Xu = unit_rows(X).astype(np.float64)
        Hs = (text_statistics(texts) - self.stat_mean_) / self.stat_scale_
        kn = self._knn(Xu, self.train_X_, self.train_scores_.astype(np.float64),
                       np.asarray(self.prior_, dtype=np.float64))
        pe = _sigmoid(Xu @ self.emb_coef_.T + self.emb_bias_)
        ph = _sigmoid(Hs @ self.stat_coef_.T + self.stat_bias_)
        parts = [_logit(pe), _logit(ph), _logit(kn)]
        L = None
        if len(self.lex_terms_):
            from routers.lexical import Lexical

            lexical: Lexical | None = getattr(self, "_lex", None)
            if lexical is None:
                lexical = self._lex = Lexical.from_state(self.lex_terms_, self.lex_idf_,
                                                         self.lex_n_words_,
                                                         self.lex_max_text_chars_)
            L = lexical.transform(texts)
        if L is not None and len(self.lex_coef_):
            parts.append(_logit(_sigmoid(_rows_dot(L, self.lex_coef_) + self.lex_bias_)))
        if len(self.centroids_):
            lex = None if L is None or not len(self.lex_centroids_) else \
                (L, self.lex_centroids_)
            parts.append(_logit(self._category_weights(self.centroids_, Xu, lex)
                                @ self.category_rates_))
        if self.tree_base_.size:
            from routers.trees import tree_logits

            F = np.hstack([(Xu - self.tree_pca_mean_) @ self.tree_pca_.T, Hs])
            if self.tree_category_:
                F = np.hstack([F, _logit(self._category_weights(self.centroids_, Xu)
                                         @ self.category_rates_)])
            t, depth = self._tree_arrays()
            parts.append(_logit(_sigmoid(tree_logits(t, F, depth))))
        Z = np.stack(parts, axis=2)  # (n, m, components)
        Z = np.hstack([Z.reshape(Z.shape[0], -1), Hs])  # every expert's, the statistics
        P = _sigmoid(Z @ self.meta_coef_.T + self.meta_bias_)
        for (a, b), W, c in zip(self.pair_experts_, self.pair_coef_, self.pair_bias_,
                                strict=True):
            # the pair's joint outcome (a wrong/right x b wrong/right): its marginals
            L = Z @ W.T + c
            Q = np.exp(L - L.max(axis=1, keepdims=True))
            Q /= Q.sum(axis=1, keepdims=True)
            P[:, a], P[:, b] = Q[:, 2] + Q[:, 3], Q[:, 1] + Q[:, 3]
        return P

    def _quality(self, X: np.ndarray) -> np.ndarray:
        raise RouterError("stack router needs the query texts (prompt statistics)")

