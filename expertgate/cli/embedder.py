"""``expertgate embedder finetune|distill``: encoders built for guards and routers.

``finetune`` writes a domain-adapted sentence-transformers model; point the gateway at it with
``embedder: {kind: onnx, options: {model_path: DIR}}`` (or ``kind: minilm``) and train the
guard and routers with ``--embedder onnx --embedder-path DIR`` so their artifacts match.

``distill`` writes static token vectors distilled from MiniLM (or from a fine-tuned folder)
for ``embedder: {kind: distilled}`` / ``--embedder distilled``: no torch at serve time.

``tune`` trains the distilled table itself on a guard's labels or a routing table's expert
scores (and categories) — :mod:`routers.embed_tune`, early-stopped on validation — and writes
it in the same format: ``embedder: {kind: distilled, options: {model_path: DIR}}`` and
``--embedder distilled --embedder-path DIR`` (its name ends in ``-tuned:<hash>``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, name: str) -> None:
    p = sub.add_parser(name, help="embedder tools: fine-tune the encoder on in-domain data")
    inner = p.add_subparsers(dest="embedder_command", metavar="WHAT")
    ft = inner.add_parser("finetune", help="fine-tune all-MiniLM-L6-v2 on labelled in-domain "
                          "queries (large-margin cosine loss) and save it",
                          description=__doc__.splitlines()[0] if __doc__ else None)
    src = ft.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="guard table (text,label,split) as JSONL/CSV/Parquet; "
                     "rows of split 'train' are used, 'validation' is reported")
    src.add_argument("--suite", help="a built-in guard suite (see 'expertgate eval guard')")
    ft.add_argument("--out", required=True, help="folder to write the model to")
    ft.add_argument("--epochs", type=int, default=2)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--lr", type=float, default=5e-5)
    ft.add_argument("--margin", type=float, default=0.2)
    ft.add_argument("--scale", type=float, default=16.0)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ft.set_defaults(func=_finetune, out_is_folder=True)
    ds = inner.add_parser("distill", help="distil static token vectors from MiniLM (or a "
                          "fine-tuned folder) for --embedder distilled (offline, ~1 min)")
    ds.add_argument("--model", default=None, help="sentence-transformers folder to distil "
                    "(default: the packaged all-MiniLM-L6-v2)")
    ds.add_argument("--out", default=None, help="folder to write (default: the cache folder "
                    "that --embedder distilled reads)")
    ds.add_argument("--dim", type=int, default=256, help="PCA dimensions (default 256)")
    ds.add_argument("--sif", type=float, default=1e-4,
                    help="SIF coefficient of the Zipf frequency weighting (default 1e-4)")
    ds.add_argument("--vocab-limit", type=int, default=None,
                    help="keep only the first N vocabulary tokens (quick builds for tests)")
    ds.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ds.add_argument("--force", action="store_true", help="rebuild even if the cache has it")
    ds.set_defaults(func=_distill, out_is_folder=True)
    tu = inner.add_parser("tune", help="train the distilled static table on a guard's labels "
                          "or a routing table's expert scores (CPU, seconds per epoch)")
    tsrc = tu.add_mutually_exclusive_group(required=True)
    tsrc.add_argument("--data", help="guard table (text,label,split): rows of split 'train' "
                      "train, 'validation' stop the training")
    tsrc.add_argument("--suite", help="a built-in guard suite")
    tsrc.add_argument("--routing-data", help="a routing table (as 'expertgate train --data'):"
                      " its train split (--seed, --val, --test as 'expertgate train') trains,"
                      " its validation split stops the training")
    tu.add_argument("--format", default=None, help="format of --routing-data")
    tu.add_argument("--val", type=float, default=None,
                    help="validation fraction of --routing-data (default 0.1)")
    tu.add_argument("--test", type=float, default=None,
                    help="test fraction of --routing-data (default 0.2)")
    tu.add_argument("--out", required=True, help="folder to write the tuned table to")
    tu.add_argument("--source", default=None, help="distilled folder to start from "
                    "(default: the default build)")
    tu.add_argument("--epochs", type=int, default=20, help="most epochs (early stopping)")
    tu.add_argument("--patience", type=int, default=2)
    tu.add_argument("--lr", type=float, default=None, help="step relative to the table's "
                    "typical entry (default 0.01 for labels, 0.002 for expert scores)")
    tu.add_argument("--seed", type=int, default=0)
    tu.set_defaults(func=_tune, out_is_folder=True)


def _finetune(args: argparse.Namespace) -> int:
    from evals.datasets.guard import load_guard_data, load_suite
    from routers.finetune import META_FILE, finetune_encoder

    try:
        data = load_suite(args.suite) if args.suite else load_guard_data(args.data,
                                                                         seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.epochs < 1 or args.batch_size < 1:
        print("error: --epochs and --batch-size must be at least 1", file=sys.stderr)
        return 2
    if not args.lr > 0:
        print(f"error: --lr must be above 0, not {args.lr:g}", file=sys.stderr)
        return 2
    try:
        meta = finetune_encoder(
            data.train_texts, data.train_labels, args.out, epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, margin=args.margin, scale=args.scale,
            seed=args.seed, threads=args.threads, val=(data.val_texts, data.val_labels),
            log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # the command that made the model travels with it (provenance of every later result)
    meta["command"] = "expertgate " + shlex.join(sys.argv[1:])
    meta["git"] = _git()
    (Path(args.out) / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "labels"}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _distill(args: argparse.Namespace) -> int:
    from routers.embed import EmbedderError
    from routers.embed_static import default_static_dir, distill

    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    # before the cache folder's name is made of them: -5 tokens or 0 dimensions name no build
    if args.dim < 2:
        print(f"error: --dim must be at least 2, not {args.dim}", file=sys.stderr)
        return 2
    if args.vocab_limit is not None and args.vocab_limit < 1:
        print(f"error: --vocab-limit must be at least 1, not {args.vocab_limit}",
              file=sys.stderr)
        return 2
    try:
        out = args.out or default_static_dir(args.model, dim=args.dim, sif=args.sif,
                                             vocab_limit=args.vocab_limit)
        if args.out is None and not args.force and (out / "config.json").is_file():
            say(f"already built: {out}")
            print(out)
            return 0
        distill(out, args.model, dim=args.dim, sif=args.sif, vocab_limit=args.vocab_limit,
                threads=args.threads, log=say)
    except (EmbedderError, OSError, ValueError) as e:  # ValueError: transformers' refusal
        # the library names its parameters (dim 500); the user typed flags (--dim 500)
        msg = re.sub(r"(?<![\w-])(dim|sif|vocab_limit) (?=[-\d])",
                     lambda m: "--" + m.group(1).replace("_", "-") + " ",
                     (str(e).strip().splitlines() or [type(e).__name__])[0])
        print(f"error: {msg}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _git() -> dict[str, Any]:
    """The commit and whether the tree's code differed from it: a model made by uncommitted
    code says so, as every result's provenance does."""
    from evals.provenance import git_state

    return {k: v for k, v in git_state().items() if k in ("commit", "dirty")}


def _data_hashes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """sha256 of what ``embedder tune`` trained on: the --data or --routing-data file or
    folder (a registry name: the folder it reads); a built-in suite is named by the command."""
    from evals.provenance import path_sha256

    src = args.routing_data or args.data
    if not src or str(src).startswith("synthetic:"):
        return []
    if args.routing_data and not Path(src).exists():
        from evals.datasets.registry import resolve_table

        try:
            src = str(resolve_table(src, args.format)[0])
        except KeyError:
            return []
    return [path_sha256(src)]


#: the largest --lr of ``embedder tune``: far beyond any useful step, below float32's range
_MAX_LR = 1e30


def _tune(args: argparse.Namespace) -> int:
    import numpy as np

    from evals.routing_eval import EvalError, load_routing_table
    from routers.base import RouterError
    from routers.embed import EmbedderError
    from routers.embed_static import DistilledEmbedder
    from routers.embed_tune import tune_table, write_tuned

    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if not args.routing_data:  # a guard table keeps its own split: the flag was dropped
        given = next((f for f in ("format", "val", "test") if getattr(args, f) is not None),
                     None)
        if given:
            print(f"error: --{given} applies to --routing-data only (a guard table's "
                  "validation rows are its split 'validation')", file=sys.stderr)
            return 2
    if args.epochs < 1 or args.patience < 1:
        print("error: --epochs and --patience must be at least 1", file=sys.stderr)
        return 2
    # 0 read as "unset" (the default step, silently); below 0 climbed the loss; inf made
    # every validation loss NaN
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        print(f"error: --lr must be {'above 0' if not args.lr > 0 else 'finite'}, "
              f"not {args.lr:g}", file=sys.stderr)
        return 2
    # the table and its steps are float32: 1e300 overflowed in the first step (exit 1)
    if args.lr is not None and args.lr > _MAX_LR:
        print(f"error: --lr must be at most {_MAX_LR:g} (a step relative to the table's "
              f"typical entry; the table is float32), not {args.lr:g}", file=sys.stderr)
        return 2
    try:
        from routers.embed_static import check_table_target

        check_table_target(args.out)  # before the training: never over the user's files
        # the data first: a wrong --suite or path is said before the table is asked for
        # (which may not be built yet: a minute's distillation, for nothing)
        if args.routing_data:
            from routers.train import split_table

            table = load_routing_table(args.routing_data, args.format)
            tr, va, _ = split_table(table, seed=args.seed,
                                    val=0.1 if args.val is None else args.val,
                                    test=0.2 if args.test is None else args.test)
        else:
            from evals.datasets.guard import load_guard_data, load_suite

            data = load_suite(args.suite) if args.suite else load_guard_data(args.data,
                                                                             seed=args.seed)
        emb = DistilledEmbedder(args.source)
        if Path(args.out).resolve() == emb.path.resolve():
            raise ValueError(f"--out {args.out} is the table it starts from (--source): the "
                             "tuned table would replace it; name another folder")
        if args.routing_data:
            tuned, info = tune_table(emb, table.prompts, tr, va, scores=table.scores,
                                     labels=table.categories, epochs=args.epochs,
                                     patience=args.patience, lr=args.lr or 0.002,
                                     seed=args.seed, log=say)
        else:
            texts = list(data.train_texts) + list(data.val_texts)
            labels = [str(x) for x in list(data.train_labels) + list(data.val_labels)]
            n = len(data.train_texts)
            tuned, info = tune_table(emb, texts, np.arange(n), np.arange(n, len(texts)),
                                     labels=labels, epochs=args.epochs, patience=args.patience,
                                     lr=args.lr or 0.01, seed=args.seed, log=say)
        info["command"] = "expertgate " + shlex.join(sys.argv[1:])
        info["data"] = _data_hashes(args)
        info["git"] = _git()
        cfg = write_tuned(args.out, emb, tuned, info)
    except (EmbedderError, EvalError, RouterError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in cfg["routing_tuned"].items() if k != "history"},
                     indent=1))
    print(f"wrote {args.out} ({DistilledEmbedder(args.out).name})", file=sys.stderr)
    return 0
