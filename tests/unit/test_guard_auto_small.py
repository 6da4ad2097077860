"""``method="auto"`` on a table too small to choose on says so, and how to go on."""

from __future__ import annotations

import pytest

from evals.datasets.guard import guard_table_from_labels
from routers.base import RouterError
from routers.embed import HashingEmbedder
from routers.guard import GuardRouter


def test_auto_on_too_little_data_names_the_way_out() -> None:
    # `expertgate train --router guard` on a small table (three labels, of which its own
    # split left two in training) failed with "guard: 4 texts are too few for 10 topic
    # groups": a topic-group internal, with no word of what to do
    emb = HashingEmbedder()
    texts = ["open my bank account", "check my balance", "book a flight", "cancel my hotel"]
    labels = ["bank", "bank", "travel", "travel"]
    g = GuardRouter(method="auto", val_fraction=0.0)
    with pytest.raises(RouterError, match=r"method 'auto'.*2 label\(s\).*method=knn"):
        g.fit(emb.embed(texts), guard_table_from_labels(texts, labels))
