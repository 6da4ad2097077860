"""The static embedder distilled from MiniLM (routers.embed_static).

A real distillation of the packaged all-MiniLM-L6-v2 on a small vocabulary (the first 3,000
ordinary tokens, 64 dimensions: a few seconds) stands in for the full build, which is the
same code on 29,523 tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from routers.embed import EmbedderError, make_embedder
from routers.embed_static import DistilledEmbedder, default_static_dir, distill

VOCAB = 3000
DIM = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "small"
    distill(out, dim=DIM, vocab_limit=VOCAB, threads=1)
    return out


def test_artifact_files_and_config(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == ["config.json", "embeddings.npz",
                                                       "tokenizer.json"]
    cfg = json.loads((built / "config.json").read_text())
    assert cfg["dim"] == DIM and cfg["tokens"] == VOCAB
    assert cfg["source"] == "all-MiniLM-L6-v2"
    with np.load(built / "embeddings.npz") as z:
        table, known = z["embeddings"], z["known"]
    assert table.dtype == np.float32 and table.shape[1] == DIM
    assert int(known.sum()) == VOCAB
    assert not table[~known].any()  # special and [unused] tokens get no vector


def test_build_is_deterministic(built: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    distill(again, dim=DIM, vocab_limit=VOCAB, threads=1)
    for name in ("embeddings.npz", "config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (built / name).read_bytes(), name


def test_embeddings_are_unit_rows_and_keep_meaning(built: Path) -> None:
    e = make_embedder("static", model_path=str(built))  # a distilled folder via kind static
    assert isinstance(e, DistilledEmbedder) and e.dim == DIM
    assert e.name.startswith("static-all-MiniLM-L6-v2-64:")
    texts = ["how do i pay my bill", "i want to pay the bill", "the river flows to the sea",
             "", "[CLS] [SEP]"]
    X = e.embed(texts)
    assert X.shape == (5, DIM) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X[:3], axis=1), 1.0, atol=1e-5)
    assert not X[3].any() and not X[4].any()  # no ordinary token: a zero vector, no NaN
    assert X[0] @ X[1] > X[0] @ X[2] + 0.1
    # batch == one at a time
    np.testing.assert_allclose(np.concatenate([e.embed([t]) for t in texts]), X, atol=1e-6)
    long = " ".join(["pay the bill", "river"] * 400)  # truncated alike on both paths
    np.testing.assert_allclose(e.embed([long]), e.embed([long, "sea"])[:1], atol=1e-6)
    assert e.embed([]).shape == (0, DIM)


def test_serving_needs_no_torch(built: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from routers.embed import make_embedder\n"
        f"e = make_embedder('distilled', model_path={str(built)!r})\n"
        "print(e.embed(['pay my bill']).shape)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"(1, {DIM})"


def test_missing_or_foreign_folders_fail_clearly(tmp_path: Path, built: Path) -> None:
    with pytest.raises(EmbedderError, match="not a distilled static embedder"):
        DistilledEmbedder(tmp_path)
    other = tmp_path / "old"
    other.mkdir()
    for f in built.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((other / "config.json").read_text())
    cfg["recipe"] = "s0-old"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EmbedderError, match="rebuild"):
        DistilledEmbedder(other)
    with pytest.raises(EmbedderError, match="dim"):
        distill(tmp_path / "x", dim=1)
    with pytest.raises(EmbedderError, match="unknown embedder kind"):
        make_embedder("nope")


def test_default_build_location_is_keyed_by_parameters(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path))
    a = default_static_dir(dim=256)
    assert a.parent == tmp_path / "static"
    assert a != default_static_dir(dim=128) != default_static_dir(dim=256, vocab_limit=10)
    with pytest.raises(EmbedderError, match="expertgate embedder distill"):
        DistilledEmbedder()  # not built in this cache: a clear message, no silent build


def _other_cpu_build(built: Path, dest: Path, **cfg_changes: object) -> Path:
    """``built`` as another machine's CPU builds it: the same inputs, the table's last bits
    different (as the same build gave on an Intel and an AMD machine), its config's bytes
    hash updated as :func:`distill` writes it."""
    import hashlib

    dest.mkdir()
    for f in built.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    with np.load(built / "embeddings.npz") as z:
        table, known = z["embeddings"].copy(), z["known"]
    table[known] = np.nextafter(table[known], np.float32(np.inf))  # one ulp up
    np.savez(dest / "embeddings.npz", embeddings=table, known=known)
    cfg = json.loads((built / "config.json").read_text())
    cfg["table_sha256_16"] = hashlib.sha256(table.tobytes()).hexdigest()[:16]
    cfg.update(cfg_changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def test_a_build_is_named_by_its_inputs_not_its_last_bits(built: Path, tmp_path: Path) -> None:
    """Two machines build the default table from the same encoder and recipe but get other
    last bits: one name (an artifact trained on one serves on the other), two embedding
    caches (each holds its own bytes' vectors); other inputs, another name."""
    from routers.embed import embedding_cache_path, names_of

    here, there = DistilledEmbedder(built), DistilledEmbedder(
        _other_cpu_build(built, tmp_path / "amd"))
    assert here.config["table_sha256_16"] != there.config["table_sha256_16"]
    assert here.name == there.name and here.name.startswith("static-all-MiniLM-L6-v2-64:")
    assert np.abs(here.embed(["pay my bill"]) - there.embed(["pay my bill"])).max() < 1e-5
    texts = ["pay my bill"]
    assert embedding_cache_path(here, texts, tmp_path) != embedding_cache_path(there, texts,
                                                                               tmp_path)
    # the former bytes-derived name: artifacts trained with this very build still load
    legacy = f"static-all-MiniLM-L6-v2-64:{here.config['table_sha256_16'][:12]}"
    assert legacy in names_of(here) and legacy not in names_of(there)
    other = DistilledEmbedder(_other_cpu_build(built, tmp_path / "sif", sif=1e-3))
    assert other.name != here.name


def test_the_gateway_serves_an_artifact_built_on_another_machine(built: Path,
                                                                  tmp_path: Path) -> None:
    """A router trained with one machine's build loads with another machine's build of the
    same inputs, and with the bytes-derived name artifacts recorded before; one trained with
    a build of other inputs is refused with both names."""
    from gateway.config import ConfigError
    from gateway.pipeline import _load_artifact
    from routers.artifacts import save_router
    from routers.base import make_router
    from tests.unit.test_router_contract import synthetic_table

    trained_with = DistilledEmbedder(built)
    serving = DistilledEmbedder(_other_cpu_build(built, tmp_path / "amd"))
    other = DistilledEmbedder(_other_cpu_build(built, tmp_path / "sif", sif=1e-3))
    _, table = synthetic_table(40, models=["cheap", "dear"], missing=False)
    X = np.random.default_rng(0).normal(size=(len(table.prompts), DIM)).astype(np.float32)
    router = make_router("knn").fit(X / np.linalg.norm(X, axis=1, keepdims=True), table)
    legacy = f"static-all-MiniLM-L6-v2-64:{trained_with.config['table_sha256_16'][:12]}"
    for name, recorded in (("now", trained_with.name), ("before", legacy),
                           ("other", other.name)):
        save_router(router, tmp_path / name, embedder=recorded)
    for name in ("now", "before"):
        assert _load_artifact(tmp_path / name, "knn", trained_with, name)[0].name == "knn"
    assert _load_artifact(tmp_path / "now", "knn", serving, "now")[0].name == "knn"
    with pytest.raises(ConfigError, match="trained with embedder") as e:
        _load_artifact(tmp_path / "other", "knn", serving, "other")
    assert other.name in str(e.value) and serving.name in str(e.value)
