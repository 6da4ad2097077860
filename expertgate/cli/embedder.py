"""``expertgate embedder finetune|distill``: encoders built for guards and routers.

``finetune`` writes a domain-adapted sentence-transformers model; point the gateway at it with
``embedder: {kind: onnx, options: {model_path: DIR}}`` (or ``kind: minilm``) and train the
guard and routers with ``--embedder onnx --embedder-path DIR`` so their artifacts match.

``distill`` writes static token vectors distilled from MiniLM (or from a fine-tuned folder)
for ``embedder: {kind: distilled}`` / ``--embedder distilled``: no torch at serve time.
"""

from __future__ import annotations

import argparse
import json
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
    ft.set_defaults(func=_finetune)
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
    ds.set_defaults(func=_distill)


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
    (Path(args.out) / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps({k: v for k, v in meta.items() if k != "labels"}, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _distill(args: argparse.Namespace) -> int:
    from routers.embed import EmbedderError
    from routers.embed_static import default_static_dir, distill

    say = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    try:
        out = args.out or default_static_dir(args.model, dim=args.dim, sif=args.sif,
                                             vocab_limit=args.vocab_limit)
        if args.out is None and not args.force and (out / "config.json").is_file():
            say(f"already built: {out}")
            print(out)
            return 0
        distill(out, args.model, dim=args.dim, sif=args.sif, vocab_limit=args.vocab_limit,
                threads=args.threads, log=say)
    except (EmbedderError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0
