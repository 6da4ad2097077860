"""Sparse lexical features (routers.lexical) and the dense + sparse guard (lexical=True)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.base import RouterError, RoutingTable
from routers.guard import GuardRouter
from routers.guard_auto import CANDIDATES
from routers.lexical import Lexical, char_ngrams, word_ngrams

TEXTS = ["pay my credit card bill", "pay the phone bill", "transfer money to savings",
         "transfer funds to my friend", "what is my balance", "check balance please"]


def test_ngrams_by_hand() -> None:
    assert word_ngrams("Pay my bill!") == ["pay", "my", "bill", "pay my", "my bill"]
    assert char_ngrams("ab", 2, 3) == [" a", "ab", "b ", " ab", "ab "]
    assert char_ngrams("a") == [" a", "a ", " a "]


def test_tfidf_rows_and_state_round_trip() -> None:
    lex = Lexical(min_df_chars=1).fit(TEXTS)
    F = lex.transform([*TEXTS, "zzzz qqqq", ""]).toarray()
    assert F.shape == (8, lex.n_features)
    w = lex.n_words
    # each block (words, characters) is L2-normalised on its own
    np.testing.assert_allclose(np.linalg.norm(F[:6, :w], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(F[:6, w:], axis=1), 1.0, rtol=1e-5)
    assert not F[6, :w].any() and not F[7].any()  # unseen words and the empty text
    # a word in every text has the smallest idf; "pay" (2 of 6 texts) a larger one
    i_pay = lex.vocab["pay"]
    assert lex.idf[i_pay] == pytest.approx(np.log(7 / 3) + 1, rel=1e-6)
    again = Lexical.from_state(*lex.state())
    np.testing.assert_array_equal(again.transform(TEXTS).toarray(), F[:6])
    capped = Lexical(max_words=3, max_chars=5).fit(TEXTS)
    assert capped.n_words == 3 and capped.n_features == 8


def _table(n_per: int = 12) -> tuple[np.ndarray, RoutingTable]:
    rng = np.random.default_rng(0)
    words = {"bill": ["pay", "bill", "invoice", "card"], "transfer": ["send", "money", "wire"],
             "balance": ["balance", "account", "left"]}
    prompts, cats = [], []
    for lab, ws in words.items():
        for i in range(n_per):
            prompts.append(" ".join(rng.choice(ws, 3)) + f" request {i}")
            cats.append(lab)
    X = rng.normal(size=(len(prompts), 8)).astype(np.float32)
    table = RoutingTable([str(i) for i in range(len(prompts))], prompts, ["a"],
                         np.ones((len(prompts), 1)), np.zeros((len(prompts), 1)), cats)
    return X, table


def test_lexical_guard_labels_by_words_and_saves(tmp_path: Path) -> None:
    X, table = _table()
    g = GuardRouter(lexical=True, target_frr=0.1, unsafe=False, val_fraction=0.25).fit(X, table)
    texts = ["pay the card bill", "wire money", "balance left"]
    # the embeddings here are noise: the labels come from the words
    assert [v.label for v in g.verdict(X[:3], texts)] == ["bill", "transfer", "balance"]
    assert g.lex_coef_.dtype == np.float16 and g.lex_terms_
    with pytest.raises(RouterError, match="texts"):
        g.ood_scores(X[:3])
    path = g.save(tmp_path / "g", embedder="test")
    loaded = GuardRouter.load(path)
    a, b = g.verdict(X, table.prompts), loaded.verdict(X, table.prompts)
    assert [v.label for v in a] == [v.label for v in b]
    np.testing.assert_allclose([v.ood_score for v in a], [v.ood_score for v in b], rtol=1e-5)
    with pytest.raises(RouterError, match="two labels"):
        one = RoutingTable(table.prompt_ids, table.prompts, ["a"], table.scores, table.costs,
                           ["bill"] * len(table))
        GuardRouter(lexical=True, unsafe=False).fit(X, one)


def test_guard_auto_chooses_on_pseudo_ood(tmp_path: Path) -> None:
    X, table = _table(10)
    g = GuardRouter(method="auto", target_frr=0.1, unsafe=False, epochs=2, hidden=8,
                    val_fraction=0.25).fit(X, table)
    sel = g.selection_
    assert len(sel["held_out_labels"]) == 1 and len(sel["candidates"]) == len(CANDIDATES)
    best = max(sel["candidates"], key=lambda r: r["gqr"])
    assert (g.method, g.head, g.lexical) == (best["method"], best["head"], best["lexical"])
    assert g.get_params()["method"] != "auto"  # the artifact names what it runs
    loaded = GuardRouter.load(g.save(tmp_path / "auto", embedder="test"))
    assert loaded.selection_ == sel
    # one label: topic groups of its texts are left out instead, among the settings that
    # run on one label (no lexical, fused or softmax-score guard)
    X1, one = _table(40)
    one = RoutingTable(one.prompt_ids, one.prompts, ["a"], one.scores, one.costs,
                       ["bank"] * len(one))
    g1 = GuardRouter(method="auto", target_frr=0.1, unsafe=False, epochs=2, hidden=8,
                     val_fraction=0.25).fit(X1, one)
    s1 = g1.selection_
    assert "leave-groups-out" in s1["criterion"] and s1["held_out_groups"]
    assert {(c["method"], c["lexical"]) for c in s1["candidates"]} == {("knn", False)}
    assert not g1.lexical and g1.method == "knn"
    with pytest.raises(RouterError, match="too few for 10 topic groups"):
        keep = [i for i, c in enumerate(table.categories or []) if c != "bill"][:12]
        GuardRouter(method="auto", unsafe=False).fit(X[keep], table.subset(keep))


def test_memo_rows_equal_transform_and_a_stack_fitted_with_them_equals_one_fitted_alone() -> None:
    from routers.base import make_router
    from routers.lexical import MemoLexical
    from routers.stack import StackRouter
    from tests.unit.test_router_contract import synthetic_table

    X, table = synthetic_table(80)
    texts = list(table.prompts)
    memo = MemoLexical(StackRouter.new_lexical(), texts)
    plain = StackRouter.new_lexical().fit(texts)
    some = [texts[5], texts[2], texts[5]]
    assert (memo.transform(some) != plain.transform(some)).nnz == 0
    assert (memo.transform(["never seen"]) != plain.transform(["never seen"])).nnz == 0
    alone = make_router("stack").fit(X, table)
    shared = make_router("stack").fit(X, table, lexical=memo)
    memo.forget()  # the router keeps the vocabulary and transforms new queries as usual
    q = ["law question 3", "a new query"]
    np.testing.assert_allclose(shared.predict_quality(X[:2], q),
                               alone.predict_quality(X[:2], q), rtol=1e-6, atol=1e-9)


def _worded(n_per: int = 12, seed: int = 0) -> tuple[np.ndarray, RoutingTable]:
    """Three labels told apart by their words and by a cluster in the embedding each."""
    X, table = _table(n_per)
    rng = np.random.default_rng(seed)
    labs = sorted(set(table.categories or []))
    for i, c in enumerate(table.categories or []):
        X[i] = 0.3 * rng.normal(size=8)
        X[i, labs.index(c)] += 3.0
    return X, table


def test_fused_guard_labels_rejects_and_saves(tmp_path: Path) -> None:
    X, table = _worded()
    g = GuardRouter(method="fused", target_frr=0.1, unsafe=False, val_fraction=0.25,
                    k=3).fit(X, table)
    # one model over both views: dense rows in W_, n-gram rows in half precision
    assert g.W_.shape == (8, 3) and g.lex_coef_.shape == (len(g.lex_terms_), 3)
    assert g.lex_coef_.dtype == np.float16 and g.H1_.size == 0
    texts = ["pay the card bill", "wire money", "balance left"]
    assert [v.label for v in g.verdict(X[[0, 12, 24]], texts)] == ["bill", "transfer",
                                                                   "balance"]
    # a query far from every cluster with none of the training words scores above every
    # in-domain training query and is rejected
    far = np.zeros((1, 8), np.float32)
    far[0, 7] = 3.0
    s_in = g.ood_scores(X, table.prompts)
    s_far = g.ood_scores(far, ["zzz qqq xxx"])
    assert s_far[0] > s_in.max() and g.verdict(far, ["zzz qqq xxx"])[0].rejected
    assert g.val_frr_ <= 0.1 + 1e-9
    with pytest.raises(RouterError, match="texts"):
        g.ood_scores(X[:3])
    loaded = GuardRouter.load(g.save(tmp_path / "fused", embedder="test"))
    np.testing.assert_allclose(loaded.ood_scores(X, table.prompts), s_in, rtol=1e-4, atol=1e-5)
    assert [v.label for v in loaded.verdict(X, table.prompts)] == \
        [v.label for v in g.verdict(X, table.prompts)]
    with pytest.raises(RouterError, match="head=None"):
        GuardRouter(method="fused", lexical=True).fit(X, table)


def test_fused_guard_with_two_labels() -> None:
    X, table = _worded()
    keep = [i for i, c in enumerate(table.categories or []) if c != "balance"]
    g = GuardRouter(method="fused", target_frr=0.1, unsafe=False, val_fraction=0.25,
                    k=3).fit(X[keep], table.subset(keep))
    assert [v.label for v in g.verdict(X[[0, 12]], ["pay the card bill", "wire money"])] \
        == ["bill", "transfer"]
    p = g.predict_proba(X[[0]], ["pay the card bill"])
    assert p.shape == (1, 2) and p[0, 0] > 0.5


def test_fit_transform_rows_equal_fit_then_transform_and_the_cap_keeps_the_most_frequent() -> None:
    many = [*TEXTS, *(f"pay bill number {i}" for i in range(30))]
    lex = Lexical(max_words=6, max_chars=40)
    rows = lex.fit_transform(many)
    again = Lexical(max_words=6, max_chars=40).fit(many)
    assert lex.state()[0] == again.state()[0]
    assert (rows != again.transform(many)).nnz == 0 and rows.shape == (36, 46)
    # the six words in most texts, ties by the word: "bill", "pay" (32 texts each) first
    words = lex.state()[0][:lex.n_words]
    assert words[:2] == ["bill", "pay"] and len(words) == 6
    assert words == sorted(words, key=lambda w: (-sum(w in word_ngrams(t) for t in many), w))


def test_dot_equals_the_sparse_product_for_a_request_and_for_a_batch() -> None:
    texts = ["Pay my card bill", "wire money to savings", "zzz qqq", "balance left?",
             "pay the bill", "money money money"] * 3
    lex = Lexical(min_df_chars=1).fit(texts)
    W = np.random.default_rng(0).normal(size=(lex.n_features, 4)).astype(np.float32)
    want = np.asarray(lex.transform(texts) @ W)
    np.testing.assert_allclose(lex.dot(texts, W), want, rtol=1e-5, atol=1e-6)  # batch path
    for i, t in enumerate(texts[:6]):  # the direct path of one request
        np.testing.assert_allclose(lex.dot([t], W)[0], want[i], rtol=1e-5, atol=1e-6)
    assert not lex.dot(["!!! ..."], W).any()  # no known n-gram: a zero row


@pytest.mark.parametrize("method, lexical", [("fused", False), ("knn", True)])
def test_a_verdict_computes_the_lexical_margins_once(method: str, lexical: bool) -> None:
    X, table = _worded()
    g = GuardRouter(method=method, lexical=lexical, target_frr=0.1, unsafe=False,
                    val_fraction=0.25, k=3).fit(X, table)
    texts = ["pay the card bill", "wire money", "zzz qqq xxx"]
    want_ood = g.ood_scores(X[[0, 12, 30]], texts)
    want_p = g.predict_proba(X[[0, 12, 30]], texts)
    calls = []
    inner = g.lex_margins
    g.lex_margins = lambda t: calls.append(list(t)) or inner(t)  # type: ignore[method-assign]
    v = g.verdict(X[[0, 12, 30]], texts)
    assert calls == [texts]
    np.testing.assert_allclose([x.ood_score for x in v], want_ood, rtol=1e-6)
    assert [x.label for x in v] == [g.labels_[int(i)] for i in want_p.argmax(axis=1)]


def test_a_request_row_equals_the_transform_row_and_the_word_memo_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import routers.lexical as lexical_mod

    texts = [*TEXTS, "PAY  my\tcard\u00a0bill bill", "balance balance balance", "zzz", ""]
    lex = Lexical(min_df_chars=1).fit(TEXTS)
    F = lex.transform(texts).toarray()
    monkeypatch.setattr(lexical_mod, "_WORD_MEMO_MAX", 3)
    for i, t in enumerate(texts):
        col, val = lex.row(t)
        got = np.zeros(lex.n_features)
        np.add.at(got, col, val)
        assert len(set(col.tolist())) == col.size  # one entry per column
        np.testing.assert_allclose(got, F[i], rtol=1e-6, atol=1e-7)
        assert len(lex._word_memo) <= 3  # emptied when full, never larger
    # a remembered word gives the same row the second time
    again = lex.row(texts[6])
    np.testing.assert_array_equal(again[0], lex.row(texts[6])[0])


def test_the_vocabulary_pass_split_over_two_processes_equals_the_sequential_one(
        monkeypatch) -> None:
    import routers.lexical as L

    rng = np.random.default_rng(4)
    vocab = [f"w{i}" for i in range(300)] + ["Tax", "tax-free", "42", "café", "naïve"]
    texts = [" ".join(rng.choice(vocab, size=rng.integers(1, 40))) for _ in range(600)]
    texts += ["", "   ", "only-new-words here at the end"]  # terms first seen in the 2nd half
    monkeypatch.setattr(L, "SPLIT_MIN_TEXTS", 10**9)
    seq = L.Lexical(min_df_chars=1).fit_transform(texts)
    seq_state = L.Lexical(min_df_chars=1).fit(texts).state()
    monkeypatch.setattr(L, "SPLIT_MIN_TEXTS", 100)
    lx = L.Lexical(min_df_chars=1)
    split = lx.fit_transform(texts)
    for a in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(split, a), getattr(seq, a))
    assert lx.state()[0] == seq_state[0]
    np.testing.assert_array_equal(lx.state()[1], seq_state[1])
    words, chars = {}, {}
    enc = L._encode_split(texts, words, chars)
    words2, chars2 = {}, {}
    ref = L._encode(texts, words2, chars2, grow=True)
    assert words == words2 and chars == chars2  # the same index for every term
    for got, want in zip(enc, ref, strict=True):
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    # from a thread other than the main one (a gateway refitting in a worker thread): no fork
    import concurrent.futures
    import threading

    class Forked(Exception):  # not an error _encode_split falls back on
        pass

    def no_fork(*a, **k):
        raise Forked("forked from a worker thread")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_fork)
    got: list = []
    t = threading.Thread(target=lambda: got.append(L._encode_split(texts, {}, {})))
    t.start()
    t.join(30)
    for g, w in zip(got[0][1], ref[1], strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_stack_fitted_with_its_folds_in_threads_predicts_as_one_fitted_in_one(
        monkeypatch) -> None:
    import routers.stack as RS
    from routers.base import make_router
    from tests.unit.test_router_contract import synthetic_table

    X, table = synthetic_table(120)
    monkeypatch.setattr(RS, "FIT_THREADS", 1)
    one = make_router("stack").fit(X, table)
    monkeypatch.setattr(RS, "FIT_THREADS", 3)
    three = make_router("stack").fit(X, table)
    q = list(table.prompts[:20])
    np.testing.assert_allclose(three.predict_quality(X[:20], q),
                               one.predict_quality(X[:20], q), rtol=1e-9, atol=1e-12)


def test_the_stacks_sparse_products_equal_scipys_for_few_and_many_rows(monkeypatch) -> None:
    """The request path's gather of the weights a query's terms name gives scipy's product
    (empty rows included); many rows take scipy's product itself."""
    import scipy.sparse as sp

    import routers.stack as st

    rng = np.random.default_rng(0)
    W = rng.normal(size=(7, 500)).astype(np.float32)
    rows = sp.random(5, 500, density=0.05, format="csr", random_state=1)
    L = sp.vstack([rows[:2], sp.csr_matrix((1, 500)), rows[2:]]).tocsr()
    ref = np.asarray(L @ W.T.astype(np.float64))
    assert np.allclose(st._rows_dot(L, W), ref, rtol=0, atol=1e-12)
    assert not st._rows_dot(L, W)[2].any()
    monkeypatch.setattr(st, "_GATHER_MAX_NNZ", 3)
    assert np.allclose(st._rows_dot(L, W), ref, rtol=0, atol=1e-12)


def test_a_few_texts_transform_through_the_word_memo_to_the_batch_rows() -> None:
    """A request's rows (word memo, :meth:`Lexical.row`) equal the rows the batch pass gives
    the same texts, bit for bit, unknown words and empty texts included."""
    from routers.lexical import Lexical

    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    train = [" ".join(rng.choice(vocab, 12)) for _ in range(60)]
    lex = Lexical(min_df_chars=1)
    lex.fit_transform(train)
    few = ["alpha beta beta gamma", "", "unknown words only", "Kappa, THETA! zeta-zeta"]
    batch = lex.transform(few + train[:10])  # more than a request: the batch pass
    for k in range(1, len(few) + 1):
        got = lex.transform(few[:k])
        assert got.dtype == batch.dtype
        assert np.array_equal(got.toarray(), batch[:k].toarray())


def test_clip_text_keeps_the_head_and_the_tail_in_whole_words() -> None:
    from routers.lexical import clip_text

    assert clip_text("short text", 20) == "short text"
    text = "alpha beta gamma delta epsilon zeta eta theta"  # 45 characters
    # head: the first 10 characters, "alpha beta", end where a space follows; tail: the
    # last 10, " eta theta", start after a space: both kept whole (the space dropped)
    assert clip_text(text, 20) == "alpha beta eta theta"
    # cuts inside words drop the parts: head "alpha be" -> "alpha", tail "ta theta" ->
    # "theta"
    assert clip_text(text, 16) == "alpha theta"
    assert len(clip_text(text * 50, 300)) <= 301


def test_a_capped_lexical_reads_a_long_texts_head_and_tail_everywhere() -> None:
    from routers.lexical import MemoLexical, clip_text

    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(60)]
    texts = [" ".join(rng.choice(vocab, int(rng.integers(5, 200)))) for _ in range(40)]
    cap = 120
    capped = Lexical(max_text_chars=cap).fit(texts)
    clipped = Lexical().fit([clip_text(t, cap) for t in texts])
    assert capped.state()[0] == clipped.state()[0]
    np.testing.assert_array_equal(capped.state()[1], clipped.state()[1])
    long = [t for t in texts if len(t) > cap]
    assert long
    want = clipped.transform([clip_text(t, cap) for t in long])
    # the batch path, the request path (one text: row) and dot all read the clipped text
    assert abs(capped.transform(long) - want).max() < 1e-6
    assert abs(capped.transform(long[:1]) - want[:1]).max() < 1e-6
    W = rng.normal(size=(capped.n_features, 3)).astype(np.float32)
    np.testing.assert_allclose(capped.dot(long[:1], W), want[:1] @ W, rtol=1e-5, atol=1e-5)
    # the cap travels with the state, and a memo keeps it
    back = Lexical.from_state(*capped.state(), max_text_chars=capped.max_text_chars)
    assert abs(back.transform(long) - want).max() < 1e-6
    memo = MemoLexical(capped, texts)
    assert memo.max_text_chars == cap
    assert abs(memo.transform(long) - want).max() < 1e-6


def test_the_stack_reads_long_prompts_head_and_tail_and_keeps_the_cap_when_saved(
        tmp_path: Path) -> None:
    from routers.artifacts import load_router, save_router
    from routers.base import make_router
    from routers.lexical import clip_text
    from routers.stack import StackRouter
    from tests.unit.test_router_contract import synthetic_table

    X, table = synthetic_table(80)
    cap = StackRouter().lexical_max_chars
    assert cap is not None
    r = make_router("stack").fit(X, table)
    assert r.lex_max_text_chars_ == cap
    # a law question at both ends, a middle of other words (four times the cut)
    long_q = "law question 3 " + "math problem 5 " * (cap // 4) + "law question 7"
    assert len(long_q) > cap
    lex = Lexical.from_state(r.lex_terms_, r.lex_idf_, r.lex_n_words_)  # uncapped
    capped = Lexical.from_state(r.lex_terms_, r.lex_idf_, r.lex_n_words_, cap)
    assert abs(capped.transform([long_q]) - lex.transform([clip_text(long_q, cap)])).max() < 1e-6
    save_router(r, tmp_path / "stack")
    back = load_router(tmp_path / "stack")
    assert back.lex_max_text_chars_ == cap
    np.testing.assert_allclose(back.predict_quality(X[:1], [long_q]),
                               r.predict_quality(X[:1], [long_q]), rtol=1e-6, atol=1e-9)
    # null reads whole prompts (the stack before version 5); a cut too short is refused
    whole = make_router("stack", lexical_max_chars=None).fit(X, table)
    assert whole.lex_max_text_chars_ is None
    assert not np.allclose(whole.predict_quality(X[:1], [long_q]),
                           r.predict_quality(X[:1], [long_q]))
    with pytest.raises(RouterError, match="lexical_max_chars"):
        make_router("stack", lexical_max_chars=5).fit(X, table)
