"""``expertgate eval offpolicy``: judge a candidate router on another router's logs.

Two modes:

``--logs FILE --router ARTIFACT|POLICY``
    an exported routing log (``expertgate logs export``) with feedback; the candidate is a
    router artifact folder or the name of a policy in ``--config``. Prints IPS, SNIPS and
    doubly robust estimates of the candidate's quality, cost and trade-off with bootstrap
    intervals and the effective sample size, or a plain "no overlap" verdict.
``--simulate TABLE``
    proves the estimators on a full-information table (RouteLLM MMLU/GSM8K, LLMRouter NQ,
    ``synthetic:NxM``): replays a logging router with exploration, estimates a candidate,
    compares with the truth over ``--repeats`` repeats (coverage, width, error per estimator).
    ``--train SPEC`` also measures bias-corrected training on the simulated logs.

The estimators live in :mod:`evals.offpolicy`; this module adds what needs the gateway
(resolving a policy by name from the YAML configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cli_register"]


#: the fewest bootstrap resamples behind an interval: below it the 2.5 % and 97.5 %
#: percentiles rest on one or two resamples each (1000, the default, for published figures)
MIN_BOOT = 50


def cli_register(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--logs", default=None, help="exported routing log with feedback "
                     "(Parquet or JSONL from `expertgate logs export`)")
    src.add_argument("--simulate", default=None, metavar="TABLE",
                     help="full-information routing table to simulate logs from (a data-set "
                     "folder or file, or synthetic:NxM)")
    src.add_argument("--summarise", nargs="+", default=None, metavar="JSON",
                     help="write a Markdown table of --simulate result files (to --out)")
    parser.add_argument("--out", default=None, help="--summarise: Markdown file to write")
    parser.add_argument("--router", default=None, metavar="ARTIFACT|POLICY",
                        help="with --logs: the candidate, a router artifact folder or a policy "
                        "name of --config")
    parser.add_argument("--config", default=None, help="gateway YAML (for --router POLICY)")
    parser.add_argument("--policy", default=None, metavar="NAME",
                        help="with --logs: estimate on the records this gateway policy logged "
                        "(default: the policy --router names with --config, else every "
                        "record, with a warning when the log mixes policies)")
    parser.add_argument("--format", default=None, help="table format for --simulate "
                        "(default: guessed: llmrouter, routellm-mmlu, long)")
    parser.add_argument("--logging", default="knn:cost_weight=0.3",
                        help="--simulate: logging router spec NAME[:k=v,...]")
    parser.add_argument("--candidate", default="knn:cost_weight=0.1",
                        help="--simulate: candidate router spec NAME[:k=v,...]")
    parser.add_argument("--train", default=None, metavar="SPEC",
                        help="--simulate: also train SPEC on the simulated logs naively and "
                        "with bias correction, measured on the table's test split")
    parser.add_argument("--rate", type=float, default=0.1, help="--simulate: exploration rate")
    parser.add_argument("--method", default="epsilon", choices=("epsilon", "softmax"))
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--n", type=int, default=5000, help="--simulate: logged requests")
    parser.add_argument("--repeats", type=int, default=100, help="--simulate: repeats")
    parser.add_argument("--train-seeds", type=int, default=5, help="--train: seeds")
    parser.add_argument("--cost-weight", type=float, default=0.0,
                        help="λ of the trade-off quality − λ · cost / max cost")
    parser.add_argument("--boot", type=int, default=1000,
                        help=f"bootstrap resamples (at least {MIN_BOOT})")
    parser.add_argument("--folds", type=int, default=2, help="cross-fitting folds (at least 2)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="1 − interval level, in (0, 1)")
    parser.add_argument("--max-unsupported", type=float, default=0.01,
                        help="largest candidate share on never-explored experts still "
                        "estimated, in [0, 1]")
    from routers.embed import EMBEDDER_KINDS

    parser.add_argument("--embedder", default=None, choices=EMBEDDER_KINDS,
                        help="features (default: hashing for --simulate; for --logs the "
                        "embedder the candidate artifact records, or the one --config serves "
                        "its policy with, else minilm)")
    parser.add_argument("--embedder-path", default=None,
                        help="--logs with --embedder: that embedder's model folder (a "
                        "distilled or tuned table, a sentence-transformers folder)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder")
    parser.add_argument("--seed", type=int, default=0,
                        help="index into the seed set (--simulate: the split and the repeats)")
    parser.add_argument("--seed-set", default="dev", choices=("dev", "report"),
                        help="--simulate: development seeds (0, 1, ...: choose --clip there) "
                        "or the report seeds (evals.provenance.REPORT_SEEDS: published figures)")
    from evals.offpolicy import DR_CLIP, DR_REWARD_WEIGHTS, REWARD_WEIGHTS

    parser.add_argument("--clip", type=float, default=DR_CLIP,
                        help="weight cap of the clipped DR estimate (chosen on development "
                        "seeds)")
    parser.add_argument("--reward-weights", default=DR_REWARD_WEIGHTS, choices=REWARD_WEIGHTS,
                        help="how the DR reward model weights the logged records: none, "
                        "ips (1/propensity), iw (candidate prob./propensity) or mrdr "
                        "(Farajtabar et al. 2018)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the result JSON")
    parser.set_defaults(func=main, out_is_file=True)  # --out: the Markdown of --summarise


def _guess_format(path: str) -> str:
    p = Path(path)
    low = str(p).lower()
    if "llmrouter" in low or p.name.startswith("router_train_data"):
        return "llmrouter"
    if p.name == "routellm" or (p / "mmlu").is_dir():
        return "routellm-mmlu"
    return "long"


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run, rebuilt from the parsed flags (every flag
    whose value differs from its default, in the parser's order)."""
    parser = argparse.ArgumentParser(add_help=False)
    cli_register(parser)
    parts = ["expertgate eval offpolicy"]
    for act in parser._actions:
        if not act.option_strings or act.dest in ("summarise", "out"):
            continue
        v = getattr(args, act.dest, None)
        if v is not None and v != act.default:
            parts.append(f"{act.option_strings[0]} {v}")
    return " ".join(parts)


#: flags only one mode reads: given to the other they were dropped without a word
_SIMULATE_ONLY = ("format", "logging", "candidate", "train", "rate", "method", "temperature",
                  "n", "repeats", "train_seeds", "seed_set")
_LOGS_ONLY = ("router", "config", "policy", "max_unsupported")


def _mode_problem(args: argparse.Namespace) -> str | None:
    """A flag of the other mode (--simulate's with --logs, --logs' with --simulate, --out
    without --summarise), as a one-line usage error; None when every flag given is read."""
    parser = argparse.ArgumentParser(add_help=False)
    cli_register(parser)
    flag = {a.dest: a for a in parser._actions if a.option_strings}

    def given(dests: tuple[str, ...]) -> list[str]:
        return [flag[d].option_strings[0] for d in dests
                if getattr(args, d, None) is not None
                and getattr(args, d) != flag[d].default]

    if args.out is not None and not args.summarise:
        return "--out is the Markdown file of --summarise (--json OUT writes a run's result)"
    mode, other = (("--logs", given(_SIMULATE_ONLY)) if args.logs else
                   ("--simulate", given(_LOGS_ONLY)) if args.simulate else (None, []))
    if mode and other:
        owner = "--simulate" if mode == "--logs" else "--logs"
        return (f"{', '.join(other)} appl{'ies' if len(other) == 1 else 'y'} to {owner} "
                f"only, not {mode}")
    return None


def _range_problem(args: argparse.Namespace) -> str | None:
    """The first of --boot, --alpha, --folds, --max-unsupported outside its range (NaN
    included), as a one-line usage error; None when all are fine."""
    if not args.boot >= MIN_BOOT:
        return f"--boot must be at least {MIN_BOOT} bootstrap resamples (got {args.boot})"
    if not 0 < args.alpha < 1:
        return f"--alpha must lie in (0, 1), e.g. 0.05 for 95 % intervals (got {args.alpha})"
    if not args.folds >= 2:
        return f"--folds must be at least 2 cross-fitting folds (got {args.folds})"
    if not 0 <= args.max_unsupported <= 1:
        return f"--max-unsupported must lie in [0, 1] (got {args.max_unsupported})"
    if args.simulate and args.repeats < 1:
        return f"--repeats must be at least 1 (got {args.repeats})"
    if args.simulate and args.folds >= 2 and args.n < 2 * args.folds:
        # 0 ended in a numpy ValueError; 1..3 are refused by the estimator, said here alike
        return (f"--n must be at least {2 * args.folds} logged requests (two per "
                f"cross-fitting fold, --folds {args.folds}; got {args.n})")
    if args.embedder_path and (args.simulate or args.embedder in (None, "hashing")):
        # it was read only beside --embedder with --logs: anywhere else it was dropped
        return ("--embedder-path needs --logs and the --embedder whose model folder it is "
                "(distilled, static, minilm or onnx)")
    return None


def main(args: argparse.Namespace) -> int:
    from evals.offpolicy import OffPolicyError
    from routers.base import RouterError
    from routers.embed import EmbedderError, set_thread_counts

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.clip > 0 or not args.cost_weight >= 0:
        print("expertgate eval offpolicy: --clip must be above 0 and --cost-weight at least 0",
              file=sys.stderr)
        return 2
    bad = _mode_problem(args) or _range_problem(args)
    if bad:
        print(f"expertgate eval offpolicy: {bad}", file=sys.stderr)
        return 2
    set_thread_counts(blas_threads=1)
    t0 = time.perf_counter()
    if args.summarise:
        from evals.offpolicy import summary_markdown

        try:
            md = summary_markdown([_simulation_result(p) for p in args.summarise])
        except OffPolicyError as e:
            print(f"expertgate eval offpolicy: {e}", file=sys.stderr)
            return 2
        if args.out:
            Path(args.out).write_text(md)
            print(f"wrote {args.out}", file=sys.stderr)
        else:
            print(md, end="")
        return 0
    from evals.routing_eval import EvalError

    try:
        res = _simulate(args) if args.simulate else _logs(args)
    except (OffPolicyError, RouterError, EmbedderError, EvalError, OSError) as e:
        print(f"expertgate eval offpolicy: {e}", file=sys.stderr)
        return 2
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.json:
        p = Path(args.json)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=1, allow_nan=False))
        print(f"wrote {p}", file=sys.stderr)
    return 0 if res.get("verdict", "ok") != "no_overlap" else 1


def _simulation_result(path: str) -> dict[str, Any]:
    """A ``--simulate --json`` result file, for --summarise; anything else is an
    :class:`~evals.offpolicy.OffPolicyError` naming the file."""
    from evals.offpolicy import OffPolicyError

    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise OffPolicyError(f"--summarise {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OffPolicyError(f"--summarise {path}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise OffPolicyError(f"--summarise {path}: not JSON ({e})") from None
    need = ("results", "explore", "logging", "candidate", "n_logged", "ess_mean")
    if not isinstance(doc, dict) or doc.get("mode") != "simulate" \
            or any(k not in doc for k in need):
        mode = doc.get("mode") if isinstance(doc, dict) else None
        raise OffPolicyError(f"--summarise {path}: not the result of --simulate (written by "
                             "`expertgate eval offpolicy --simulate TABLE --json FILE`"
                             + (f"; this one is of --{mode}" if mode and mode != "simulate"
                                else "") + ")")
    return doc


def _git(commit: str | None) -> dict[str, Any]:
    """The commit and whether the tree's code differed from it (``dirty``, as in every other
    result's provenance: the figure may not come from the committed code)."""
    from evals.provenance import git_state

    return {"commit": commit, "dirty": git_state()["dirty"]}


def _data_path(spec: str, fmt: str | None) -> str:
    """The file or folder a table spec reads: a registry name (``llmrouter_nq``) is hashed as
    the folder it names, as train and eval routing do; a path (or synthetic:NxM) as given."""
    if Path(spec).exists() or spec.startswith("synthetic:"):
        return spec
    from evals.datasets.registry import resolve_table

    try:
        return str(resolve_table(spec, fmt)[0])
    except KeyError:
        return spec


def _explore(args: argparse.Namespace) -> Any:
    from routers.explore import Exploration

    return Exploration(args.rate, args.method, args.temperature)


def _simulate(args: argparse.Namespace) -> dict[str, Any]:
    from evals.offpolicy import data_sha256, git_commit, simulate, simulate_training
    from evals.provenance import seed_list
    from evals.routing_eval import embed_table, load_routing_table

    fmt = args.format or _guess_format(args.simulate)
    table = load_routing_table(args.simulate, fmt)
    full = np.isfinite(table.scores).all(axis=1)
    if not full.all():  # the truth needs every expert's score (synthetic tables leave gaps)
        print(f"dropping {int((~full).sum())} of {len(table)} prompts without a score for "
              "every expert", file=sys.stderr)
        table = table.subset(np.flatnonzero(full))
    X, embedder = embed_table(table, args.embedder or "hashing", args.cache_dir)
    emb = getattr(embedder, "name", embedder)
    print(f"simulating from {len(table)} prompts x {len(table.models)} experts ({fmt}), "
          f"{args.repeats} repeats of {args.n} logged requests", file=sys.stderr)
    res = simulate(table, X, logging=args.logging, candidate=args.candidate,
                   explore=_explore(args), n_logged=args.n, repeats=args.repeats,
                   cost_weight=args.cost_weight, folds=args.folds, n_boot=args.boot,
                   alpha=args.alpha, seed=seed_list(args.seed_set, args.seed + 1)[args.seed],
                   clip=args.clip, reward_weights=args.reward_weights, progress=True)
    out: dict[str, Any] = {"mode": "simulate", "data": args.simulate, "format": fmt,
                           "data_sha256": data_sha256(_data_path(args.simulate, fmt)),
                           "embedder": emb,
                           **_git(git_commit()), "command": _command(args),
                           "seed_set": args.seed_set, **res}
    _print_simulation(res)
    if args.train:
        tr = simulate_training(table, X, logging=args.logging, router=args.train,
                               explore=_explore(args), n_logged=args.n,
                               seeds=seed_list(args.seed_set, args.train_seeds))
        out["training"] = tr
        _print_training(tr)
    return out


def _print_simulation(res: dict[str, Any]) -> None:
    from evals.offpolicy import ESTIMATORS

    print(f"logging {res['logging']} (explore {res['explore']['method']} "
          f"{res['explore']['rate']:g}) -> candidate {res['candidate']}; agreement "
          f"{res['candidate_agrees_with_logging']:.1%}; mean ESS {res['ess_mean']:.0f} of "
          f"{res['n_logged']}")
    rows = [(o, r["truth"], [(e, r[e]) for e in (*ESTIMATORS, "naive")])
            for o, r in res["results"].items()]
    rows.append(("quality, clipped DR by cap", res["results"]["quality"]["truth"],
                 [(f"clip {c}", d) for c, d in res.get("clip_grid", {}).items()]))
    for o, truth, cells in rows:
        print(f"{o}: truth {truth:.4f}")
        for e, d in cells:
            cov = "" if "coverage" not in d else (f"  coverage {d['coverage']:.2f}  width "
                                                  f"{d['width']:.4f}")
            print(f"  {e:8s} bias {d['bias']:+.4f}  rmse {d['rmse']:.4f}  within tol "
                  f"{d['within_tol']:.2f}{cov}")


def _print_training(tr: dict[str, Any]) -> None:
    print(f"training {tr['router']} on {tr['n_logged']} biased logs, test quality "
          f"(seeds {tr['seeds']}):")
    for m, d in tr["methods"].items():
        extra = "" if "minus_naive" not in d else (f"  vs naive {d['minus_naive']:+.4f} "
                                                   f"(wins {d['wins']}/{len(tr['seeds'])})")
        print(f"  {m:6s} {d['test_quality']:.4f}{extra}")


class _Rejections:
    """A candidate router that counts the decisions that reject (name no expert)."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.rejected = 0

    def decide(self, X: Any, texts: Sequence[str]) -> list[Any]:
        decisions = list(self.router.decide(X, texts))
        self.rejected += sum(d.mode == "reject" for d in decisions)
        return decisions


def _candidate(args: argparse.Namespace, embedder: Any) -> Any:
    """The candidate router: an artifact folder, or a policy of --config by name (the flags
    checked by :func:`_check_logs_flags`)."""
    from evals.offpolicy import OffPolicyError

    if Path(args.router).is_dir():
        from routers.artifacts import load_router, read_manifest
        from routers.embed import names_of

        emb = read_manifest(args.router).get("embedder")
        if emb and emb not in names_of(embedder):
            raise OffPolicyError(f"artifact {args.router} was trained with embedder {emb!r}; "
                                 f"pass the matching --embedder (now {embedder.name!r})")
        return load_router(args.router)
    from gateway.config import ConfigError, load_config
    from gateway.pipeline import build_policy_set

    try:
        ps = build_policy_set(load_config(args.config), embedder)
    except ConfigError as e:
        raise OffPolicyError(str(e)) from None
    if args.router not in ps.policies:
        raise OffPolicyError(f"no policy {args.router!r} in {args.config} (policies: "
                             f"{', '.join(sorted(ps.policies))})")
    rt = ps.policies[args.router]
    models = dict(rt.config.models)
    return _ServedNames(rt.router, models) if models else rt.router


class _ServedNames:
    """A policy's learned router speaking its experts' names: the gateway renames the
    router's table models through the policy's ``models:`` after each decision (the logs
    name the experts), so the candidate's choices must be read the same way."""

    def __init__(self, router: Any, models: dict[str, str]) -> None:
        self.router, self.models = router, models
        self.experts_ = [models.get(m, m) for m in getattr(router, "experts_", [])]

    def decide(self, X: Any, texts: Any) -> list[Any]:
        from routers.base import Target

        out = self.router.decide(X, texts)
        for d in out:
            d.targets = [Target(self.models.get(t.expert, t.expert), t.score)
                         for t in d.targets]
        return list(out)


def _logs_embedder(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The candidate's embedder: ``--embedder`` when given; else the one a router
    artifact records (``embedder_spec``, written by ``expertgate train``), or the one the
    gateway config serves the named policy with; else minilm."""
    from evals.offpolicy import OffPolicyError

    if args.embedder:
        return args.embedder, ({"model_path": os.path.abspath(args.embedder_path)}
                               if args.embedder_path else {})
    if args.router and Path(args.router).is_dir():
        from routers.artifacts import read_manifest
        from routers.base import RouterError

        try:
            spec = read_manifest(args.router).get("embedder_spec")
        except (RouterError, OSError):  # unreadable: _candidate's load says why
            spec = None
        if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
            return spec["kind"], dict(spec.get("options") or {})
    elif args.router and args.config:
        from gateway.config import ConfigError, load_config

        try:
            emb = load_config(args.config).embedder
        except ConfigError as e:
            raise OffPolicyError(str(e)) from None
        return emb.kind, dict(emb.options)
    return "minilm", {}


def _log_policy(args: argparse.Namespace) -> str | None:
    """The policy whose records are read: ``--policy``; else, for ``--router POLICY
    --config``, that policy when the log holds records of it (a candidate policy new to the
    log is judged on all of them, with the mix warned about); else None (every record)."""
    if args.policy is not None or not (args.config and args.router
                                       and not Path(args.router).is_dir()):
        return args.policy
    from evals.datasets.routing import read_log_export
    from routers.base import RouterError

    try:
        df = read_log_export(args.logs, ("policy",))
    except RouterError:
        return None  # an unreadable file: load_logged says what it can
    if "policy" in df.columns and (df["policy"] == args.router).any():
        print(f"offpolicy: reading the records of policy {args.router!r} (--policy NAME "
              "chooses others)", file=sys.stderr)
        return str(args.router)
    print(f"offpolicy: the log holds no record of policy {args.router!r}: estimating on "
          "every record", file=sys.stderr)
    return None


def _check_logs_flags(args: argparse.Namespace) -> None:
    """What the flags of ``--logs`` decide alone, said before an embedder is built (MiniLM
    takes seconds to load)."""
    from evals.offpolicy import OffPolicyError

    if not args.router:
        raise OffPolicyError("--logs needs --router ARTIFACT|POLICY")
    if not Path(args.router).is_dir() and not args.config:
        raise OffPolicyError(f"{args.router!r} is not an artifact folder; to name a policy "
                             "pass --config FILE")
    if not Path(args.logs).exists():
        raise OffPolicyError(f"no such log file: {args.logs}")


def _logs(args: argparse.Namespace) -> dict[str, Any]:
    from evals.offpolicy import data_sha256, estimate, git_commit, load_logged, policy_matrix
    from routers.embed import embed_cached, make_embedder

    _check_logs_flags(args)
    kind, options = _logs_embedder(args)
    embedder = make_embedder(kind, **options)
    router = _candidate(args, embedder)
    policy = _log_policy(args)
    data = load_logged(args.logs, lambda t: embed_cached(embedder, t, args.cache_dir),
                       policy=policy)
    # the candidate chooses among each request's logged candidate set; where it picks one
    # the logger gave no probability, that mass is what the overlap check reports
    counting = _Rejections(router)
    T = policy_matrix(counting, data.X, data.texts or [], data.experts, allowed=data.allowed)
    strangers = sorted(set(getattr(router, "experts_", [])) - set(data.experts))
    if strangers:
        print(f"offpolicy: the candidate's model(s) {', '.join(map(repr, strangers))} are no "
              "expert of these logs: a request it sends there has no logged outcome (a "
              "learned router's table models are mapped to experts by a policy's models:; "
              "judge that policy with --router POLICY --config FILE)", file=sys.stderr)
    res = estimate(data, T, cost_weight=args.cost_weight, folds=args.folds, n_boot=args.boot,
                   alpha=args.alpha, seed=args.seed, max_unsupported=args.max_unsupported,
                   clip=args.clip, reward_weights=args.reward_weights)
    res["rejected"] = counting.rejected
    if counting.rejected:
        # policy_matrix counts them with the experts absent from the logs: say what they are
        print(f"offpolicy: the candidate rejects {counting.rejected} of the {len(data)} "
              "requests (it names no expert for them: a guard, a threshold); the logs hold "
              "no outcome of its reject action, so they count as unsupported "
              "('(experts absent from the logs)')", file=sys.stderr)
    print(res["message"])
    if res["verdict"] != "no_overlap":
        for o, ests in res["estimates"].items():
            # a cost in significant digits: 1e-4 USD per request printed to 4 decimals is
            # the same 0.0001 for every estimator
            f = ".4g" if o == "cost" else ".4f"
            cells = "  ".join(f"{e} {v['value']:{f}} [{v['ci_low']:{f}}, {v['ci_high']:{f}}]"
                              + ("*" if v.get("clipped") else "")
                              for e, v in ests.items() if v and v["value"] is not None)
            print(f"{o:8s} {cells}")
        if res.get("clipped_to_range"):
            rng = res["outcome_range"]
            print("note: * an estimate or interval bound fell outside its outcome's range "
                  "and was clipped to it (" + ", ".join(
                      f"{o} [{lo:.4g}, {hi:.4g}]" for o, (lo, hi) in rng.items()
                      if any(c.startswith(o + " ") for c in res["clipped_to_range"]))
                  + "): few requests or large importance weights; read it as a bound")
    return {"mode": "logs", "logs": args.logs, "data_sha256": data_sha256(args.logs),
            "router": args.router, "policy": policy, "embedder": embedder.name,
            **_git(git_commit()), "command": _command(args), **res}
