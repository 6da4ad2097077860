"""Sparse lexical features beside the dense embeddings: word and character n-gram TF-IDF.

A frozen sentence encoder blurs the exact words that often decide a route or an
out-of-scope query ("transfer" vs "transfers", a product name); a TF-IDF + linear SVM guard
was nearly as good as the best dense guard at a fraction of the latency. :class:`Lexical`
computes the same kind of features as scikit-learn's ``TfidfVectorizer`` pair (word 1-2
grams, character 2-5 grams inside word boundaries, sublinear TF, smoothed IDF, each block
L2-normalised), but with a plain vocabulary and IDF array as its whole state, so a router
or guard artifact stores it as JSON + npz (never pickle), and transforms one query in tens
of microseconds instead of the ~1 ms of a scikit-learn pipeline (joblib dispatch per block).

The vocabulary keeps the ``max_words`` / ``max_chars`` most frequent word / character n-grams
seen in at least ``min_df_words`` / ``min_df_chars`` training texts (bounding the artifact: a
linear model on top has one weight per feature and label).
"""

from __future__ import annotations

import itertools
import os
import re
import threading
from array import array
from collections import Counter
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

__all__ = ["Lexical", "MemoLexical", "char_ngrams", "clip_text", "word_ngrams"]

_WORD = re.compile(r"(?u)\b\w\w+\b")
_SPACE = re.compile(r"\s+")


def word_ngrams(text: str) -> list[str]:
    """Lower-cased word 1- and 2-grams (words of two or more word characters)."""
    return _word_ngrams_lower(text.lower())


def _word_ngrams_lower(low: str) -> list[str]:
    w = _WORD.findall(low)
    return w + [f"{a} {b}" for a, b in itertools.pairwise(w)]


def char_ngrams(text: str, lo: int = 2, hi: int = 5) -> list[str]:
    """Character ``lo``..``hi``-grams of each space-padded word (scikit-learn's ``char_wb``)."""
    out: list[str] = []
    for word in _SPACE.sub(" ", text.lower()).split():
        w = f" {word} "
        n_w = len(w)
        for n in range(lo, hi + 1):
            if n > n_w:
                break
            out.extend(w[i:i + n] for i in range(n_w - n + 1))
    return out


def clip_text(text: str, max_chars: int) -> str:
    """``text`` when it has at most ``max_chars`` characters, else its head and its tail, a
    half each, cut at spaces (no word is read in part) and joined by a space. A long prompt
    (a few-shot context, a pasted document) keeps its instruction and its question, and the
    n-grams of its middle no longer cost their time at every request and every fit."""
    if len(text) <= max_chars:
        return text
    h = max_chars // 2
    head, tail = text[:h], text[len(text) - (max_chars - h):]
    if not text[h:h + 1].isspace() and " " in head:  # the last word continues past the cut
        head = head[:head.rfind(" ")]
    if not text[len(text) - len(tail) - 1:len(text) - len(tail)].isspace() and " " in tail:
        tail = tail[tail.find(" ") + 1:]
    return f"{head} {tail}"


class Lexical:
    """Word + character n-gram TF-IDF with a JSON/npz-serialisable state (see module doc)."""

    def __init__(self, *, min_df_words: int = 1, min_df_chars: int = 2,
                 max_words: int = 20000, max_chars: int = 40000,
                 max_text_chars: int | None = None) -> None:
        self.min_df_words = int(min_df_words)
        self.min_df_chars = int(min_df_chars)
        self.max_words = int(max_words)
        self.max_chars = int(max_chars)
        #: longer texts are read as their head and tail (:func:`clip_text`); None: whole
        self.max_text_chars = None if max_text_chars is None else int(max_text_chars)
        self.idf = np.zeros(0, np.float32)
        self.n_words = 0
        self._set_terms([])

    # -- state ---------------------------------------------------------------------------
    def _set_terms(self, terms: Sequence[str]) -> None:
        self.vocab: dict[str, int] = {t: i for i, t in enumerate(terms)}
        # word -> its character n-grams' columns (see :meth:`row`)
        self._word_memo: dict[str, tuple[int, ...]] = {}
        # one dictionary per block, character n-grams without their namespace prefix: a
        # lookup per n-gram then builds no prefixed string
        self._words = {t: i for t, i in self.vocab.items() if not t.startswith("\x00")}
        self._chars = {t[1:]: i for t, i in self.vocab.items() if t.startswith("\x00")}

    @property
    def n_features(self) -> int:
        return len(self.vocab)

    def _clip(self, texts: Sequence[str]) -> Sequence[str]:
        m = self.max_text_chars
        if m is None or all(len(t) <= m for t in texts):
            return texts
        return [clip_text(t, m) if len(t) > m else t for t in texts]

    def state(self) -> tuple[list[str], np.ndarray, int]:
        """(terms in feature order, IDF, number of word features first)."""
        return list(self.vocab), self.idf, self.n_words

    @classmethod
    def from_state(cls, terms: Sequence[str], idf: np.ndarray, n_words: int,
                   max_text_chars: int | None = None) -> Lexical:
        lex = cls(max_text_chars=max_text_chars)
        lex._set_terms(terms)
        lex.idf = np.asarray(idf, dtype=np.float32)
        lex.n_words = int(n_words)
        return lex

    # -- learning ------------------------------------------------------------------------
    @staticmethod
    def _top(ids: dict[str, int], df: np.ndarray, limit: int, min_df: int
             ) -> tuple[list[str], np.ndarray]:
        """The ``limit`` most frequent terms of ``ids`` (term -> index into ``df``) seen in
        at least ``min_df`` texts, most frequent first, ties by the term (deterministic),
        and their old indices."""
        ok = np.flatnonzero(df >= min_df)
        if ok.size > limit > 0:  # only terms as frequent as the limit-th can make the cut
            ok = ok[df[ok] >= np.partition(df[ok], ok.size - limit)[ok.size - limit]]
        terms = list(ids)
        kept = sorted((-int(df[i]), terms[i], int(i)) for i in ok)[:max(limit, 0)]
        return [t for _, t, _ in kept], np.asarray([i for _, _, i in kept], np.int64)

    def fit(self, texts: Sequence[str]) -> Lexical:
        self.fit_transform(texts)
        return self

    def fit_transform(self, texts: Sequence[str]) -> csr_matrix:
        """:meth:`fit`, returning the texts' rows (:meth:`transform`'s) from the same pass
        over their n-grams."""
        texts = self._clip(texts)
        n = len(texts)
        words: dict[str, int] = {}
        chars: dict[str, int] = {}
        enc = _encode_split(texts, words, chars)
        wdf = np.bincount(enc[0][1], minlength=len(words))
        cdf = np.bincount(enc[1][1], minlength=len(chars))
        wt, wold = self._top(words, wdf, self.max_words, self.min_df_words)
        ct, cold = self._top(chars, cdf, self.max_chars, self.min_df_chars)
        self._set_terms(wt + [f"\x00{t}" for t in ct])  # chars in their own namespace
        df = np.concatenate([wdf[wold], cdf[cold]]).astype(np.float64)
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        self.n_words = len(wt)
        blocks = []
        for olds, offset, size in ((wold, 0, len(words)), (cold, len(wt), len(chars))):
            doc, old, cnt = enc.pop(0)  # each block's whole encoding freed once it is cut
            col = np.full(size, -1, np.int64)
            col[olds] = np.arange(olds.size) + offset
            new = col[old]
            keep = new >= 0
            blocks.append((doc[keep], new[keep], cnt[keep]))
            del doc, old, cnt, new, keep
        return _rows(n, blocks, self.idf, self.n_features)

    # -- features ------------------------------------------------------------------------
    def transform(self, texts: Sequence[str]) -> csr_matrix:
        """(n, n_features) sparse TF-IDF rows (each block L2-normalised). A few texts (a
        request) go through :meth:`row` and its word memo (the same float32 values; on MMLU
        prompts 0.6 -> 0.2 ms a text once the memo knows their words)."""
        if len(texts) > _ROW_PATH_MAX:
            return _rows(len(texts), _encode(self._clip(texts), self._words, self._chars,
                                             grow=False),
                         self.idf, self.n_features)
        from scipy.sparse import csr_matrix

        rows = [self.row(t) for t in texts]
        indptr = np.cumsum([0, *(c.size for c, _ in rows)])
        cols = np.concatenate([c for c, _ in rows]) if rows else np.zeros(0, np.int64)
        vals = np.concatenate([v for _, v in rows]) if rows else np.zeros(0)
        m = csr_matrix((vals.astype(np.float32), cols, indptr),
                       shape=(len(texts), self.n_features))
        m.sort_indices()
        return m

    def dot(self, texts: Sequence[str], W: np.ndarray) -> np.ndarray:
        """``transform(texts) @ W`` (dense (n, k) float32). For a few texts (a request) each
        row's weighted sum of ``W``'s rows is taken directly (:meth:`row`): building a
        sparse matrix costs more than the product itself."""
        if len(texts) > _ROW_PATH_MAX:
            return np.asarray(self.transform(texts) @ W, dtype=np.float32)
        out = np.zeros((len(texts), W.shape[1]), np.float32)
        for i, text in enumerate(texts):
            col, val = self.row(text)
            if col.size:
                out[i] = val.astype(np.float32) @ W[col]
        return out

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's :meth:`transform` row as (columns, float64 values), words first. Each
        distinct word's character n-gram columns are remembered (up to
        ``_WORD_MEMO_MAX`` words): on a request path most words were seen before, and
        cutting them into n-grams is most of the work."""
        if self.max_text_chars is not None and len(text) > self.max_text_chars:
            text = clip_text(text, self.max_text_chars)
        cols, cnts = [], []
        for g, c in Counter(word_ngrams(text)).items():
            j = self._words.get(g)
            if j is not None:
                cols.append(j)
                cnts.append(c)
        n_words = len(cols)
        memo = self._word_memo
        per_word = []
        for t in _SPACE.sub(" ", text.lower()).split():
            ids = memo.get(t)
            if ids is None:
                if len(memo) >= _WORD_MEMO_MAX:
                    memo.clear()
                ids = memo[t] = tuple(j for j in map(self._chars.get, char_ngrams(t))
                                      if j is not None)
            per_word.append(ids)
        chars = Counter(itertools.chain.from_iterable(per_word))
        cols.extend(chars)
        cnts.extend(chars.values())
        col = np.array(cols, dtype=np.int64)
        # sublinear TF times IDF, each block L2-normalised (IDF >= 1: no zero norm)
        val = np.log(np.array(cnts, dtype=np.float64))
        val += 1.0
        val *= self.idf[col]
        for block in (val[:n_words], val[n_words:]):
            if block.size:
                block /= np.sqrt(block @ block)
        return col, val


def _encode(texts: Sequence[str], words: dict[str, int], chars: dict[str, int], *,
            grow: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block (words, characters): (text index, term index, count) of every distinct
    n-gram of each text found in the block's dictionary, text by text and in each text in
    order of first sight; ``grow``: every n-gram, added to the dictionary when new (indices
    in order of first sight).

    Each distinct word is cut into character n-grams and looked up once (its list of term
    indices is reused for every other occurrence); the counting is one sort of
    (text, term) keys over the whole batch instead of a Counter of strings per text. On the
    14k MMLU prompts this took the fit's pass from about 17.7 to 16.1 s here; splitting it
    over two processes (:func:`_encode_split`) to about 10 s."""
    n = len(texts)
    lowered = [t.lower() for t in texts]

    def lookup(vocab: dict[str, int], grams: Sequence[str]) -> list[int]:
        if grow:
            return [vocab.setdefault(g, len(vocab)) for g in grams]
        return [j for j in map(vocab.get, grams) if j is not None]

    split: dict[str, list[int]] = {}  # each distinct word's character n-gram indices, once
    parts: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []
    for lo in range(0, n, _COUNT_CHUNK):
        # counted a chunk of texts at a time: the texts' n-gram indices (each occurrence, a
        # few thousand per long prompt) and the sort that counts them never exist for the
        # whole batch at once (several GB on tens of thousands of long prompts)
        hi = min(n, lo + _COUNT_CHUNK)
        flat_w: array[int] = array("q")
        flat_c: array[int] = array("q")
        len_w = np.zeros(hi - lo, np.int64)
        len_c = np.zeros(hi - lo, np.int64)
        for i, low in enumerate(lowered[lo:hi]):
            ids = lookup(words, _word_ngrams_lower(low))
            flat_w.extend(ids)
            len_w[i] = len(ids)
            start = len(flat_c)
            for t in _SPACE.sub(" ", low).split():
                got = split.get(t)
                if got is None:
                    got = split[t] = lookup(chars, char_ngrams(t))
                flat_c.extend(got)
            len_c[i] = len(flat_c) - start
        counted = [_count(np.frombuffer(flat, np.int64) if len(flat) else
                          np.zeros(0, np.int64), lens)
                   for flat, lens in ((flat_w, len_w), (flat_c, len_c))]
        parts.append([(doc + lo, term, cnt) for doc, term, cnt in counted])
    if not parts:
        return [_count(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in range(2)]
    return [(np.concatenate([p[b][0] for p in parts]), np.concatenate([p[b][1] for p in parts]),
             np.concatenate([p[b][2] for p in parts])) for b in range(2)]


#: texts counted at once by :func:`_encode` (bounds its memory; the result does not depend
#: on it)
_COUNT_CHUNK = 2000


#: fewest texts for which :func:`_encode_split` cuts the vocabulary pass in two processes
SPLIT_MIN_TEXTS = 4000


def _encode_split(texts: Sequence[str], words: dict[str, int], chars: dict[str, int]
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`_encode` with ``grow`` of many texts, the second half in a forked process
    while this one does the first (the pass is pure Python, so threads would not help).
    The result is the sequential one exactly: a term's index is its first sight in the
    first half, or else after every first-half term in order of its first sight in the
    second, which is where the sequential pass puts it. Few texts, one usable core, no
    ``fork``, a call from a thread other than the main one, or a process that cannot start
    children: sequential."""
    import multiprocessing

    n = len(texts)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    # forking from a thread other than the main one (a gateway refitting a router in a worker
    # thread) could copy a lock another thread holds: sequential there
    if n < SPLIT_MIN_TEXTS or cores < 2 or \
            "fork" not in multiprocessing.get_all_start_methods() or \
            threading.current_thread() is not threading.main_thread():
        return _encode(texts, words, chars, grow=True)
    from concurrent.futures import ProcessPoolExecutor

    half = n // 2
    try:
        from routers.workers import die_with_parent

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as ex:
            later = ex.submit(_encode_part, list(texts[half:]))
            first = _encode(texts[:half], words, chars, grow=True)
            second, w2, c2 = later.result()
    except (OSError, RuntimeError, AssertionError, BrokenProcessPool):
        words.clear()
        chars.clear()
        return _encode(texts, words, chars, grow=True)
    out = []
    for (d1, i1, k1), (d2, i2, k2), vocab, local in zip(first, second, (words, chars),
                                                       (w2, c2), strict=True):
        to_global = np.fromiter((vocab.setdefault(t, len(vocab)) for t in local), np.int64,
                                count=len(local))
        out.append((np.concatenate([d1, d2 + half]), np.concatenate([i1, to_global[i2]]),
                    np.concatenate([k1, k2])))
    return out


def _encode_part(texts: list[str]) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                                            list[str], list[str]]:
    """A child's half of :func:`_encode_split`: its encoding and its terms by index."""
    words: dict[str, int] = {}
    chars: dict[str, int] = {}
    enc = _encode(texts, words, chars, grow=True)
    return enc, list(words), list(chars)


def _count(ids: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text, term, count) of the distinct terms of each text from the texts' concatenated
    term indices ``ids`` (``lens`` per text), text by text, each text's terms in order of
    first sight (as a Counter per text would list them)."""
    size = int(ids.max()) + 1 if ids.size else 1
    doc = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
    key = doc * size + ids
    uniq, first, cnt = np.unique(key, return_index=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    uniq = uniq[order]
    return uniq // size, uniq % size, cnt[order].astype(np.float64)


#: up to this many texts (a request), :meth:`Lexical.transform` and :meth:`Lexical.dot` take
#: each text's row from :meth:`Lexical.row` and its word memo (``dot`` then skips the sparse
#: matrix)
_ROW_PATH_MAX = 8
#: distinct words whose character n-gram columns :meth:`Lexical.row` keeps (a few MB at most;
#: emptied when full, so odd inputs cannot grow it without bound)
_WORD_MEMO_MAX = 50000


def _weights(n: int, blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
             idf: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per block, (text, column, value): sublinear TF times IDF, each text's block
    L2-normalised."""
    out = []
    for doc, col, cnt in blocks:
        w = (1.0 + np.log(cnt)) * idf[col].astype(np.float64)
        norm = np.sqrt(np.bincount(doc, weights=w * w, minlength=n))
        out.append((doc, col, w / np.where(norm > 0, norm, 1.0)[doc]))
    return out


def _rows(n: int, blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
          idf: np.ndarray, n_features: int) -> csr_matrix:
    """CSR rows from per-block (text, column, count) triples: sublinear TF times IDF, each
    text's block L2-normalised; a row holds its word entries, then its character ones.
    ``blocks`` is emptied (each temporary is freed as soon as it is used: on tens of
    thousands of long prompts each is a hundred MB or more)."""
    from scipy.sparse import csr_matrix

    weighted = _weights(n, blocks, idf)
    blocks.clear()
    key = np.concatenate([doc * 2 + b for b, (doc, _, _) in enumerate(weighted)])
    order = np.argsort(key, kind="stable")  # text by text, words first, sight order kept
    indptr = np.concatenate([[0], np.cumsum(np.bincount(key // 2, minlength=n))])
    del key
    data = np.concatenate([val for _, _, val in weighted])[order].astype(np.float32)
    cols = [col for _, col, _ in weighted]
    weighted.clear()
    indices = np.concatenate(cols)[order]
    del cols
    return csr_matrix((data, indices, indptr), shape=(n, n_features))


class MemoLexical(Lexical):
    """A :class:`Lexical` fitted on ``texts`` that keeps their rows (computed in the same
    pass as the vocabulary): many fits on subsets of one table (``auto``'s cross-validation)
    share them. Other texts are transformed as usual; :meth:`forget` drops the rows and keeps
    the vocabulary."""

    def __init__(self, settings: Lexical, texts: Sequence[str]) -> None:
        super().__init__(min_df_words=settings.min_df_words, min_df_chars=settings.min_df_chars,
                         max_words=settings.max_words, max_chars=settings.max_chars,
                         max_text_chars=settings.max_text_chars)
        self._texts = list(texts)
        self._memo: csr_matrix | None = self.fit_transform(self._texts)
        self._pos = {t: i for i, t in enumerate(self._texts)}

    def transform(self, texts: Sequence[str]) -> csr_matrix:
        if self._memo is None or any(t not in self._pos for t in texts):
            return super().transform(texts)
        return self._memo[[self._pos[t] for t in texts]]

    def forget(self) -> None:
        self._pos, self._memo, self._texts = {}, None, []
