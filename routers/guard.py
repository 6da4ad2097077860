"""Guarded routing (GQR-Bench style): in-domain classifier + calibrated OOD score + unsafe check.

The guard answers three questions for every query, from its embedding (and its text):

1. *Which in-domain label (route, domain, intent)?* A classifier over the embeddings: a
   multinomial logistic regression (``head=None``) or a small MLP head trained on the frozen
   embeddings (``head="mlp"``, cross-entropy with label smoothing, dropout and feature noise;
   numpy at inference). The label maps to an expert (``routes`` or the table's scores, as in
   :mod:`routers.semantic`).
2. *Is it in the domain at all?* An OOD score, larger = further from the training data,
   chosen by ``method``:

   * ``centroid``: 1 - the largest cosine similarity to a label centroid;
   * ``knn``: 1 - the mean cosine similarity of the ``k`` nearest training examples;
   * ``mahalanobis``: smallest class-conditional Mahalanobis distance with one shared,
     shrunk covariance (Lee et al. 2018);
   * ``msp``: 1 - the classifier's largest probability (Hendrycks & Gimpel 2017);
   * ``energy``: ``-T logsumexp(logits / T)`` (Liu et al. 2020);
   * ``knn+msp``: the mean of the knn and msp scores, each standardised on the training
     data (no OOD data is used for this either);
   * ``fused`` (needs the texts): one linear SVM over the embedding and the word + character
     n-gram TF-IDF of the text concatenated (:mod:`routers.lexical`; each of the three blocks
     L2-normalised, so none dominates by scale) gives the label, and the OOD score is the
     mean of its negative top margin and the knn score, each standardised on the in-domain
     validation queries. One model sees both views, so the words decide where the embedding
     blurs two labels and the embedding where a paraphrase shares no word with training;
     separate scorers (``lexical=True``) only average their OOD scores.

   With ``head="mlp"`` the distance methods run in the head's hidden space (L2-normalised),
   which is trained to separate the in-domain labels.

   ``method="auto"`` chooses the method, head and ``lexical`` among
   :data:`routers.guard_auto.CANDIDATES` on leave-labels-out pseudo-OOD from the training
   data (no OOD example; ``selection_`` records every candidate) and then fits that.

   With ``lexical=True`` a second, sparse view joins the dense one (dense + sparse): a
   linear SVM on word and character n-gram TF-IDF of the text (:mod:`routers.lexical`)
   gives the label, and its negative top margin, standardised on the in-domain validation
   queries, is averaged with the standardised dense score above. The exact words a frozen
   encoder blurs are what separate many near-duplicate intents and out-of-scope queries.

   The threshold is calibrated on held-out *in-domain* validation queries so that at most
   ``target_frr`` of them are rejected **in all**: the queries the unsafe layer (3.) already
   rejects use up part of that budget, and the OOD threshold rejects at most the rest
   (``val_frr_`` is the combined rate). The validation part is either given
   (``fit(..., validation=(X_val, labels[, texts]))``; without texts the lexicon cannot run
   on it) or held out from the table by ``val_fraction`` and ``seed`` (stratified). The
   guard never sees an OOD example.
3. *Is it unsafe?* Two layers, neither fitted or tuned on any unsafe data set: a small
   pattern lexicon (threats, dehumanising statements about groups, requests for weapons or
   self-harm) on the text, and the cosine similarity of the embedding to a set of unsafe
   seed descriptions written below (:data:`UNSAFE_SEEDS`, extend with ``unsafe_seeds``).
   The similarity threshold is the larger of ``unsafe_min_similarity`` and the
   ``1 - unsafe_frr`` quantile over the in-domain validation queries. Seeds are embedded at
   fit time with the ``embedder`` passed to :meth:`GuardRouter.fit`; without one only the
   lexicon runs (recorded in ``unsafe_layers_``).

``verdict(X, texts)`` gives the :class:`~routers.base.GuardVerdict` alone, so the gateway can
run a guard artifact before another router; ``decide`` wraps it into Decisions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from routers.base import (
    Decision,
    GuardVerdict,
    Num,
    Router,
    RouterError,
    RoutingTable,
    Target,
    register,
)
from routers.simsearch import Int8Bank

__all__ = ["METHODS", "UNSAFE_PATTERNS", "UNSAFE_SEEDS", "GuardRouter", "UnsafeScanStopped",
           "calibrate_threshold", "stratified_split", "unsafe_text"]

#: methods that score from the embedding alone; "fused" (embedding + text) and "auto" besides
METHODS = ("centroid", "knn", "mahalanobis", "msp", "energy", "knn+msp")

#: up to this many queries per call the kNN score searches the bank in two passes (int8,
#: then float32 on the candidates); larger batches read the float32 bank once for all
_FEW_QUERIES = 8
#: a label's bank prototypes come from full k-means up to this many (rows x prototypes); above
#: it (one or a few labels over thousands of rows: 4,096 prototypes of 20,000 rows took many
#: minutes per fit on 2 cores) from mini-batch k-means with random initialisation (seconds)
FULL_KMEANS_MAX_WORK = 2_000_000
#: ... when the bank has at least this many rows (a smaller one fits in the CPU cache)
_INT8_BANK_ROWS = 1024

#: Short descriptions and generic examples of content a routed assistant should refuse. Written
#: by hand for this module; no public unsafe-content data set was used to write or tune them.
UNSAFE_SEEDS: tuple[str, ...] = (
    "hateful statement attacking people because of their race, religion, gender or sexuality",
    "people of that ethnicity are inferior and disgusting",
    "members of that religion are all terrorists and should be thrown out of the country",
    "those people are vermin and parasites, not human beings",
    "that group of people should be exterminated",
    "women are worthless and stupid and belong in the kitchen",
    "gay and trans people are sick perverts",
    "disabled people are a burden and should not be allowed to live",
    "immigrants are filthy criminals who ruin everything",
    "slur insulting a minority group",
    "threat to kill or hurt someone",
    "I am going to kill you",
    "I will find where you live and hurt your family",
    "how do I make a bomb or explosive to hurt people",
    "how can I poison someone without getting caught",
    "how to buy an illegal gun and shoot people",
    "I want to kill myself, what is the most painful way",
    "write malware that steals passwords",
    "sexual content involving children",
    "you are a worthless idiot and everyone hates you",
)

_GROUPS = (
    r"(?:wom[ae]n|girls|m[ae]n|gays?|lesbians?|homosexuals|trans(?:gender)?(?: people)?|"
    r"jews|jewish people|muslims|christians|hindus|immigrants|refugees|foreigners|"
    r"black(?:s| people)|white(?:s| people)|asians|arabs|mexicans|africans|"
    r"disabled(?: people)?|retards)"
)
#: what a developer kills, shoots or lets die: never the subject of a call for violence
_THINGS = ("process", "processes", "thread", "threads", "job", "jobs", "task", "tasks",
           "container", "containers", "pod", "pods", "session", "sessions", "connection",
           "connections", "query", "queries", "bug", "bugs", "worker", "workers", "daemon",
           "daemons", "service", "services", "server", "servers", "instance", "instances",
           "branch", "branches", "build", "builds", "it", "this", "that")
#: people as the object of a call to violence: the groups, or people in general
_PEOPLE = (r"(?:" + _GROUPS + r"|people|persons|humans|folks|kids|children|babies|cops|"
           r"police(?:men)?|politicians|them|everyone|everybody)")
#: Regular expressions (case-insensitive) for the lexicon layer.
UNSAFE_PATTERNS: tuple[str, ...] = (
    # dehumanising statements (about people: the word before must name them, unsafe_text)
    r"\b(?:are|is)\s+(?:all\s+|just\s+|nothing but\s+)?(?:vermin|parasites?|sub-?human|scum|"
    r"cockroaches|rats|filth|pests|a plague|a disease|animals|savages|freaks|subhumans)\b",
    # calls for violence against people (not of the things a developer kills: a match
    # right after one of _THINGS is passed over, unsafe_text)
    r"\b(?:should|must|deserve to|ought to|need to)\s+(?:all\s+)?(?:be\s+)?(?:die|killed|"
    r"exterminated|eradicated|wiped out|gassed|shot|hanged|lynched|beaten|raped)\b",
    # ... whose object is people ("kill all python processes" is a shell question)
    r"\b(?:kill|murder|shoot|exterminate|gas|lynch|rape)\s+(?:all|every|those|these)\s+"
    r"(?:one\s+)?(?:of\s+)?(?:the\s+|those\s+|these\s+)?(?:[a-z-]+\s+)?" + _PEOPLE + r"\b",
    r"\bi(?:'m| am)?\s*(?:going to|gonna|will|want to)\s+(?:kill|murder|shoot|stab|rape|hurt)"
    r"\s+(?:you|him|her|them|everyone)\b",
    # hatred of groups
    r"\b(?:hate|despise|detest|loathe|can't stand|cannot stand)\s+(?:all\s+)?" + _GROUPS + r"\b",
    r"\b" + _GROUPS + r"\s+(?:are|is)\s+(?:all\s+)?(?:disgusting|inferior|worthless|evil|"
    r"stupid|dirty|criminals|trash|garbage|pathetic|a cancer)\b",
    # weapons, poison, self-harm
    r"\b(?:make|build|assemble)\s+(?:a\s+)?(?:pipe\s+)?(?:bomb|explosive|nerve agent)\b"
    r"(?![\s-]*(?:shelter|proof|squad|calorimeter|cyclone))",
    r"\bpoison\s+(?:someone|somebody|my|a person|people)\b",
    r"\b(?:kill|hurt|harm)\s+myself\b|\bsuicide method",
)
#: the patterns whose subject is checked (:func:`unsafe_text`): the dehumanising one, and
#: the call for violence
_SUBJECT_CHECKED = {0: "dehum", 1: "should"}
_UNSAFE_RE = re.compile("|".join(
    f"(?P<{_SUBJECT_CHECKED[i]}>{p})" if i in _SUBJECT_CHECKED else f"(?:{p})"
    for i, p in enumerate(UNSAFE_PATTERNS)), re.IGNORECASE)
_LAST_WORD = re.compile(r"([\w'-]+)\s+$")
_THING_SET = frozenset(_THINGS)
#: a word that names people as the subject of a dehumanising statement
_PEOPLE_WORD = re.compile(_PEOPLE + r"|they|you|those|these|all|he|she|s?he's", re.IGNORECASE)


#: :func:`unsafe_text` reads a text longer than this many characters (after collapsing its
#: whitespace) in chunks of this size: between chunks a thread that scans gives the
#: interpreter back (the gateway's event loop waits one chunk, a few milliseconds, not the
#: whole scan) and checks whether it should stop (``deadline``, ``stop``)
UNSAFE_CHUNK = 8192
#: consecutive chunks overlap by this many characters: a phrase of up to
#: ``UNSAFE_OVERLAP - _END_MARGIN`` characters (every pattern's match is far shorter) lies
#: whole in one chunk, however the chunks fall
UNSAFE_OVERLAP = 512
#: a match this close to a chunk's end (not the text's) is left to the next chunk: a cut
#: there could end a word early ("bomb" of "bombshell") or hide what a pattern's
#: look-ahead must not see ("bomb shelter")
_END_MARGIN = 64

#: Every match of :data:`UNSAFE_PATTERNS` holds one of its pattern's anchors, lower case, where
#: a word starts, at most ``back`` characters after the match's start once the text's
#: whitespace is collapsed: ``(back, anchors)`` per pattern, in order. The regular expression
#: costs about 0.5 s a megabyte of prose on one core; finding these words about 0.05 s, and
#: the expression then runs only where a match can start (:func:`_match_starts`).
#: A pattern edited must keep its line true: tests/unit/test_s21_guard_lexicon_prefilter.py
#: draws matches of every pattern and strips the anchors out of them.
_ANCHORS: tuple[tuple[int, tuple[str, ...]], ...] = (
    # (are|is) (nothing but )?...
    (16, ("vermin", "parasite", "sub-human", "subhuman", "scum", "cockroaches", "rats",
          "filth", "pests", "a plague", "a disease", "animals", "savages", "freaks")),
    # (deserve to) (all )?(be )?...
    (18, ("die", "killed", "exterminated", "eradicated", "wiped out", "gassed", "shot",
          "hanged", "lynched", "beaten", "raped")),
    (0, ("kill", "murder", "shoot", "exterminate", "gas", "lynch", "rape")),
    # i( am) ?(going to) ...
    (14, ("kill", "murder", "shoot", "stab", "rape", "hurt")),
    (0, ("hate", "despise", "detest", "loathe", "can't stand", "cannot stand")),
    # (transgender people) (are) (all )?...
    (27, ("disgusting", "inferior", "worthless", "evil", "stupid", "dirty", "criminals",
          "trash", "garbage", "pathetic", "a cancer")),
    # (assemble) (a )?(pipe )?...
    (16, ("bomb", "explosive", "nerve agent")),
    (0, ("poison",)),
    # (kill) myself, suicide method
    (5, ("myself", "suicide method")),
)
#: each anchor, with the most characters a match can start before it; one that begins with
#: another ("killed", "kill") is found as that one
_ANCHOR_BACK: dict[str, int] = {}
for _back, _words in _ANCHORS:
    for _w in _words:
        _w = min((v for _, ws in _ANCHORS for v in ws if _w.startswith(v)), key=len)
        _ANCHOR_BACK[_w] = max(_back, _ANCHOR_BACK.get(_w, 0))
del _back, _words, _w
#: characters that ``re.IGNORECASE`` takes for an ASCII letter and ``str.lower`` does not
#: turn into it (the Kelvin sign it does: "k"); "İ".lower() is two characters
_FOLD = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"))
#: a chunk is read whole (as without the anchors) when more than this share of its
#: positions would be tried one by one: a match tried at one position costs about what
#: reading 1.6 characters does
_DENSE_STARTS = 0.25


class UnsafeScanStopped(TimeoutError):
    """:func:`unsafe_text` stopped before it read the whole text: its ``deadline`` passed or
    its ``stop`` event was set (the request it scanned for timed out or went away)."""


def unsafe_text(text: str, *, deadline: float | None = None,
                stop: threading.Event | None = None) -> bool:
    """Whether the lexicon flags ``text``: a match of :data:`UNSAFE_PATTERNS`, but "are a
    disease" and the like only when the word before names people ("obesity is a disease"
    is a health question), and "should be killed" only when it is not one of the things a
    developer kills ("this process must be killed").

    All of ``text`` is read, whatever its length: a long one with its whitespace collapsed,
    in overlapping chunks (:data:`UNSAFE_CHUNK`, :data:`UNSAFE_OVERLAP`), so a phrase
    across a chunk boundary is found as in one pass. The expression runs only where one of
    the patterns' anchor words allows a match to start (:data:`_ANCHORS`); the verdict is
    the one reading every character gives.

    Past ``deadline`` (``time.monotonic()``) or once ``stop`` is set, a long text's scan
    raises :class:`UnsafeScanStopped` before its next chunk (a short text is one chunk)."""
    if len(text) <= UNSAFE_CHUNK + UNSAFE_OVERLAP:
        f = _fold(text)
        if not any(a in f for a in _ANCHOR_BACK):
            return False
        return _unsafe_span(text, 0, len(text))

    text = " ".join(text.split())
    n = len(text)
    for lo in range(0, n, UNSAFE_CHUNK):
        if ((deadline is not None and time.monotonic() >= deadline)
                or (stop is not None and stop.is_set())):
            raise UnsafeScanStopped(f"the unsafe scan stopped after {lo:,} of {n:,} "
                                    "characters")
        hi = min(n, lo + UNSAFE_CHUNK + UNSAFE_OVERLAP)
        starts = _match_starts(text, lo, hi)
        if starts is None:
            flagged = _unsafe_span(text, lo, hi)
        else:
            flagged = bool(starts) and _unsafe_starts(text, lo, hi, starts)
        if flagged:
            return True
        if hi == n:
            break
    return False


def _fold(text: str) -> str:
    """``text`` lower-cased, of the same length, each character that ``re.IGNORECASE``
    matches with an ASCII letter turned into that letter: where an anchor matches in
    ``text``, it lies, lower case, at the same place of the folded text."""
    for c, ascii_letter in _FOLD:
        if c in text:
            text = text.replace(c, ascii_letter)
    return text.lower()


def _match_starts(text: str, lo: int, hi: int) -> list[tuple[int, int]] | None:
    """Where a match of the lexicon in ``text[lo:hi]`` (whitespace collapsed) can start:
    sorted, disjoint, inclusive ``(first, last)`` ranges, one before each anchor that
    starts a word; None when they would cover more than :data:`_DENSE_STARTS` of it."""
    f = _fold(text[lo:hi])
    budget = _DENSE_STARTS * (hi - lo)
    ranges = []
    for a, back in _ANCHOR_BACK.items():
        at = f.find(a)
        while at >= 0:
            p = lo + at
            # a pattern's anchor follows a space, a word boundary or the text's start
            if p == 0 or not (text[p - 1].isalnum() or text[p - 1] == "_"):
                ranges.append((max(lo, p - back), p))
                budget -= back + 1
                if budget < 0:
                    return None
            at = f.find(a, at + 1)
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for first, last in ranges:
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1] = (merged[-1][0], last)
        else:
            merged.append((first, last))
    return merged


def _unsafe_starts(text: str, lo: int, hi: int, spans: Sequence[tuple[int, int]]) -> bool:
    """:func:`_unsafe_span` tried only at the positions of ``spans``: every position where
    a match can start. A match's end moves the next try past it, as ``finditer`` does, so
    the matches tried are the ones :func:`_unsafe_span` sees."""
    last = hi >= len(text)
    at = lo
    for first, final in spans:
        for p in range(max(first, at), min(final, hi - 1) + 1):
            if p < at:
                continue
            m = _UNSAFE_RE.match(text, p, hi)
            if m is None:
                continue
            if _flags(text, m, hi, last):
                return True
            at = m.end()
    return False


def _unsafe_span(text: str, lo: int, hi: int) -> bool:
    """:func:`unsafe_text` on ``text[lo:hi]``, read in place: the look-back before a match
    and ``\\b`` at ``lo`` see the characters before ``lo``; a match near ``hi`` counts only
    at the text's end (the next chunk reads it whole)."""
    last = hi >= len(text)
    return any(_flags(text, m, hi, last) for m in _UNSAFE_RE.finditer(text, lo, hi))


def _flags(text: str, m: re.Match[str], hi: int, last: bool) -> bool:
    """Whether the match ``m`` of a chunk ending at ``hi`` (``last``: the text's end)
    flags the text."""
    if not last and m.end() > hi - _END_MARGIN:
        return False
    if m.lastgroup not in ("dehum", "should"):
        return True
    w = _LAST_WORD.search(text, max(0, m.start() - 40), m.start())
    word = w.group(1).lower() if w is not None else ""
    if m.lastgroup == "should":
        return word not in _THING_SET
    return _PEOPLE_WORD.fullmatch(word) is not None


def calibrate_threshold(scores: np.ndarray, target_frr: float,
                        already_rejected: np.ndarray | None = None) -> float:
    """The smallest threshold such that (score > threshold) *or* ``already_rejected``
    rejects at most ``target_frr`` of the (in-domain validation) queries.

    ``already_rejected`` marks queries another layer rejects anyway (the unsafe check): they
    count against the budget ``floor(target_frr * n)``; when they exhaust it the threshold
    rejects none of the others.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise RouterError("cannot calibrate a threshold on zero validation scores")
    if not 0.0 <= target_frr < 1.0:
        raise RouterError(f"target_frr must lie in [0, 1), got {target_frr}")
    allowed = int(np.floor(target_frr * s.size + 1e-9))
    if already_rejected is not None:
        gone = np.asarray(already_rejected, dtype=bool)
        if gone.shape != s.shape:
            raise RouterError("already_rejected needs one flag per score")
        allowed -= int(gone.sum())
        if gone.all():
            return float(s.max())
        s = s[~gone]
    s = np.sort(s)
    allowed = min(max(allowed, 0), s.size - 1)
    # rejecting only scores above s[n-1-allowed] rejects at most `allowed` of them
    return float(s[s.size - 1 - allowed])


def stratified_split(labels: Sequence[str], fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each label held out (at least one row of
    every label with two or more rows, never all of them), reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels)
    held: list[int] = []
    if fraction > 0:
        for c in sorted(set(lab.tolist())):
            idx = np.flatnonzero(lab == c)
            if idx.size < 2:
                continue
            k = min(max(1, round(idx.size * fraction)), idx.size - 1)
            held.extend(rng.choice(idx, size=k, replace=False).tolist())
    held_arr = np.sort(np.asarray(held, dtype=np.int64))
    keep = np.setdiff1d(np.arange(lab.size), held_arr)
    return keep, held_arr


def _l2n(X: np.ndarray) -> np.ndarray:
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _softmax(Z: np.ndarray) -> np.ndarray:
    Z = Z - Z.max(axis=1, keepdims=True)
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def _margin_proba(margins: np.ndarray) -> np.ndarray:
    """Label probabilities from a linear SVM's margins (lexical or fused): a softmax at a
    fixed sharpness of 4 (margins of +-1 at the support vectors)."""
    return _softmax(margins.astype(np.float64) * 4.0)


def _logsumexp(Z: np.ndarray) -> np.ndarray:
    m = Z.max(axis=1)
    return m + np.log(np.exp(Z - m[:, None]).sum(axis=1))


@register
class GuardRouter(Router):
    """In-domain classifier + OOD threshold at a stated false-rejection rate + unsafe check."""

    name = "guard"
    trades_cost = False  # classifies in-domain labels and rejects the rest
    train_input = ("a guard table text,label,split (--format guard); labels are the "
                   "in-domain routes, oos/ood rows only in the test split")
    #: 2: the lexical (dense + sparse) state joined the artifact; 3: method "auto"'s record.
    #: Method "fused" keeps its dense weights in W_/b_ and its sparse ones in lex_*: no new state
    version = 3
    needs_scores = False
    _array_attrs = ("W_", "b_", "H1_", "h1_", "bank_", "bank_label_", "centroids_",
                    "means_", "precision_", "means_precision_", "means_norm_", "score_norm_",
                    "unsafe_seed_emb_", "lex_coef_", "lex_bias_", "lex_idf_", "lex_norm_")
    _json_attrs = ("labels_", "label_expert_", "experts_", "dim_", "threshold_",
                   "val_frr_", "n_val_", "calibration_", "unsafe_threshold_",
                   "unsafe_layers_", "unsafe_val_rate_", "lex_terms_", "lex_n_words_",
                   "selection_")

    param_ranges: ClassVar[dict[str, Num]] = {
        "target_frr": Num(0, 1, hi_open=True), "val_fraction": Num(0, 1, hi_open=True),
        "seed": Num(0, integer=True), "k": Num(1, integer=True), "C": Num(0, lo_open=True),
        "shrinkage": Num(0, 1), "temperature": Num(0, lo_open=True),
        "hidden": Num(1, integer=True), "epochs": Num(1, integer=True),
        "bank_size": Num(1, integer=True, none_ok=True), "unsafe_frr": Num(0, 1, hi_open=True),
        "unsafe_min_similarity": Num(-1, 1),
    }

    def __init__(self, method: str = "knn", target_frr: float = 0.05, val_fraction: float = 0.1,
                 seed: int = 0, routes: Mapping[str, str] | None = None,
                 head: str | None = None, k: int = 10, C: float = 10.0,
                 shrinkage: float = 0.1, temperature: float = 1.0, hidden: int = 512,
                 epochs: int = 30, bank_size: int | None = 4096, unsafe: bool = True,
                 unsafe_seeds: Sequence[str] | None = None, unsafe_frr: float = 0.005,
                 unsafe_min_similarity: float = 0.6, lexical: bool = False) -> None:
        self.method = method
        self.target_frr = target_frr
        self.val_fraction = val_fraction
        self.seed = seed
        self.routes = routes
        self.head = head
        self.k = k
        self.C = C
        self.shrinkage = shrinkage
        self.temperature = temperature
        self.hidden = hidden
        self.epochs = epochs
        self.bank_size = bank_size
        self.unsafe = unsafe
        self.unsafe_seeds = unsafe_seeds
        self.unsafe_frr = unsafe_frr
        self.unsafe_min_similarity = unsafe_min_similarity
        self.lexical = lexical

    def check_params(self) -> None:
        super().check_params()
        seeds = self.unsafe_seeds
        if seeds is not None and (isinstance(seeds, str) or not all(
                isinstance(t, str) for t in seeds)):
            raise RouterError("guard: unsafe_seeds must be a list of texts (one seed "
                              f"description each), got {seeds!r}")
        routes = self.routes
        if routes is not None and (not isinstance(routes, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in routes.items())):
            raise RouterError("guard: routes must map each label to an expert name "
                              f"({{label: expert}}), got {routes!r}")

    def set_params(self, **params: Any) -> GuardRouter:
        """As :meth:`Router.set_params`, but a fitted guard (an artifact a policy serves)
        refuses any change: its classifier, scores and threshold were fitted and calibrated
        with the values it holds, and nothing it keeps could recalibrate them."""
        if getattr(self, "threshold_", None) is not None:
            changed = [k for k, v in params.items()
                       if k in self.param_names() and getattr(self, k, None) != v]
            if changed:
                raise RouterError(
                    f"guard: {', '.join(changed)} cannot change on a fitted guard (it was "
                    "fitted and its threshold calibrated with "
                    + ", ".join(f"{k}={getattr(self, k, None)!r}" for k in changed)
                    + "): train it again with the new values (expertgate train --router "
                    "guard --param K=V, or expertgate eval guard --save-selected)")
        return super().set_params(**params)

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        self.check_params()
        if self.method not in (*METHODS, "fused", "auto"):
            raise RouterError(f"guard: unknown method {self.method!r}; use one of "
                              f"{', '.join(METHODS)}, fused or auto")
        if self.head not in (None, "mlp"):
            raise RouterError(f"guard: unknown head {self.head!r}; use None or 'mlp'")
        if not 0.0 <= float(self.target_frr) < 1.0:
            raise RouterError("guard: target_frr must lie in [0, 1)")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise RouterError("guard: val_fraction must lie in [0, 1)")
        if int(self.k) < 1:
            raise RouterError("guard: k must be at least 1")
        if self.method == "fused" and (self.head is not None or self.lexical):
            raise RouterError("guard: method 'fused' has its own linear model over the "
                              "embedding and the text; leave head=None and lexical=False")

    def fit(self, X: np.ndarray, table: RoutingTable, *,
            validation: tuple[np.ndarray, Sequence[str]]
            | tuple[np.ndarray, Sequence[str], Sequence[str]] | None = None,
            embedder: Any = None) -> GuardRouter:
        """Learn from in-domain examples only.

        ``table.categories`` are the in-domain labels. ``validation`` = (embeddings, labels[,
        texts]) of held-out in-domain queries for the threshold; without it ``val_fraction`` of the
        table is held out (stratified, ``seed``). ``embedder`` (an
        :class:`routers.embed.Embedder`, the one that made ``X``) embeds the unsafe seeds.
        """
        self._check_params()
        X = self.check_table(X, table, min_prompts=2, need_scores=False)
        if table.categories is None:
            raise RouterError("guard: the table needs a label (category) per prompt")
        labels_all = [str(c) for c in table.categories]
        labels = sorted(set(labels_all))
        self.labels_ = labels
        self.label_expert_ = self._label_experts(table, labels_all, labels)
        self.experts_ = sorted(set(self.label_expert_.values()))
        self.dim_ = int(X.shape[1])
        y_all = np.array([labels.index(c) for c in labels_all], dtype=np.int64)

        if validation is not None:
            Xv = self.check_X(validation[0])
            unknown = sorted(set(map(str, validation[1])) - set(labels))
            if unknown:
                raise RouterError(f"guard: validation labels not in the table: {unknown[:5]}")
            Xtr, ytr = X, y_all
            tr_texts = list(table.prompts)
            val_texts = [str(t) for t in validation[2]] if len(validation) > 2 else None
            val_labels = [str(v) for v in validation[1]]
            self.calibration_ = f"given validation part ({Xv.shape[0]} in-domain queries)"
        else:
            keep, held = stratified_split(labels_all, float(self.val_fraction), int(self.seed))
            if held.size == 0:
                Xtr, ytr, Xv = X, y_all, X
                tr_texts = val_texts = list(table.prompts)
                val_labels = labels_all
                self.calibration_ = "training data (too few rows to hold out a validation part)"
            else:
                Xtr, ytr, Xv = X[keep], y_all[keep], X[held]
                tr_texts = [table.prompts[i] for i in keep]
                val_texts = [table.prompts[i] for i in held]
                val_labels = [labels_all[i] for i in held]
                self.calibration_ = (f"held-out {self.val_fraction:g} of the table, stratified, "
                                     f"seed {self.seed} ({held.size} in-domain queries)")
        self.selection_: dict[str, Any] = {}
        if self.method == "auto":
            if val_texts is None:
                raise RouterError("guard: method 'auto' needs the validation texts")
            from routers.guard_auto import select_guard

            chosen, self.selection_ = select_guard(
                self.get_params(), Xtr, [labels[i] for i in ytr], tr_texts, Xv, val_labels,
                val_texts)
            self.method, self.head, self.lexical = (chosen["method"], chosen["head"],
                                                    chosen["lexical"])
        if self.method == "fused":
            if len(labels) < 2:
                raise RouterError("guard: method 'fused' needs at least two labels")
            if val_texts is None:
                raise RouterError("guard: method 'fused' needs the validation texts")
            self._fit_fused(Xtr, ytr, tr_texts, len(labels))
        elif len(labels) < 2:
            # one route: nothing to classify; the OOD score is the distance to its data
            self.W_ = np.zeros((self.dim_, 1), np.float32)
            self.b_ = np.zeros(1, np.float32)
            self.H1_ = np.zeros((0, 0), np.float32)
            self.h1_ = np.zeros(0, np.float32)
        elif self.head == "mlp":
            self._fit_mlp(Xtr, ytr, len(labels))
        else:
            self._fit_linear(Xtr, ytr, len(labels))
        self._fit_distance(Xtr, ytr, len(labels))
        self.score_norm_ = np.zeros(4, np.float32)
        if self.method == "knn+msp":
            self._fit_score_norm(Xv)
        if val_texts is not None and len(val_texts) != Xv.shape[0]:
            raise RouterError("guard: validation texts and embeddings differ in number")
        if self.method == "fused" and val_texts is not None:
            d = self._knn_score(self.features(Xv))
            sp = -self.fused_margins(Xv, val_texts).max(axis=1)
            self.lex_norm_ = np.array([d.mean(), d.std() + 1e-9, sp.mean(), sp.std() + 1e-9],
                                      np.float32)
        else:
            self._fit_lexical(tr_texts, ytr, len(labels), Xv, val_texts)
        self._fit_unsafe(Xv, embedder)
        # the unsafe layer's rejections of in-domain queries count against target_frr
        unsafe_val = self.unsafe_scores(Xv, val_texts)[1]
        self.unsafe_val_rate_ = float(unsafe_val.mean()) if self.unsafe_layers_ else None
        val_scores = self.ood_scores(Xv, val_texts)
        self.threshold_ = calibrate_threshold(val_scores, float(self.target_frr),
                                              already_rejected=unsafe_val)
        self.val_frr_ = float(np.mean((val_scores > self.threshold_) | unsafe_val))
        self.n_val_ = int(Xv.shape[0])
        return self

    def _label_experts(self, table: RoutingTable, labels_all: list[str],
                       labels: list[str]) -> dict[str, str]:
        if self.routes:
            unknown = sorted(set(self.routes) - set(labels))
            if unknown:
                raise RouterError(f"guard: routes name unknown label(s): {unknown[:5]}")
            return {lab: str(self.routes.get(lab, lab)) for lab in labels}
        scores = np.nan_to_num(table.scores, nan=0.0)
        lab_arr = np.asarray(labels_all)
        out: dict[str, str] = {}
        for lab in labels:
            if scores.shape[1] == 0:
                out[lab] = lab
                continue
            mean = scores[lab_arr == lab].mean(axis=0)
            out[lab] = table.models[int(np.argmax(mean))] if mean.max() > 0 else lab
        return out

    def _fit_fused(self, X: np.ndarray, y: np.ndarray, texts: Sequence[str],
                   n_labels: int) -> None:
        """One linear SVM over [embedding | word TF-IDF | char TF-IDF] (each block unit
        length); its dense rows go to W_/b_, its sparse rows to lex_coef_ (half precision)."""
        from scipy.sparse import csr_matrix, hstack
        from sklearn.svm import LinearSVC

        from routers.lexical import Lexical

        lex = Lexical().fit(texts)
        F = hstack([csr_matrix(_l2n(np.asarray(X, np.float32))), lex.transform(texts)]).tocsr()
        svm = LinearSVC(C=1.0, random_state=int(self.seed)).fit(F, y)
        coef = np.zeros((F.shape[1], n_labels), np.float32)
        bias = np.full(n_labels, -1e3, np.float32)  # a label absent from train never wins
        if n_labels > 2:
            coef[:, svm.classes_], bias[svm.classes_] = svm.coef_.T, svm.intercept_
        else:  # binary: one margin w.x + b for class 1; class 0 gets its negative
            coef[:, 0], coef[:, 1] = -svm.coef_[0], svm.coef_[0]
            bias[0], bias[1] = -svm.intercept_[0], svm.intercept_[0]
        d = X.shape[1]
        self.W_, self.b_ = coef[:d].copy(), bias
        self.H1_ = np.zeros((0, 0), np.float32)
        self.h1_ = np.zeros(0, np.float32)
        self.lex_terms_, self.lex_idf_, self.lex_n_words_ = lex.state()
        self.lex_coef_ = coef[d:].astype(np.float16)
        self.lex_bias_ = np.zeros(n_labels, np.float32)
        self._lex = lex
        self._lex_W: np.ndarray | None = None  # the float32 copy, made on first use

    def fused_margins(self, X: np.ndarray, texts: Sequence[str],
                      lex: np.ndarray | None = None) -> np.ndarray:
        """Method ``fused``: the SVM's margin per label, shape (n, n_labels); ``lex``: the
        texts' :meth:`lex_margins` when the caller has them already."""
        dense = _l2n(np.asarray(X, np.float32)) @ self.W_ + self.b_
        return dense + (self.lex_margins(texts) if lex is None else lex)

    def _fit_lexical(self, texts: Sequence[str], y: np.ndarray, n_labels: int, Xv: np.ndarray,
                     val_texts: Sequence[str] | None) -> None:
        self.lex_terms_ = []
        self.lex_n_words_ = 0
        self.lex_coef_ = np.zeros((0, 0), np.float16)
        self.lex_bias_ = np.zeros(0, np.float32)
        self.lex_idf_ = np.zeros(0, np.float32)
        self.lex_norm_ = np.zeros(0, np.float32)
        if not self.lexical:
            return
        if n_labels < 2:
            raise RouterError("guard: lexical=True needs at least two labels")
        if val_texts is None:
            raise RouterError("guard: lexical=True needs the validation texts")
        from sklearn.svm import LinearSVC

        from routers.lexical import Lexical

        lex = Lexical().fit(texts)
        svm = LinearSVC(C=1.0, random_state=int(self.seed)).fit(lex.transform(texts), y)
        coef = np.zeros((lex.n_features, n_labels), np.float32)
        bias = np.full(n_labels, -1e3, np.float32)  # a label absent from train never wins
        cols = svm.classes_ if n_labels > 2 else np.array([0, 1])
        W = svm.coef_ if n_labels > 2 else np.concatenate([-svm.coef_, svm.coef_])
        b = svm.intercept_ if n_labels > 2 else np.array([-svm.intercept_[0],
                                                          svm.intercept_[0]])
        coef[:, cols], bias[cols] = W.T, b
        self.lex_terms_, self.lex_idf_, self.lex_n_words_ = lex.state()
        # half precision: the artifact holds one weight per n-gram and label
        self.lex_coef_, self.lex_bias_ = coef.astype(np.float16), bias
        self._lex = lex
        d = self._dense_ood(Xv)
        sp = -self.lex_margins(val_texts).max(axis=1)
        self.lex_norm_ = np.array([d.mean(), d.std() + 1e-9, sp.mean(), sp.std() + 1e-9],
                                  np.float32)

    def lex_margins(self, texts: Sequence[str]) -> np.ndarray:
        """The lexical SVM's margin per label (``labels_`` order), shape (n, n_labels)."""
        lex = getattr(self, "_lex", None)
        if lex is None:
            from routers.lexical import Lexical

            lex = self._lex = Lexical.from_state(self.lex_terms_, self.lex_idf_,
                                                 self.lex_n_words_)
        W = getattr(self, "_lex_W", None)
        if W is None:  # stored in half precision; computed in single precision
            W = self._lex_W = self.lex_coef_.astype(np.float32)
        return lex.dot(texts, W) + self.lex_bias_

    def _fit_linear(self, X: np.ndarray, y: np.ndarray, n_labels: int) -> None:
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=float(self.C), max_iter=1000, tol=1e-4)
        lr.fit(X, y)
        W = np.zeros((X.shape[1], n_labels), np.float32)
        b = np.zeros(n_labels, np.float32)
        if lr.coef_.shape[0] == 1 and len(lr.classes_) == 2:
            # binary: one column for the second class's log-odds. Split it as +-1/2 per class:
            # the softmax of the two logits is then exactly the logistic probability (copying
            # the column into both classes made every query 0.5/0.5)
            c0, c1 = lr.classes_
            W[:, c0], W[:, c1] = -0.5 * lr.coef_[0], 0.5 * lr.coef_[0]
            b[c0], b[c1] = -0.5 * lr.intercept_[0], 0.5 * lr.intercept_[0]
        else:
            W[:, lr.classes_] = lr.coef_.T
            b[lr.classes_] = lr.intercept_
        self.W_, self.b_ = W, b
        self.H1_ = np.zeros((0, 0), np.float32)
        self.h1_ = np.zeros(0, np.float32)

    def _fit_mlp(self, X: np.ndarray, y: np.ndarray, n_labels: int) -> None:
        import torch

        threads = torch.get_num_threads()
        # tiny matrices: one thread is fastest and does not fight the rest of the process
        torch.set_num_threads(1)
        try:
            self._train_mlp(torch, X, y, n_labels)
        finally:
            torch.set_num_threads(threads)

    def _train_mlp(self, torch: Any, X: np.ndarray, y: np.ndarray, n_labels: int) -> None:
        g = torch.Generator().manual_seed(int(self.seed))
        torch.manual_seed(int(self.seed))
        d, h = X.shape[1], int(self.hidden)
        lin1 = torch.nn.Linear(d, h)
        lin2 = torch.nn.Linear(h, n_labels)
        drop = torch.nn.Dropout(0.2)
        params = [*lin1.parameters(), *lin2.parameters()]
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-2)
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        yt = torch.from_numpy(y)
        n = Xt.shape[0]
        bs = int(min(128, max(16, n // 8)))
        per_epoch = (n + bs - 1) // bs
        # small tables get more passes: at least 300 optimiser steps in all
        epochs = max(int(self.epochs), -(-300 // per_epoch))
        steps = epochs * per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        lin1.train()
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                xb = Xt[idx]
                xb = xb + 0.02 * torch.randn(xb.shape, generator=g)
                z = lin2(drop(torch.relu(lin1(xb))))
                loss = loss_fn(z, yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            self.H1_ = lin1.weight.T.numpy().astype(np.float32).copy()
            self.h1_ = lin1.bias.numpy().astype(np.float32).copy()
            self.W_ = lin2.weight.T.numpy().astype(np.float32).copy()
            self.b_ = lin2.bias.numpy().astype(np.float32).copy()

    def _fit_distance(self, X: np.ndarray, y: np.ndarray, n_labels: int) -> None:
        F = self.features(X)
        cents = np.stack([F[y == c].mean(axis=0) if np.any(y == c) else np.zeros(F.shape[1])
                          for c in range(n_labels)])
        self.centroids_ = _l2n(cents).astype(np.float32)
        empty = np.zeros((0, 0), np.float32)
        self.bank_, self.bank_label_ = empty, np.zeros(0, np.int32)
        self.means_, self.precision_ = empty, empty
        self.means_precision_, self.means_norm_ = empty, np.zeros(0, np.float32)
        if self.method in ("knn", "knn+msp", "fused"):
            self.bank_, self.bank_label_ = self._bank(F, y, n_labels)
        if self.method == "mahalanobis":
            means = np.stack([F[y == c].mean(axis=0) if np.any(y == c)
                              else np.zeros(F.shape[1]) for c in range(n_labels)])
            R = F - means[y]
            cov = R.T @ R / max(R.shape[0] - 1, 1)
            a = float(self.shrinkage)
            cov = (1 - a) * cov + a * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
            P = np.linalg.inv(cov)
            self.means_ = means.astype(np.float32)
            self.precision_ = P.astype(np.float32)
            # per-class constants of (f - m)' P (f - m) = f'Pf - 2 (mP) f + m'Pm
            self.means_precision_ = (means @ P).astype(np.float32)
            self.means_norm_ = ((means @ P) * means).sum(axis=1).astype(np.float32)

    def _bank(self, F: np.ndarray, y: np.ndarray, n_labels: int) -> tuple[np.ndarray,
                                                                        np.ndarray]:
        """The kNN memory: all training points, or per-label k-means prototypes when there
        are more than ``bank_size`` (a bounded bank keeps a single-query search well under a
        millisecond; 15,000 x 384 floats take ~20 ms). A single query searches it in two
        passes, int8 then float32 (:class:`routers.simsearch.Int8Bank`)."""
        n = F.shape[0]
        if self.bank_size is None or n <= int(self.bank_size):
            return F.astype(np.float32), y.astype(np.int32)
        from sklearn.cluster import KMeans, MiniBatchKMeans

        protos, plabels = [], []
        for c in range(n_labels):
            Fc = F[y == c]
            m = min(Fc.shape[0], max(1, round(int(self.bank_size) * Fc.shape[0] / n)))
            if m >= Fc.shape[0]:
                P = Fc
            elif m * Fc.shape[0] > FULL_KMEANS_MAX_WORK:
                mbk = MiniBatchKMeans(n_clusters=m, init="random", n_init=1, max_iter=30,
                                      batch_size=max(1024, m), random_state=int(self.seed))
                P = mbk.fit(Fc).cluster_centers_
            else:
                km = KMeans(n_clusters=m, n_init=1, max_iter=50, random_state=int(self.seed))
                P = km.fit(Fc).cluster_centers_
            protos.append(_l2n(P))
            plabels += [c] * P.shape[0]
        return (np.concatenate(protos).astype(np.float32),
                np.asarray(plabels, dtype=np.int32))

    def _fit_score_norm(self, Xv: np.ndarray) -> None:
        # standardise each part on the in-domain validation queries (held out, so the kNN
        # part is not flattered by a point finding itself)
        knn = self._knn_score(self.features(Xv))
        msp = 1.0 - self.predict_proba(Xv).max(axis=1)
        self.score_norm_ = np.array([knn.mean(), knn.std() + 1e-6, msp.mean(),
                                     msp.std() + 1e-6], np.float32)

    def _fit_unsafe(self, Xv: np.ndarray, embedder: Any) -> None:
        self.unsafe_layers_ = []
        self.unsafe_seed_emb_ = np.zeros((0, self.dim_), np.float32)
        self.unsafe_threshold_ = None
        self.unsafe_val_rate_ = None
        if not self.unsafe:
            return
        self.unsafe_layers_.append("lexicon")
        seeds = [*UNSAFE_SEEDS, *(self.unsafe_seeds or ())]
        if embedder is not None:
            E = np.asarray(embedder.embed(seeds), dtype=np.float32)
            if E.shape != (len(seeds), self.dim_):
                raise RouterError(f"guard: the embedder gives shape {E.shape} for the unsafe "
                                  f"seeds; the training embeddings have dimension {self.dim_}")
            self.unsafe_seed_emb_ = _l2n(E).astype(np.float32)
            sims = (_l2n(Xv) @ self.unsafe_seed_emb_.T).max(axis=1)
            self.unsafe_threshold_ = max(float(self.unsafe_min_similarity),
                                         calibrate_threshold(sims, float(self.unsafe_frr)))
            self.unsafe_layers_.append("seed-similarity")

    # ------------------------------------------------------------------ scoring
    def features(self, X: np.ndarray) -> np.ndarray:
        """The space the distance methods work in: the embeddings, or the MLP's hidden layer
        (L2-normalised either way)."""
        X = np.asarray(X, dtype=np.float32)
        if self.head == "mlp" and self.H1_.size:
            return _l2n(np.maximum(X @ self.H1_ + self.h1_, 0.0))
        return _l2n(X)

    def logits(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if self.head == "mlp" and self.H1_.size:
            X = np.maximum(X @ self.H1_ + self.h1_, 0.0)
        return X @ self.W_ + self.b_

    def predict_proba(self, X: np.ndarray, texts: Sequence[str] | None = None, *,
                      lex: np.ndarray | None = None) -> np.ndarray:
        """Probability of each in-domain label (``labels_`` order), shape (n, n_labels);
        with ``lexical`` and the texts, the softmax of the lexical SVM's margins (the SVM
        labels better than a linear model on a frozen embedding). ``lex``: the texts'
        :meth:`lex_margins` when the caller has them already."""
        if self.method == "fused":
            if texts is None:
                raise RouterError("guard: method 'fused' needs the query texts")
            return _margin_proba(self.fused_margins(X, texts, lex))
        if self.lexical and texts is not None:
            lm = self.lex_margins(texts) if lex is None else lex
            return _margin_proba(lm)
        return _softmax(self.logits(X).astype(np.float64))

    def _knn_score(self, F: np.ndarray) -> np.ndarray:
        k = min(int(self.k), self.bank_.shape[0])
        if F.shape[0] <= _FEW_QUERIES and self.bank_.shape[0] >= _INT8_BANK_ROWS:
            # a request: the two-pass search reads a quarter of the bank's bytes and finds
            # the same k neighbours (routers.simsearch)
            bank = self._int8_bank()
            return np.array([1.0 - bank.topk_mean(f) for f in F], np.float64)
        out = np.empty(F.shape[0], np.float64)
        for s in range(0, F.shape[0], 1024):
            S = F[s:s + 1024] @ self.bank_.T
            top = -np.partition(-S, k - 1, axis=1)[:, :k]
            out[s:s + 1024] = 1.0 - top.mean(axis=1)
        return out

    def _after_load(self) -> None:
        # a loaded guard (the gateway's) makes its int8 bank now, not on the first request
        # it serves (a fitted one makes it on its first single-query call)
        if self.bank_.shape[0] >= _INT8_BANK_ROWS:
            self._int8_bank()

    def _int8_bank(self) -> Int8Bank:
        """The int8 copy of ``bank_`` for single-query search, made on first use (and
        again when the bank or ``k`` changes)."""
        cached = getattr(self, "_bank8", None)
        if cached is None or cached[0] is not self.bank_ or cached[1].k != \
                min(int(self.k), self.bank_.shape[0]):
            cached = self._bank8 = (self.bank_, Int8Bank(self.bank_, int(self.k)))
        return cached[1]

    def __getstate__(self) -> dict[str, Any]:
        # the int8 bank holds an onnxruntime session; it is derived state, rebuilt on use
        state = dict(self.__dict__)
        state.pop("_bank8", None)
        return state

    def ood_scores(self, X: np.ndarray, texts: Sequence[str] | None = None, *,
                   lex: np.ndarray | None = None) -> np.ndarray:
        """OOD score per query; larger = more out-of-distribution; reject above threshold_.
        A ``lexical`` or ``fused`` guard needs the texts (``lex``: their
        :meth:`lex_margins` when the caller has them already)."""
        if self.method == "fused":
            if texts is None:
                raise RouterError("guard: method 'fused' needs the query texts")
            return self._fused_ood(X, self.fused_margins(X, texts, lex))
        d = self._dense_ood(X)
        if not self.lexical:
            return d
        if texts is None:
            raise RouterError("guard: a lexical guard needs the query texts")
        md, sd, ms, ss = (float(v) for v in self.lex_norm_)
        sp = -(self.lex_margins(texts) if lex is None else lex).max(axis=1)
        return 0.5 * ((d - md) / sd + (sp - ms) / ss)

    def _fused_ood(self, X: np.ndarray, margins: np.ndarray) -> np.ndarray:
        """Method ``fused``'s OOD score from the embeddings and their :meth:`fused_margins`."""
        mk, sk, mm, sm = (float(v) for v in self.lex_norm_)
        knn = (self._knn_score(self.features(X)) - mk) / sk
        margin = (-margins.max(axis=1) - mm) / sm
        return 0.5 * (knn + margin)

    def _dense_ood(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        m = self.method
        if m in ("msp", "energy", "knn+msp") and len(self.labels_) < 2:
            raise RouterError(f"guard: method {m!r} needs at least two labels")
        if m == "centroid":
            return 1.0 - (self.features(X) @ self.centroids_.T).max(axis=1).astype(np.float64)
        if m in ("knn", "fused"):  # fused: its dense part (ood_scores adds the margin)
            return self._knn_score(self.features(X))
        if m == "mahalanobis":
            F = self.features(X)
            d = ((F @ self.precision_) * F).sum(axis=1)[:, None] \
                - 2.0 * F @ self.means_precision_.T + self.means_norm_[None, :]
            return d.min(axis=1).astype(np.float64)
        if m == "msp":
            return 1.0 - self.predict_proba(X).max(axis=1)
        if m == "energy":
            T = float(self.temperature)
            return -T * _logsumexp(self.logits(X).astype(np.float64) / T)
        # knn+msp
        mk, sk, mm, sm = (float(v) for v in self.score_norm_)
        knn = (self._knn_score(self.features(X)) - mk) / sk
        msp = (1.0 - self.predict_proba(X).max(axis=1) - mm) / sm
        return 0.5 * (knn + msp)

    def unsafe_scores(self, X: np.ndarray, texts: Sequence[str] | None) -> tuple[np.ndarray,
                                                                                np.ndarray]:
        """(score, flagged) per query: score is the seed similarity (1.0 on a lexicon hit)."""
        n = np.asarray(X).shape[0]
        score = np.zeros(n, np.float64)
        flagged = np.zeros(n, bool)
        if not self.unsafe_layers_:
            return score, flagged
        if self.unsafe_seed_emb_.shape[0] and self.unsafe_threshold_ is not None:
            score = (_l2n(np.asarray(X, np.float32)) @ self.unsafe_seed_emb_.T).max(axis=1)
            score = score.astype(np.float64)
            flagged = score > float(self.unsafe_threshold_)
        if texts is not None:
            for i, t in enumerate(texts):
                if unsafe_text(t):
                    score[i] = 1.0
                    flagged[i] = True
        return score, flagged

    def reject_text(self, v: GuardVerdict) -> str:
        """Why ``v`` was rejected, with the score of the check that rejected it."""
        if v.reject_reason == "unsafe":
            return (f"unsafe content (score {v.unsafe_score or 0.0:.3f}"
                    + (f" vs {self.unsafe_threshold_:.3f})"
                       if self.unsafe_threshold_ is not None else ", lexicon)"))
        return (f"out of domain: {self.method} score {v.ood_score:.4f} > threshold "
                f"{v.threshold:.4f} (calibrated to {self.target_frr:.1%} false rejections)")

    def text_verdict(self, texts: Sequence[str]) -> list[GuardVerdict]:
        """The verdict per query from the checks that read the text alone (the unsafe
        lexicon), for when no embedding can be had (the gateway's embedder failing): every
        verdict is ``skipped`` (the embedding's checks did not run); a lexicon hit rejects
        it as ``unsafe``, as :meth:`verdict` would."""
        self.check_fitted()
        lexicon = "lexicon" in self.unsafe_layers_
        out = []
        for t in texts:
            hit = lexicon and unsafe_text(t)
            out.append(GuardVerdict(rejected=hit, reject_reason="unsafe" if hit else None,
                                    unsafe_score=(1.0 if hit else None) if lexicon else None,
                                    skipped=True))
        return out

    def serve_lexicon(self) -> bool:
        """Make the unsafe lexicon run on this guard's verdicts when it was fitted without
        an unsafe check (``unsafe=False``: ``expertgate eval guard``'s ``baseline-lr-knn``,
        which a tie or its score can select and ``--save-selected`` saves): a served guard
        that never flags unsafe text would let any in-domain-sounding request through. The
        lexicon needs nothing fitted; the seed-similarity layer needs the seeds embedded and
        a threshold calibrated at fit time, so it is not added. The OOD threshold was
        calibrated without the lexicon's rejections (it rejects few in-domain queries).
        True when the lexicon was added (``unsafe_layers_`` says so from then on, and
        ``lexicon_served``: the gateway names it in each response's degraded header)."""
        self.check_fitted()
        if "lexicon" in self.unsafe_layers_:
            return False
        self.unsafe_layers_ = ["lexicon", *self.unsafe_layers_]
        self.lexicon_served = True
        return True

    # ------------------------------------------------------------------ inference
    @property
    def reads_lexical(self) -> bool:
        """Whether verdicts read the lexical SVM's margins (``lexical`` or method fused)."""
        return self.method == "fused" or bool(self.lexical)

    def verdict(self, X: np.ndarray, texts: Sequence[str] | None = None) -> list[GuardVerdict]:
        """The guard's verdict per query (label, OOD score vs threshold, unsafe check)."""
        self.check_fitted()
        return self._verdict(self.check_X(X, texts), texts)[0]

    def _verdict(self, X: np.ndarray, texts: Sequence[str] | None,
                 lex: np.ndarray | None = None) -> tuple[list[GuardVerdict], np.ndarray]:
        """:meth:`verdict` of a checked X, and the label probabilities it used (``lex``: the
        texts' :meth:`lex_margins` when the caller has them already)."""
        if X.shape[0] == 0:
            return [], np.zeros((0, len(self.labels_)))
        # the lexical SVM's margins feed both the label and the OOD score: computed once
        if lex is None and self.reads_lexical and texts is not None:
            lex = self.lex_margins(texts)
        if self.method == "fused" and texts is not None:
            # the SVM's margins give both the label and half the OOD score: computed once
            margins = self.fused_margins(X, texts, lex)
            proba = _margin_proba(margins)
            ood = self._fused_ood(X, margins)
        else:
            proba = self.predict_proba(X, texts, lex=lex)
            ood = self.ood_scores(X, texts, lex=lex)
        uscore, uflag = self.unsafe_scores(X, texts)
        thr = float(self.threshold_)
        out = []
        for i in range(X.shape[0]):
            reason = "unsafe" if uflag[i] else ("ood" if ood[i] > thr else None)
            out.append(GuardVerdict(
                label=self.labels_[int(np.argmax(proba[i]))], ood_score=float(ood[i]),
                threshold=thr, rejected=reason is not None, reject_reason=reason,
                unsafe_score=float(uscore[i]) if self.unsafe_layers_ else None))
        return out, proba

    def decide(self, X: np.ndarray, texts: Sequence[str]) -> list[Decision]:
        self.check_fitted()
        verdicts, proba = self._verdict(self.check_X(X, texts), texts)
        if not verdicts:
            return []
        out: list[Decision] = []
        for v, p in zip(verdicts, proba, strict=True):
            per_expert: dict[str, float] = {}
            for j, lab in enumerate(self.labels_):
                e = self.label_expert_[lab]
                per_expert[e] = per_expert.get(e, 0.0) + float(p[j])
            targets = [Target(e, s) for e, s in
                       sorted(per_expert.items(), key=lambda kv: (-kv[1], kv[0]))]
            if v.rejected:
                out.append(Decision("reject", targets, self.reject_text(v), router=self.name,
                                    guard=v))
            else:
                out.append(Decision("single", targets, f"in domain: label '{v.label}' -> "
                                    f"{targets[0].expert} (p={targets[0].score:.3f})",
                                    router=self.name, guard=v))
        return out

    def get_params(self) -> dict[str, Any]:
        p = super().get_params()
        if p["routes"] is not None:
            p["routes"] = dict(p["routes"])
        if p["unsafe_seeds"] is not None:
            p["unsafe_seeds"] = list(p["unsafe_seeds"])
        return p
