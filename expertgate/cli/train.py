"""``expertgate train``, ``expertgate routers list`` and ``expertgate data list|verify``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from routers.embed import EMBEDDER_KINDS

__all__ = ["register"]


def _inputs_help() -> str:
    """One line per registered family: what ``train`` needs for it (its ``train_input``)."""
    from routers.base import get_router_class, registered_names

    lines = ["which input each router takes:"]
    for n in registered_names():
        lines.append(f"  {n:<11} {get_router_class(n).train_input}")
    return "\n".join(lines) + "\n\n"

TRAIN_EPILOG = """\
--data is a registry name (routellm:mmlu, routellm:gsm8k, llmrouter_nq; fetch it first with
`expertgate data fetch NAME`; the format is implied) or a path (--format, default long).

examples:
  expertgate data fetch routellm
  expertgate train --router knn --data routellm:mmlu --out artifacts/knn-mmlu \\
      --param k=20 --param cost_weight=0.3
  expertgate train --router complexity --data logs.parquet --format logs \\
      --out artifacts/cx --param max_strong_share=0.3
  expertgate train --router knn --data logs.parquet --format logs --correction dr \\
      --out artifacts/knn-from-traffic

It prints a policy snippet that serves the artifact (also written to OUT/policy.yaml):
paste it into a gateway config and map each table model to one of your experts.
"""

FORMATS = ("long", "wide", "routerbench", "routellm", "routellm-mmlu", "routellm-gsm8k",
           "llmrouter", "logs", "guard")


def register(sub: Any, name: str) -> None:
    if name == "train":
        p = sub.add_parser(name, help="fit a router from a routing table and save its artifact",
                           description="Fit a router on the train part of a routing table "
                           "(split by prompt), print validation and test metrics, save the "
                           "artifact.", epilog=_inputs_help() + TRAIN_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--router", required=True, help="registered router name "
                       "(expertgate routers list), or 'auto': family and parameters chosen "
                       "by cross-validation on the training prompts")
        p.add_argument("--auto-embedders", default=None, metavar="KIND,KIND",
                       help="with --router auto: also choose the embedder among these kinds "
                       "(each embeds the whole table; default: only --embedder)")
        p.add_argument("--data", required=True, help="a registry name (routellm:mmlu, "
                       "routellm:gsm8k, llmrouter_nq), a table file or folder, or a "
                       "generated table as eval routing makes it (synthetic:NxM[:length|"
                       "fewshot])")
        p.add_argument("--format", default=None, choices=FORMATS,
                       help="table format (default: implied by a registry name, else long)")
        p.add_argument("--out", required=True, help="artifact folder to write")
        p.add_argument("--param", action="append", default=[], metavar="K=V",
                       help="router parameter; V parsed as JSON when possible (repeatable)")
        p.add_argument("--embedder", default="distilled", choices=EMBEDDER_KINDS,
                       help="distilled (default: static vectors distilled from MiniLM, ~50x "
                       "faster per prompt than MiniLM and as good for routing; 'make setup' "
                       "builds it, else 'expertgate embedder distill' once), minilm (the "
                       "reference), onnx (the same vectors as minilm, faster), static, "
                       "hashing")
        p.add_argument("--embedder-path", default=None,
                       help="model folder: a distilled or model2vec folder for --embedder "
                       "distilled/static; a "
                       "sentence-transformers folder (e.g. from 'expertgate embedder "
                       "finetune') for minilm/onnx")
        p.add_argument("--quantize", action="store_true",
                       help="--embedder onnx with dynamic int8 weights (written into the "
                       "printed policy's embedder options)")
        p.add_argument("--layers", type=int, default=None, metavar="K",
                       help="--embedder onnx with only the encoder's first K transformer "
                       "layers (its own vector space; written into the printed policy)")
        p.add_argument("--correction", default="none",
                       choices=("none", "ips", "dr", "dr_target", "auto"),
                       help="--format logs: correct the logging router's selection bias with "
                       "the logged propensities: ips (importance resampling), dr (every "
                       "expert's outcome filled by an importance-weighted, cross-fitted reward "
                       "model), dr_target (every cell the doubly robust pseudo-outcome, "
                       "weights capped) or auto (the one of those three whose router scores "
                       "best on held-out logs, off-policy); see evals/offpolicy.py")
        p.add_argument("--policy", default=None, metavar="NAME",
                       help="--format logs: train on the records of this gateway policy only "
                       "(a log of several policies mixes the ways each chose its experts)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--val", type=float, default=0.1, help="validation fraction")
        p.add_argument("--test", type=float, default=0.2, help="test fraction")
        p.add_argument("--cache-dir", default=None, help="embedding cache folder")
        p.add_argument("--json", action="store_true", help="print metrics as JSON")
        p.add_argument("--metrics-json", default=None, metavar="FILE",
                       help="also write the metrics (timings included) with provenance "
                       "(commit, data sha256, encoder, command) to FILE")
        p.add_argument("--refit", action="store_true",
                       help="after measuring on the validation and test parts, fit the same "
                       "family and parameters on every prompt and save that router (the "
                       "figures printed are the train fit's)")
        p.add_argument("--latency", action="store_true", help="also measure router-only "
                       "decision latency per query at batch 1 and 32 (embeddings precomputed)")
        p.set_defaults(func=_train)
    elif name == "routers":
        p = sub.add_parser(name, help="router registry")
        inner = p.add_subparsers(dest="routers_command", metavar="WHAT")
        ls = inner.add_parser("list", help="print one registered router name per line")
        ls.set_defaults(func=_routers_list)
        p.set_defaults(func=_routers_list)
    elif name == "data":
        p = sub.add_parser(name, help="data-set registry: list, fetch and verify the data sets")
        inner = p.add_subparsers(dest="data_command", metavar="WHAT")
        ls = inner.add_parser("list", help="list the registered data sets with their sources")
        ls.set_defaults(func=_data_list)
        fe = inner.add_parser("fetch", help="download sets from their source repositories at "
                              "the recorded commit, checking each file's sha256")
        fe.add_argument("name", nargs="?", default=None, help="a registered set")
        fe.add_argument("--all", action="store_true", help="every registered set")
        fe.add_argument("--root", default=None, help="folder to write the sets into "
                        "(default: $EXPERTGATE_DATA_DIR, ../shared/data beside the checkout, "
                        "or data/ in the checkout)")
        fe.add_argument("--source", default=None, help="raw-file host serving "
                        "{source}/{owner}/{repo}/{commit}/{path} (default "
                        "$EXPERTGATE_DATA_SOURCE or GitHub's raw host)")
        fe.set_defaults(func=_data_fetch)
        vf = inner.add_parser("verify", help="check local files against recorded sha256")
        vf.add_argument("name", nargs="?", default=None, help="one set (default: all)")
        vf.add_argument("--root", default=None, help="folder holding the sets "
                        "(default: where `data fetch` writes)")
        vf.set_defaults(func=_data_verify)
        p.set_defaults(func=_data_list)
    else:  # pragma: no cover - dispatcher bug
        raise ValueError(f"expertgate.cli.train cannot register {name!r}")


def _routers_list(args: argparse.Namespace) -> int:
    from routers.base import registered_names

    for n in registered_names():
        print(n)
    return 0


def _data_list(args: argparse.Namespace) -> int:
    from evals.datasets.registry import REGISTRY

    for ds in REGISTRY:
        size = sum(f.bytes for f in ds.files)
        print(f"{ds.name:14s} {len(ds.files):3d} files {size / 2**20:6.1f} MiB  "
              f"{ds.repo}@{ds.commit[:10]}  {ds.license}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from evals.datasets import data_dir
    from evals.datasets.registry import FetchError, fetch, names

    if bool(args.name) == bool(args.all):
        print("expertgate data fetch: give one set name or --all "
              f"(sets: {', '.join(names())})", file=sys.stderr)
        return 2
    root = args.root or data_dir()
    for n in names() if args.all else [args.name]:
        try:
            lines = fetch(n, root, source=args.source, progress=sys.stderr.isatty())
        except KeyError as e:
            print(f"expertgate data fetch: {e.args[0]}", file=sys.stderr)
            return 2
        except FetchError as e:
            print(f"expertgate data fetch: {n}: {e}", file=sys.stderr)
            return 1
        for ln in lines:
            print(ln)
        print(f"{n}: ok in {root}/{n}")
    return 0


def _data_verify(args: argparse.Namespace) -> int:
    from evals.datasets.registry import names, verify

    todo = [args.name] if args.name else names()
    bad = 0
    for n in todo:
        try:
            problems = verify(n, args.root)
        except KeyError as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 2
        print(f"{n}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for pr in problems:
            print(f"  {pr}")
        bad += len(problems)
    return 1 if bad else 0


def _load(spec: str, fmt: str | None, policy: str | None = None) -> tuple[Any, str]:
    """The table and its format, from a registry name or a path (the one ``--data`` rule);
    ``policy`` keeps one policy's records of routing logs."""
    from routers.base import RouterError

    if fmt == "guard":
        from evals.datasets.guard import load_guard_table

        return load_guard_table(spec), fmt
    if spec.startswith("synthetic:"):  # eval routing's generated tables (scale checks)
        from evals.routing_eval import EvalError, load_routing_table

        try:
            return load_routing_table(spec), "synthetic"
        except EvalError as e:
            raise RouterError(str(e)) from None
    from evals.datasets.registry import resolve_table
    from evals.datasets.routing import load_table

    try:
        path, fmt = resolve_table(spec, fmt)
    except KeyError as e:
        raise RouterError(e.args[0]) from None
    return load_table(path, fmt, policy=policy), fmt


def _print_metrics(m: dict[str, Any]) -> None:
    print(f"trained {m['router']} on {m['n_train']} prompts in {m['fit_seconds']:.1f} s "
          f"(validation {m['n_val']}, test {m['n_test']}, seed {m['seed']})")
    if "embed_seconds" in m:
        print(f"embedding ({m['embedder']}) {m['embed_seconds']:.1f} s; embedding + training "
              f"{m['train_seconds_total']:.1f} s")
    if m.get("auto"):
        a = m["auto"]
        print(f"auto chose {a['family']} {json.dumps(a['params'])} (cross-validation score "
              f"{a['score']:.4f} over {len(a['candidates'])} candidates, {a['folds']} fold(s))")
    if m.get("costs"):
        c = m["costs"]
        pred = c.get("predicted") or []
        r2 = ", ".join(f"{e} {v:.2f}" for e, v in (c.get("cv_r2") or {}).items())
        print(f"costs ({c['cost_model']}): "
              + (f"predicted per query for {', '.join(pred)}" if pred else "mean per expert")
              + (f" (cross-validated R^2 of log cost: {r2})" if r2 else ""))
    partial = False
    for part in ("validation", "test"):
        r = m.get(part)
        if not r:
            continue
        # the decisions that name an expert of the table: a rejection (reported as one) or
        # an expert outside the table has no score in any table, complete or not
        decided = r["n"] - round((r.get("reject_share") or 0) * r["n"]) \
            - round((r.get("outside_table_share") or 0) * r["n"])
        k = r.get("scored_decisions")
        partial = partial or (k is not None and k < decided)
        q = "n/a" if r.get("mean_quality") is None else f"{r['mean_quality']:.4f}"
        c = "n/a" if r.get("mean_cost") is None else f"{r['mean_cost']:.6g}"
        if k is not None and k < decided:
            # a routing log scores one expert per prompt: only where the router picks the
            # logged expert is its choice scored, a biased figure (eval offpolicy estimates)
            q += f" (over the {k}/{r['n']} decisions whose expert has a score)"
        line = f"{part:10s} n={r['n']} mean quality {q}  mean cost {c}"
        if r.get("oracle_quality") is not None:
            line += f"  oracle {r['oracle_quality']:.4f}"
        if "apgr" in r and r["apgr"] is not None:
            line += f"  APGR {r['apgr']:.3f}"
        if r.get("reject_share"):
            line += f"  rejected {r['reject_share']:.1%}"
        print(line)
        share = ", ".join(f"{e} {s:.1%}" for e, s in r["share"].items())
        print(f"{'':10s} share: {share}")
        singles = ", ".join(f"{e} {v['quality']:.3f}" for e, v in r["single_expert"].items()
                            if v["quality"] is not None)
        print(f"{'':10s} single experts: {singles}")
    if partial:
        print("note: the table does not score every expert on every prompt (a routing log "
              "scores only the one that served it; other tables have gaps): a mean quality "
              "counts only the prompts where the router picks a scored expert, which biases "
              "it (the 'oracle' is over the scored experts too); `expertgate eval offpolicy` "
              "estimates a router's quality from logs without that bias")
    if m.get("refit"):
        print(f"refitted on all {m['refit']['n_prompts']} prompts in "
              f"{m['refit']['fit_seconds']:.1f} s: the saved router (the figures above are the "
              "train fit's)")
    for bs, lat in (m.get("latency") or {}).items():
        print(f"latency {bs.replace('_', ' ')}: p50 {lat['p50_ms']:.3f} ms/query, "
              f"p99 {lat['p99_ms']:.3f} ms/query ({lat['calls']} calls)")


def _embedder_options(args: argparse.Namespace, kind: str) -> dict[str, Any]:
    """The embedder options the flags give ``kind`` (only the ``--embedder`` kind has any)."""
    if kind != args.embedder:
        return {}
    options: dict[str, Any] = {}
    if args.embedder_path:
        # absolute: the printed policy and the artifact's embedder_spec are read by a gateway
        # started elsewhere
        options["model_path"] = os.path.abspath(args.embedder_path)
    if args.quantize:
        options["quantize"] = True
    if args.layers is not None:
        options["layers"] = args.layers
    return options


def _debiased(args: argparse.Namespace) -> Any:
    """Logs -> a training table corrected with the logged propensities (evals/offpolicy.py);
    the reward model of ``dr`` uses the chosen embedder's features."""
    from evals.offpolicy import OffPolicyError, choose_correction, debiased_table, load_logged
    from routers.base import RouterError
    from routers.embed import embed_cached, make_embedder

    embedder = make_embedder(args.embedder, **_embedder_options(args, args.embedder))

    def feats(texts: Any) -> Any:
        return embed_cached(embedder, list(texts), args.cache_dir)

    try:
        logged = load_logged(args.data, feats, policy=args.policy)
        method = args.correction
        if method == "auto":
            spec = args.router + (":" + ",".join(args.param) if args.param else "")
            method, val = choose_correction(logged, feats, spec, seed=args.seed)
            print(f"correction chosen on held-out logs: {method} (clipped DR estimates of "
                  f"the trained router: {val})", file=sys.stderr)
        return debiased_table(logged, method, seed=args.seed)
    except OffPolicyError as e:
        raise RouterError(str(e)) from None


def _train(args: argparse.Namespace) -> int:
    from evals.metrics import apgr_of_advantage
    from evals.provenance import git_state, provenance
    from routers.base import RouterError, RoutingTable
    from routers.embed import (
        EmbedderError,
        announce_embedding,
        embed_cached,
        make_embedder,
        set_thread_counts,
    )
    from routers.train import (
        check_split,
        no_training_prompts,
        parse_params,
        split_table,
        train_router,
    )

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    git = git_state()  # the code that runs, before minutes in which the tree may change
    stage = "check"
    try:
        _check_outputs_apart(args)
        if args.out is not None:  # before minutes of work: never over the user's files
            from routers.artifacts import check_artifact_target

            check_artifact_target(args.out)
        check_split(args.val, args.test)  # before the table is read and embedded
        params = parse_params(args.param)
        if args.router == "auto" and params:
            raise RouterError("--router auto takes no --param: it chooses the parameters")
        if args.router != "auto":  # the ranges a gateway policy's params: are held to
            from routers.base import make_router

            make_router(args.router, **params).check_params()
        if args.router == "guard" and args.format != "guard":
            raise RouterError("--router guard needs --format guard (a text,label,split table)")
        if args.format == "guard" and args.router != "guard":
            raise RouterError("--format guard is only for --router guard")
        if args.correction != "none" and args.format != "logs":
            raise RouterError("--correction needs --format logs (logged propensities)")
        if args.policy is not None and args.format != "logs":
            raise RouterError("--policy needs --format logs (it selects a policy's records)")
        if (args.quantize or args.layers is not None) and args.embedder != "onnx":
            raise EmbedderError("--quantize and --layers need --embedder onnx")
        if args.embedder_path and args.embedder == "hashing":
            raise EmbedderError("--embedder-path needs --embedder distilled, static, minilm "
                                "or onnx (the hashing embedder has no model folder)")
        stage = "load"  # a TypeError/ValueError before fitting is the data's, not --param's
        if args.correction != "none":
            table, fmt = _debiased(args), "logs"
        else:
            table, fmt = _load(args.data, args.format, args.policy)
        print(f"loaded {len(table)} prompts x {len(table.models)} models from {args.data} "
              f"({fmt}{'' if args.correction == 'none' else ', ' + args.correction})",
              file=sys.stderr)
        _note_free_cost_weight(table, params)
        if isinstance(table, RoutingTable) and not len(
                split_table(table, seed=args.seed, val=args.val, test=args.test)[0]):
            raise RouterError(no_training_prompts(table, args.val, args.test))
        if isinstance(table, RoutingTable) and table.categories is None \
                and _learns_from_categories(args.router):
            raise RouterError(f"--router {args.router} learns from the table's category "
                              f"column, and {args.data} has none: add one (long: category; "
                              "wide: eval_name or category), or train a family that learns "
                              "from the scores (--router knn, ...)")
        stage = "embed"
        n_labels = len(set(table.categories or []))
        if args.router == "guard" and "method" not in params \
                and (n_labels >= 3 or len(table) >= 100):
            # the default guard: its variant chosen on pseudo-OOD, held-out labels, or with
            # fewer than three labels held-out topic groups of the texts
            params["method"] = "auto"
            how = "leave-labels-out" if n_labels >= 3 else "leave-groups-out"
            print(f"guard: method, head and lexical chosen on {how} pseudo-OOD "
                  "(--param method=NAME fixes one)", file=sys.stderr)
        kinds = [args.embedder]
        if args.auto_embedders:
            if args.router != "auto":
                raise RouterError("--auto-embedders needs --router auto")
            # each kind once: a repeat would embed the whole table again to tie with itself
            kinds = list(dict.fromkeys(k.strip() for k in args.auto_embedders.split(",")
                                       if k.strip()))
            if not kinds:
                raise EmbedderError(f"--auto-embedders {args.auto_embedders!r} names no "
                                    f"embedder kind; use some of {', '.join(EMBEDDER_KINDS)}")
            bad = [k for k in kinds if k not in EMBEDDER_KINDS]
            if bad:
                raise EmbedderError(f"unknown embedder kind(s) {', '.join(bad)}; use "
                                    f"{', '.join(EMBEDDER_KINDS)}")
        set_thread_counts(torch_threads=1 if "minilm" in kinds else None)
        t0 = time.perf_counter()
        embedded = []
        for kind in kinds:
            e = make_embedder(kind, **_embedder_options(args, kind))
            announce_embedding(e, kind, table.prompts, args.cache_dir)
            # a progress bar for a person at a terminal; a log (CI, a scheduler) stays clean
            embedded.append((e, embed_cached(e, table.prompts, args.cache_dir,
                                             progress=sys.stderr.isatty())))
        embed_s = time.perf_counter() - t0
        candidates = None
        embedder, X = embedded[0]
        if len(embedded) > 1:
            embedder, X, candidates = _choose_embedder(embedded, table, args)
        kind = kinds[[e for e, _ in embedded].index(embedder)]
        options = _embedder_options(args, kind)
        # what made the artifact, in its router.json (outside its version) and --metrics-json
        prov = json.loads(json.dumps(provenance(
            data=_data_paths(args), embedder=embedder, seeds={"used": [args.seed]},
            command=_command_line(args), git=git), default=str))
        print(f"fitting {args.router} ...", file=sys.stderr, flush=True)
        stage = "fit"
        result = train_router(args.router, table, X, params=params, seed=args.seed,
                              val=args.val, test=args.test, out=args.out, embedder=embedder,
                              embedder_name=embedder.name,
                              embedder_spec={"kind": kind, "options": options},
                              latency=args.latency, refit=args.refit,
                              apgr=apgr_of_advantage, auto_candidates=candidates,
                              provenance=prov,
                              log=lambda s: print(s, file=sys.stderr, flush=True))
    except (RouterError, EmbedderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as e:  # a --param value of the wrong type (k=abc)
        if stage == "load" and not (args.correction == "auto" and args.param):
            why = f"while reading {args.data}: a problem with the table's values"
        elif stage == "embed":
            why = f"while embedding the prompts of {args.data}"
        elif args.param:
            why = "check the --param values"
        else:
            why = f"while fitting on {args.data}: a problem with the table's values"
        print(f"error: {type(e).__name__}: {e} ({why})", file=sys.stderr)
        return 2
    result.metrics["embedder"] = embedder.name
    result.metrics["embed_seconds"] = round(embed_s, 3)
    result.metrics["train_seconds_total"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(result.metrics, indent=1))
    else:
        _print_metrics(result.metrics)
    if args.metrics_json:
        doc = {**result.metrics, "provenance": prov}
        dest = Path(args.metrics_json)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(doc, indent=1, allow_nan=False, default=str) + "\n")
        print(f"wrote {dest}", file=sys.stderr)
    # with --json, stdout is the JSON document alone
    print(f"saved {result.path}", file=sys.stderr if args.json else sys.stdout)
    if result.path is not None and args.router != "guard":
        import numpy as np

        # the fallback is the model with the best mean score: the safe answer when the
        # decision's own targets all fail. A model left out of the router for too few
        # scores is no candidate: its few ratings are no mean to trust
        m = result.metrics
        left = set((m["refit"].get("left_out_models") or {}) if m.get("refit") else
                   (m.get("left_out_models") or {}).get("scored_training_prompts") or {})
        seen = np.isfinite(table.scores)
        mean = np.where(seen, table.scores, 0.0).sum(0) / np.maximum(seen.sum(0), 1)
        mean[[i for i, name in enumerate(table.models) if name in left
              and len(left) < len(table.models)]] = -np.inf
        best = table.models[int(np.argmax(mean))]
        served = list(table.models)
        base = getattr(result.router, "base_model", None) if args.router == "lora" else None
        if isinstance(base, str) and base and base not in served:
            served.append(base)  # the adapters' base model: the lora router's last target
        snippet = policy_snippet(args.router, result.path, served,
                                 kind, options, command=_command_line(args),
                                 fallback=best, lora_base=base if isinstance(base, str)
                                 and base else None)
        (result.path / "policy.yaml").write_text(snippet)
        out = sys.stderr if args.json else sys.stdout
        print(f"\nserve it: a ready gateway config, also written to "
              f"{result.path / 'policy.yaml'}:\n", file=out)
        print(snippet, file=out)
    return 0


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _check_outputs_apart(args: argparse.Namespace) -> None:
    """--metrics-json never over the table it reads, nor in the artifact folder (which the
    save replaces whole: a file there is lost at the next train into it, and one named as
    the artifact's own, router.json, breaks the artifact)."""
    from routers.base import RouterError

    m = args.metrics_json
    if not m:
        return
    if _same_file(m, args.data):
        raise RouterError(f"--metrics-json {m} is the --data table: the metrics would be "
                          "written over it; name another file")
    if args.out is not None:
        out, where = os.path.realpath(args.out), os.path.realpath(m)
        if where == out or where.startswith(out.rstrip(os.sep) + os.sep):
            raise RouterError(f"--metrics-json {m} is inside the --out folder {args.out}, "
                              "which the artifact replaces whole (the router's metrics are in "
                              "its router.json): write it beside, e.g. "
                              f"{args.out.rstrip('/' + os.sep)}.metrics.json")


def _learns_from_categories(name: str) -> bool:
    """Whether family ``name`` fits on a table's categories (its ``train_input``, the one
    description ``train --help`` prints, says so)."""
    from routers.base import get_router_class, registered_names

    return name in registered_names() and "category column" in get_router_class(
        name).train_input


def _note_free_cost_weight(table: Any, params: dict[str, Any]) -> None:
    """A cost_weight over a table whose experts all cost the same (logs of experts without a
    price in the gateway config: cost_usd 0) trades nothing: say so, never silently."""
    import numpy as np

    w = params.get("cost_weight")
    if not isinstance(w, int | float) or isinstance(w, bool) or not w > 0:
        return
    costs = np.asarray(table.mean_costs(), dtype=np.float64)
    if costs.size and np.ptp(costs) == 0:
        print(f"note: --param cost_weight={w:g} trades nothing here: every expert costs the "
              f"same ({costs[0]:g} on average; routing logs of experts without a price in "
              "the gateway config log cost_usd 0): the router learns quality alone",
              file=sys.stderr)


def _choose_embedder(embedded: list[tuple[Any, Any]], table: Any, args: argparse.Namespace
                     ) -> tuple[Any, Any, list[tuple[str, dict[str, Any]]]]:
    """--auto-embedders: run the auto selection on the training prompts with each embedder;
    keep the embedder (and its best candidate) with the best cross-validation score."""
    from routers.auto import select
    from routers.train import split_table

    tr, _, _ = split_table(table, seed=args.seed, val=args.val, test=args.test)
    best = None
    for e, X in embedded:
        sel = select(X[tr], table.subset(tr), seed=args.seed)
        print(f"auto: embedder {e.name}: best {sel.family} {sel.params} score "
              f"{sel.score:.4f}", file=sys.stderr)
        if best is None or sel.score > best[2].score:
            best = (e, X, sel)
    assert best is not None
    e, X, sel = best
    return e, X, [(sel.family, sel.params)]


def _data_paths(args: argparse.Namespace) -> list[str | Path]:
    """The files ``--data`` read, for the provenance's sha256: the path itself, or the folder
    a registry name reads (a generated table has none)."""
    if os.path.exists(args.data):
        return [args.data]
    if args.format == "guard" or args.data.startswith("synthetic:"):
        return []
    from evals.datasets.registry import resolve_table

    try:
        return [resolve_table(args.data, args.format)[0]]
    except KeyError:
        return []


def _command_line(args: argparse.Namespace) -> str:
    return " ".join(["expertgate", *sys.argv[1:]]) if sys.argv[1:2] == ["train"] else (
        f"expertgate train --router {args.router} --data {args.data} --out {args.out}")


def _expert_slug(model: str) -> str:
    """A readable expert name for a table model (``mistralai/Mixtral-8x7B-...`` -> the part
    after the last slash, lower case, only the characters expert names allow)."""
    import re

    tail = model.rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", tail).strip("-") or "expert"


#: the ports of the demo's llama.cpp experts (examples/demo-local.yaml: smollm2 on 8101,
#: gemma3 on 8102), which the snippet's first two experts point at: served as printed, they
#: reach llama-cpp-python's server, which answers a 500 to what it cannot read unless the
#: expert declares its dialect (gateway/dialect.py). An expert on any other port is a
#: server the snippet does not know: it keeps the default dialect.
DEMO_LLAMA_PORTS = (8101, 8102)
#: the demo's experts by name: a table of the demo's own routing log names them, and each
#: must reach its own server (llama.cpp answers whatever model name it is sent)
DEMO_EXPERT_PORTS = {"smollm2": 8101, "gemma3": 8102}


def _snippet_ports(names: list[str]) -> list[int]:
    """One port per expert: a demo expert's own, the others the next free ones from 8101."""
    taken = {DEMO_EXPERT_PORTS[n] for n in names if n in DEMO_EXPERT_PORTS}
    free = (p for p in range(DEMO_LLAMA_PORTS[0], DEMO_LLAMA_PORTS[0] + 2 * len(names) + 2)
            if p not in taken)
    return [DEMO_EXPERT_PORTS[n] if n in DEMO_EXPERT_PORTS else next(free) for n in names]


def _snippet_expert(name: str, port: int, model: str) -> dict[str, Any]:
    expert: dict[str, Any] = {"name": name, "api_base": f"http://127.0.0.1:{port}/v1",
                              "model": model}
    if port in DEMO_LLAMA_PORTS:
        expert["dialect"] = "llama-cpp-python"
    return expert


def policy_snippet(router: str, artifact: Any, models: list[str], embedder: str,
                   embedder_options: dict[str, Any], *, command: str = "",
                   fallback: str | None = None, lora_base: str | None = None) -> str:
    """A gateway config (YAML) that serves ``artifact``: the embedder it was trained with, one
    expert per table model and a policy whose ``models:`` maps each table model to it. With
    ``lora_base`` (the lora router's base model) every other model is a LoRA adapter of that
    expert (``parent:``): they share its server, and its concurrency slots."""
    from pathlib import Path

    import yaml

    names: dict[str, str] = {}
    for m in models:
        slug, k = _expert_slug(m), 2
        while slug in names.values():
            slug, k = f"{_expert_slug(m)}-{k}", k + 1
        names[m] = slug
    ports = _snippet_ports([names[m] for m in models])
    doc = {
        "embedder": {"kind": embedder, **({"options": embedder_options}
                                          if embedder_options else {})},
        "experts": [{"name": names[m], "parent": names[lora_base], "model": m}
                    if lora_base in names and m != lora_base else
                    _snippet_expert(names[m], ports[i], m)
                    for i, m in enumerate(models)],
        "policies": [{"name": f"learned-{router}", "router": router,
                      "artifact": str(Path(artifact).resolve()),
                      "models": dict(names),
                      "fallback": [names[fallback or models[0]]]}],
    }
    head = [
        f"# Serves the {router} router trained by: {command}" if command else
        f"# Serves the {router} router in {artifact}",
        "# The router decides between its training table's models (the keys of `models:`);",
        "# each maps to the expert that serves it. Point each expert's api_base at your",
        "# server (or map the models to experts you already have), keep the embedder: the",
        *(["# artifact only works with the one it was trained with. The adapters are LoRA",
           "# adapters of the base model's expert (`parent:`): its api_base is the server",
           "# (vLLM with --enable-lora) that holds them all. Then:"]
          if lora_base in names else
          ["# artifact only works with the one it was trained with. Then:"]),
        f"#   expertgate serve --config {Path(artifact) / 'policy.yaml'}",
        *(["# Ports 8101/8102 are the demo's llama.cpp servers (examples/demo-local.yaml), so",
           "# the experts there say `dialect: llama-cpp-python`; drop it for another server."]
          if any("dialect" in e for e in doc["experts"]) else []),
    ]
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(head) + "\n" + body
