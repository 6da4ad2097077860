"""Nearest-neighbour estimates whose neighbours are chosen a chunk of queries at a time
(bounded memory for large evaluation batches) equal the one-pass computation, bit for bit
(routers/knn.py, knn_quality)."""

from __future__ import annotations

import numpy as np
import pytest

from routers.knn import knn_quality, neighbour_vote, unit_rows


def _one_pass(Xq, Xtrain, S, prior, *, k, temperature, prior_strength):  # type: ignore[no-untyped-def]
    """knn_quality before the chunks (2bd65f2): the whole similarity matrix at once."""
    sims = unit_rows(Xq) @ Xtrain.T
    kk = min(int(k), Xtrain.shape[0])
    idx = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    top = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
    return neighbour_vote(idx, top, S, prior, temperature=temperature,
                          prior_strength=prior_strength)


@pytest.mark.parametrize(("nq", "nt", "k", "chunk", "dtype"),
                         [(1300, 900, 50, 512, np.float32), (7, 900, 20, 3, np.float64),
                          (1025, 700, 50, 512, np.float32), (9, 300, 20, 4, np.float64),
                          (1, 300, 20, 512, np.float32), (40, 30, 50, 16, np.float32),
                          (0, 30, 5, 512, np.float32)])
def test_chunked_estimates_equal_the_one_pass_ones(nq, nt, k, chunk, dtype) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(nq + nt)
    Xt = unit_rows(rng.normal(size=(nt, 32))).astype(dtype)
    Xq = rng.normal(size=(nq, 32)).astype(dtype)
    S = (rng.uniform(size=(nt, 4)) < 0.5).astype(np.float64)
    S[rng.uniform(size=S.shape) < 0.1] = np.nan
    prior = np.nanmean(S, axis=0)
    kw = {"k": k, "temperature": 0.05, "prior_strength": 2.0}
    got = knn_quality(Xq, Xt, S, prior, chunk=chunk, **kw)
    assert got.shape == (nq, 4)
    np.testing.assert_array_equal(got, _one_pass(Xq, Xt, S, prior, **kw))
