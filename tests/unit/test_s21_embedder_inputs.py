"""``expertgate embedder distill`` as its users meet it: a wrong source folder, a --dim or
--vocab-limit the encoder cannot give, each a one-line error and exit 2 before the
vocabulary pass (the minute of work), never a traceback or a silently smaller build."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import routers.embed_static as ES
from expertgate.cli import main


def _no_work(*a: object, **k: object) -> None:
    raise AssertionError("the vocabulary pass started before the bad input was refused")


@pytest.fixture
def no_pass(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(ES, "_vocab_pass", _no_work)
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))


def _packaged() -> Path:
    return ES._source_dir(None)


def _folder(tmp_path: Path, name: str, config: bytes | None, tokenizer: bytes | None,
            weights: bool = True) -> Path:
    d = tmp_path / name
    d.mkdir()
    if config is not None:
        (d / "config.json").write_bytes(config)
    if tokenizer is not None:
        (d / "tokenizer.json").write_bytes(tokenizer)
    if weights:
        (d / "model.safetensors").write_bytes(b"weights")
    return d


def _one_line_error(capsys: pytest.CaptureFixture[str], *says: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err and "EXPERTGATE_DEBUG" not in err, err
    for s in says:
        assert s in err, err
    return err


def test_a_source_folder_distill_cannot_read_is_named_before_the_work(
        tmp_path: Path, no_pass: None, capsys: pytest.CaptureFixture[str]) -> None:
    # a tokenizer.json not UTF-8 or not JSON ended in 'error: UnicodeDecodeError' /
    # 'JSONDecodeError' (exit 1); a folder without weights, or a distilled folder given as
    # the encoder, loaded the tokenizer and failed inside transformers ('ValueError:
    # Unrecognized model in ...', exit 1)
    wordpiece = (_packaged() / "tokenizer.json").read_bytes()
    bert = (_packaged() / "config.json").read_bytes()
    built = tmp_path / "built"
    built.mkdir()  # a table written by 'embedder distill': its config names a recipe
    (built / "config.json").write_text(json.dumps({"recipe": ES.RECIPE, "dim": 8}))
    (built / "tokenizer.json").write_bytes(wordpiece)
    (built / "embeddings.npz").write_bytes(b"")
    cases = [
        (_folder(tmp_path, "latin1", bert, b"\xff\xfe{"), "tokenizer.json is not UTF-8"),
        (_folder(tmp_path, "broken", bert, b"{not json"), "tokenizer.json is not JSON"),
        (_folder(tmp_path, "cfgjson", b"{bad", wordpiece), "config.json is not JSON"),
        (_folder(tmp_path, "cfglist", b"[1]", wordpiece), "config.json is not JSON"),
        (_folder(tmp_path, "notype", b"{}", wordpiece), "no model_type"),
        (_folder(tmp_path, "noweights", bert, wordpiece, weights=False),
         "no weights (model.safetensors or pytorch_model.bin)"),
        (built, "is a distilled embedder (written by 'expertgate embedder distill')"),
    ]
    for src, says in cases:
        for out in (["--out", str(tmp_path / "out")], []):  # the cache folder, too
            assert main(["embedder", "distill", "--model", str(src), "--dim", "8",
                         "--vocab-limit", "50", *out]) == 2
            _one_line_error(capsys, str(src), says)
    assert not (tmp_path / "out").exists()


def test_dimensions_and_vocabulary_limits_the_encoder_cannot_give_are_refused(
        tmp_path: Path, no_pass: None, capsys: pytest.CaptureFixture[str]) -> None:
    # --dim 500 built a 384-dimension table (the encoder's width) under a cache name saying
    # d500, exit 0; --vocab-limit -5 distilled every token but the last five
    out = ["--out", str(tmp_path / "out")]
    assert main(["embedder", "distill", "--dim", "500", *out]) == 2
    _one_line_error(capsys, "--dim 500", "384")
    for n in ("0", "-5"):
        assert main(["embedder", "distill", "--vocab-limit", n, "--dim", "8", *out]) == 2
        _one_line_error(capsys, f"--vocab-limit must be at least 1, not {n}")
    for n in ("0", "1", "-1"):
        assert main(["embedder", "distill", "--dim", n, *out]) == 2
        _one_line_error(capsys, f"--dim must be at least 2, not {n}")
    assert main(["embedder", "distill", "--dim", "8", "--vocab-limit", "5", *out]) == 2
    _one_line_error(capsys, "--vocab-limit 5 keeps 5 tokens", "--dim 8")
    assert not (tmp_path / "out").exists()


def test_a_distill_of_a_copied_encoder_folder_still_reaches_the_work(
        tmp_path: Path, no_pass: None) -> None:
    # the checks read the source as transformers will: a real encoder folder passes them
    src = tmp_path / "copy"
    shutil.copytree(_packaged(), src)
    with pytest.raises(AssertionError, match="vocabulary pass started"):
        ES.distill(tmp_path / "out", src, dim=384, vocab_limit=400)


def test_tune_a_step_beyond_the_tables_float32_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --lr 1e300 (finite in Python) loaded the table and the data, then ended in 'error:
    # RuntimeError: value cannot be converted to type float without overflow', exit 1
    import routers.embed_tune as ET

    monkeypatch.setattr(ET, "tune_table", _no_work)
    data = tmp_path / "g.csv"
    data.write_text("text,label\nhello there,a\nbook a flight,b\n")
    assert main(["embedder", "tune", "--data", str(data), "--out", str(tmp_path / "t"),
                 "--lr", "1e300"]) == 2
    _one_line_error(capsys, "--lr must be at most", "not 1e+300")
    assert not (tmp_path / "t").exists()


def _table_folder(tmp_path: Path, name: str = "table") -> Path:
    """A distilled table folder as 'embedder distill' writes it, made by hand (4 dims)."""
    import hashlib

    import numpy as np

    d = tmp_path / name
    d.mkdir()
    shutil.copyfile(_packaged() / "tokenizer.json", d / "tokenizer.json")
    vocab = json.loads((d / "tokenizer.json").read_text())["model"]["vocab"]
    n = max(vocab.values()) + 1
    table = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    known = np.ones(n, dtype=bool)
    np.savez(d / "embeddings.npz", embeddings=table, known=known)
    (d / "config.json").write_text(json.dumps({
        "recipe": ES.RECIPE, "source": "all-MiniLM-L6-v2", "source_sha256_16": "0" * 16,
        "dim": 4, "sif": 1e-4, "tokens": n, "vocab_size": n, "vocab_limit": None,
        "table_sha256_16": hashlib.sha256(table.tobytes()).hexdigest()[:16]}))
    return d


def test_a_damaged_distilled_folder_is_an_embedder_error_naming_the_file(
        tmp_path: Path) -> None:
    # eval guard --embedder distilled --embedder-path DIR, route and serve with such a
    # folder ended in 'error: JSONDecodeError', 'ValueError: This file contains pickled
    # (object) data', 'Exception: expected `,`', 'KeyError: table_sha256_16' (exit 1); a
    # tokenizer with more ids than the table has rows loaded, then failed every request
    # on an IndexError
    from routers.embed import EmbedderError

    good = _table_folder(tmp_path)
    ES.DistilledEmbedder(good).embed(["hello there"])  # the hand-made folder is a table

    def damaged(name: str, file: str, data: bytes | None = None, **cfg: object) -> Path:
        d = _table_folder(tmp_path, name)
        if data is not None:
            (d / file).write_bytes(data)
        if cfg:
            c = json.loads((d / "config.json").read_text())
            c.update(cfg)
            (d / "config.json").write_text(json.dumps({k: v for k, v in c.items()
                                                       if v != "DROP"}))
        return d

    cases = [
        (damaged("cfg", "config.json", b"{bad"), "config.json is not JSON"),
        (damaged("npz", "embeddings.npz", b"not a zip"), "embeddings.npz is not a .npz archive"),
        (damaged("tok", "tokenizer.json", b'{"x": 1}'), "tokenizer.json"),
        (damaged("key", "config.json", table_sha256_16="DROP"), "table_sha256_16"),
    ]
    import numpy as np

    small = damaged("small", "config.json")
    np.savez(small / "embeddings.npz", embeddings=np.zeros((100, 4), np.float32),
             known=np.ones(100, dtype=bool))
    cases.append((small, "100 rows"))
    for folder, says in cases:
        with pytest.raises(EmbedderError) as e:
            ES.DistilledEmbedder(folder)
        msg = str(e.value)
        assert str(folder) in msg and says in msg, msg
        assert "\n" not in msg


@pytest.mark.parametrize("dim", [0, -3, 1.5, "abc", True])
def test_a_hashing_dimension_that_is_no_positive_integer_is_refused(dim: object) -> None:
    # embedder: {kind: hashing, options: {dim: 0}} built the embedder, then every embedding
    # failed on 'ZeroDivisionError: integer modulo by zero' (-3: 'negative dimensions are
    # not allowed'; 1.5 ran as 1 dimension, silently)
    from routers.embed import EmbedderError, make_embedder

    with pytest.raises(EmbedderError, match=r"hashing embedder's dim must be an integer of "
                       r"at least 1, not"):
        make_embedder("hashing", dim=dim)
    assert make_embedder("hashing", dim=64).dim == 64


def test_an_option_an_embedder_kind_does_not_take_names_the_ones_it_does() -> None:
    # 'TypeError: HashingEmbedder.__init__() got an unexpected keyword argument' named a
    # class the config never mentions
    from routers.embed import EmbedderError, make_embedder

    with pytest.raises(EmbedderError, match=r"embedder kind 'hashing' takes no option "
                       r"'bogus' \(it takes dim\)"):
        make_embedder("hashing", bogus=1)
    with pytest.raises(EmbedderError, match=r"'distilled' takes no option 'modelpath' "
                       r"\(it takes model_path, build, threads\)"):
        make_embedder("distilled", modelpath="x")


def test_encoder_folders_that_are_not_models_are_embedder_errors(tmp_path: Path) -> None:
    # --embedder minilm --embedder-path DIR with a config but no weights: 'ValueError:
    # Unrecognized model in DIR' (exit 1); --embedder static --static-model DIR not a
    # model2vec folder: 'ValueError: Could not find expected model files'
    from routers.embed import EmbedderError, make_embedder

    bert = (_packaged() / "config.json").read_bytes()
    noweights = _folder(tmp_path, "noweights", bert,
                        (_packaged() / "tokenizer.json").read_bytes(), weights=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    pytest.importorskip("sentence_transformers")
    with pytest.raises(EmbedderError, match="noweights is not a sentence-transformers model"):
        make_embedder("minilm", model_path=str(noweights))
    pytest.importorskip("model2vec")
    with pytest.raises(EmbedderError, match="empty is not a model2vec model folder"):
        make_embedder("static", model_path=str(empty))


def test_tune_refuses_to_write_over_the_table_it_starts_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --out equal to --source (a distilled folder, which --out may replace) trained, then
    # replaced the source table with the tuned one: the untuned table, and every artifact
    # trained on it, gone
    import routers.embed_tune as ET

    monkeypatch.setattr(ET, "tune_table", _no_work)
    src = _table_folder(tmp_path)
    before = (src / "embeddings.npz").read_bytes()
    data = tmp_path / "g.csv"
    data.write_text("text,label\nhello there,a\nbook a flight,b\n")
    for out in (str(src), str(src) + "/", str(tmp_path / "x" / ".." / "table")):
        assert main(["embedder", "tune", "--data", str(data), "--source", str(src),
                     "--out", out]) == 2
        _one_line_error(capsys, "--out", "--source", "another folder")
    assert (src / "embeddings.npz").read_bytes() == before


@pytest.mark.parametrize("kind", ["onnx", "minilm"])
@pytest.mark.parametrize("option, value, says", [
    ("max_seq_length", 1024, "from 1 to 512 (the encoder's max_position_embeddings), not 1024"),
    ("max_seq_length", 0, "an integer from 1 to 512"),
    ("max_seq_length", -1, "an integer from 1 to 512"),
    ("threads", 0, "threads must be an integer of at least 1"),
    ("threads", -1, "threads must be an integer of at least 1"),
])
def test_encoder_options_out_of_range_are_refused_when_built(
        kind: str, option: str, value: int, says: str) -> None:
    # embedder: {kind: onnx, options: {max_seq_length: 1024}} served until the first prompt
    # over 512 tokens, which failed in onnxruntime ('Attempting to broadcast an axis ... 512
    # by 2002'); minilm with -1 failed every embedding on an OverflowError; threads 0 was
    # torch's RuntimeError (minilm) or onnxruntime's default pool, silently (onnx)
    from routers.embed import EmbedderOptionError, make_embedder

    with pytest.raises(EmbedderOptionError, match=re.escape(says)):
        make_embedder(kind, **{option: value})


@pytest.mark.parametrize("flag, value", [("--val", "0.3"), ("--test", "0.1"),
                                         ("--format", "routellm")])
def test_tune_routing_flags_with_a_guard_table_are_refused(
        flag: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --data g.csv --val 0.3 trained with the table's own validation split, exit 0: the
    # flag, read only with --routing-data, was dropped without a word
    import routers.embed_tune as ET

    monkeypatch.setattr(ET, "tune_table", _no_work)
    data = tmp_path / "g.csv"
    data.write_text("text,label\nhello there,a\nbook a flight,b\n")
    assert main(["embedder", "tune", "--data", str(data), "--out", str(tmp_path / "t"),
                 flag, value]) == 2
    _one_line_error(capsys, f"{flag} applies to --routing-data only")


def test_tune_names_a_wrong_data_source_before_the_missing_default_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --suite nope (or a missing --data / --routing-data) said 'the distilled static
    # embedder is not built yet; run expertgate embedder distill': a minute's build, after
    # which the command said the suite does not exist
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))  # no default build
    for src in (["--suite", "nope"], ["--data", str(tmp_path / "missing.csv")],
                ["--routing-data", str(tmp_path / "missing.csv")]):
        assert main(["embedder", "tune", *src, "--out", str(tmp_path / "t")]) == 2
        err = _one_line_error(capsys)
        assert "not built yet" not in err and ("nope" in err or "missing.csv" in err), err


def test_distill_does_not_replace_a_tuned_table(
        tmp_path: Path, no_pass: None, capsys: pytest.CaptureFixture[str]) -> None:
    # distill --out T, T a table written by 'embedder tune' (its config says routing_tuned),
    # replaced the trained table with an untuned one: the training, and the match of every
    # artifact trained with it, gone
    tuned = _table_folder(tmp_path, "tuned")
    cfg = json.loads((tuned / "config.json").read_text())
    cfg["routing_tuned"] = {"epochs_run": 3}
    (tuned / "config.json").write_text(json.dumps(cfg))
    before = (tuned / "embeddings.npz").read_bytes()
    assert main(["embedder", "distill", "--out", str(tuned), "--dim", "8",
                 "--vocab-limit", "50"]) == 2
    _one_line_error(capsys, str(tuned), "tuned table", "another output folder")
    assert (tuned / "embeddings.npz").read_bytes() == before
    # an untuned build there is the command's own output: rebuilt (the pass is reached)
    with pytest.raises(AssertionError, match="vocabulary pass started"):
        ES.distill(_table_folder(tmp_path, "plain"), dim=8, vocab_limit=50)
