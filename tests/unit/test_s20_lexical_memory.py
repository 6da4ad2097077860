"""The TF-IDF vocabulary pass counts its n-grams a chunk of texts at a time (bounded memory
on tens of thousands of long prompts): the vocabulary, the IDF and the rows are those of one
count over the whole batch (routers/lexical.py, ``_encode``)."""

from __future__ import annotations

import numpy as np

import routers.lexical
from routers.lexical import Lexical


def _texts() -> list[str]:
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "x", "epsilon", "tax", "rate", "42", "cat"]
    out = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(57)]
    return [*out[:10], "", "  ", *out[10:], "a b c"]  # texts without a word among them


def test_chunked_counting_gives_the_whole_batchs_vocabulary_idf_and_rows(monkeypatch) -> None:
    texts = _texts()
    monkeypatch.setattr(routers.lexical, "_COUNT_CHUNK", 10 ** 6)
    whole = Lexical(max_words=40, max_chars=60)
    rows_whole = whole.fit_transform(texts)
    for chunk in (1, 7, 10):
        monkeypatch.setattr(routers.lexical, "_COUNT_CHUNK", chunk)
        lex = Lexical(max_words=40, max_chars=60)
        rows = lex.fit_transform(texts)
        assert list(lex.vocab) == list(whole.vocab), chunk
        np.testing.assert_array_equal(lex.idf, whole.idf)
        assert (rows != rows_whole).nnz == 0 and rows.shape == rows_whole.shape
        np.testing.assert_array_equal(rows.indptr, rows_whole.indptr)
        np.testing.assert_array_equal(rows.indices, rows_whole.indices)
        # the batch transform (the same counting, no growing vocabulary) agrees too
        batch = lex.transform(texts)
        assert (batch != rows_whole).nnz == 0


def test_no_texts_give_an_empty_vocabulary() -> None:
    lex = Lexical()
    rows = lex.fit_transform([])
    assert rows.shape == (0, 0) and lex.n_features == 0
