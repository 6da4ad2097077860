"""A static embedder fine-tuned for the job: the distilled token table trained end to end on a
routing table's expert scores or a guard's labels (issue 21, deliverable 1c).

The distilled embedder (:mod:`routers.embed_static`) embeds a text as the normalised sum of its
tokens' vectors; those vectors were made to imitate a general-purpose sentence encoder, not to
separate the prompts one expert answers from those it fails. :func:`tune_table` trains them
for that, fastText-style: an ``EmbeddingBag`` initialised with the distilled table (the SIF
weighting is already in its rows), the unit-norm sum as the prompt vector, and on top of it
one logistic head per expert (binary cross-entropy on every observed score, soft labels for
fractional scores: multi-output regression of every expert's score) plus, when the table has
a ``category`` column, a softmax head over the categories (weight ``category_weight``: a
prompt's subject is strong, cheap supervision for which expert wins); for a guard, the
softmax head over its labels alone (``expertgate eval guard --embedder distilled
--finetune``, ``expertgate embedder tune``). Training runs on CPU with torch (seconds per
epoch on 10k prompts), one epoch at a time, and stops when the expert loss (the label loss
without scores) on the *validation* prompts has not improved for ``patience`` epochs; the
table of the best validation epoch is kept. Tokens that never occur in the training prompts
keep their distilled vectors.

Measured (development seeds, not a published figure): on routing tables the tuned vectors
overfit within one or two epochs and did not raise the validation APGR of the best family
(``stack``), so routers keep the plain distilled table; on guard suites the label-tuned
table lifts every dense method (``docs/guard.md``).

:func:`write_tuned` exports the table in the distilled npz format, so it serves without torch
through :class:`routers.embed_static.DistilledEmbedder` (``embedder: {kind: distilled,
options: {model_path: DIR}}``). Its ``config.json`` records the tuning (data hash, seed,
epochs, validation losses, command) and its name carries ``-tuned`` and the new table's
hash, so its vectors, caches and artifacts never mix with the distilled ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import RouterError
from routers.embed_static import DistilledEmbedder, check_table_target

__all__ = ["tune_table", "write_tuned"]


def _bags(emb: DistilledEmbedder, texts: Sequence[str]) -> tuple[Any, Any]:
    """Flat token ids and bag offsets for ``torch.nn.EmbeddingBag``."""
    import torch

    ids = emb._ids(texts)
    offsets = np.zeros(len(ids), dtype=np.int64)
    np.cumsum([len(i) for i in ids[:-1]], out=offsets[1:])
    flat = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(offsets)


def tune_table(emb: DistilledEmbedder, texts: Sequence[str], train: np.ndarray,
               val: np.ndarray, *, scores: np.ndarray | None = None,
               labels: Sequence[str] | None = None, epochs: int = 20, patience: int = 2,
               batch_size: int = 128, lr: float = 0.002, head_lr: float = 0.01,
               category_weight: float = 1.0, seed: int = 0, threads: int | None = 1,
               log: Callable[[str], None] = lambda s: None) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune ``emb``'s token table on the ``train`` rows of ``texts``, early-stopped on
    the ``val`` rows.

    ``scores`` (n, m): every expert's score per text (NaN: unobserved), a routing table's;
    ``labels``: one label per text (a routing table's categories, or a guard's intents). At
    least one of them. Early stopping watches the validation expert loss when there are
    scores, else the label loss. ``lr`` is relative to the table's root-mean-square entry
    (Adam moves each coordinate by about ``lr`` of a typical entry per step). Returns the
    tuned table (float32, the shape of the distilled one) and a record of the training.
    """
    import torch
    import torch.nn.functional as F

    train, val = np.asarray(train), np.asarray(val)
    if len(train) < 2 or len(val) < 1:
        raise RouterError("tuning the embedder needs training and validation prompts")
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    S = np.zeros((len(texts), 0), np.float32) if scores is None else \
        np.asarray(scores, dtype=np.float32)
    m = S.shape[1]
    cats = sorted(set(labels)) if labels is not None else []
    K = len(cats) if len(cats) >= 2 else 0
    if not m and not K:
        raise RouterError("tuning the embedder needs expert scores or two labels at least")
    y_cat = torch.tensor([cats.index(c) for c in labels or []], dtype=torch.long) \
        if K else None
    base = np.asarray(emb._table, dtype=np.float32)
    rms = float(np.sqrt(np.mean(base[emb._known] ** 2))) or 1.0
    bag = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(base.copy()), freeze=False,
                                                mode="sum")
    dim = base.shape[1]
    heads = torch.nn.Linear(dim, m + K)
    opt = torch.optim.Adam([{"params": bag.parameters(), "lr": lr * rms},
                            {"params": heads.parameters(), "lr": head_lr}])
    target = torch.from_numpy(np.nan_to_num(S, nan=0.0))
    observed = torch.from_numpy(np.isfinite(S).astype(np.float32))
    flat_all, off_all = _bags(emb, texts)
    lens = np.diff(np.append(off_all.numpy(), len(flat_all)))

    def batch(rows: np.ndarray) -> tuple[Any, Any]:
        starts = off_all.numpy()[rows]
        ids = [flat_all[s:s + n] for s, n in zip(starts, lens[rows], strict=True)]
        offs = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lens[rows][:-1], out=offs[1:])
        return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long), \
            torch.from_numpy(offs)

    def losses(rows: np.ndarray) -> tuple[Any, Any]:
        ids, offs = batch(rows)
        z = F.normalize(bag(ids, offs), dim=1) * np.sqrt(dim)
        out = heads(z)
        r = torch.from_numpy(rows)
        w = observed[r]
        bce = (F.binary_cross_entropy_with_logits(out[:, :m], target[r], reduction="none")
               * w).sum() / w.sum().clamp(min=1.0) if m else torch.zeros(())
        ce = F.cross_entropy(out[:, m:], y_cat[r]) if y_cat is not None else torch.zeros(())
        return bce, ce

    best = (float("inf"), 0, base.copy())
    history = []
    t0 = time.perf_counter()
    for ep in range(1, int(epochs) + 1):
        bag.train()
        order = rng.permutation(train)
        for i in range(0, len(order), int(batch_size)):
            bce, ce = losses(order[i:i + int(batch_size)])
            loss = bce + float(category_weight) * ce
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            vb, vc = losses(val)
        history.append({"epoch": ep, "val_expert_bce": round(float(vb), 6),
                        "val_category_ce": round(float(vc), 6)})
        watched = float(vb) if m else float(vc)
        log(f"tune epoch {ep}: validation {'expert' if m else 'label'} loss {watched:.5f}")
        if watched < best[0] - 1e-5:
            best = (watched, ep, bag.weight.detach().numpy().copy())
        elif ep - best[1] >= int(patience):
            break
    # rows of tokens absent from the training prompts get no gradient: they stay distilled
    tuned = best[2].astype(np.float32)
    info = {"epochs_run": len(history), "best_epoch": best[1], "best_val_loss": best[0],
            "watched": "expert" if m else "label", "history": history,
            "n_train": len(train), "n_val": len(val), "experts": m, "labels": K, "lr": lr,
            "head_lr": head_lr,
            "batch_size": int(batch_size), "category_weight": float(category_weight),
            "patience": int(patience), "seed": int(seed),
            "seconds": round(time.perf_counter() - t0, 2)}
    return tuned, info


def write_tuned(out: str | Path, emb: DistilledEmbedder, tuned: np.ndarray,
                info: dict[str, Any]) -> dict[str, Any]:
    """Write ``tuned`` as a distilled-format folder (npz + config + tokenizer); the config is
    the source's with the tuning record under ``routing_tuned`` and the new table's hash."""
    check_table_target(out)
    cfg = dict(emb.config)
    cfg["table_sha256_16"] = hashlib.sha256(tuned.tobytes()).hexdigest()[:16]
    cfg["routing_tuned"] = {"from_table_sha256_16": emb.config.get("table_sha256_16"), **info}
    dest = Path(out)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.savez(tmp / "embeddings.npz", embeddings=tuned, known=emb._known)
    shutil.copyfile(emb.path / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return cfg
