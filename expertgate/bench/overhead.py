"""``expertgate bench overhead``: what expertgate adds to a request, against its peers.

The same requests go to a fast fixed-answer upstream (:mod:`expertgate.bench.upstream_stub`, nginx)

* ``direct``       — straight to the upstream (the baseline every other path is compared to);
* ``floor``        — through the bare raw-ASGI + aiohttp pass-through
  (:mod:`expertgate.bench.floor`);
* ``passthrough``  — through expertgate with a concrete expert name (no routing);
* ``routed_miss``  — through expertgate with a routed policy, a distinct prompt every request
  (decision-cache miss: normalise, embed, route, then forward);
* ``routed_explore`` — ``routed_miss`` with the policy's exploration on (rate 0.1, two
  experts on the same upstream): what logging propensities and sampling add;
* ``routed_shadow`` — ``routed_miss`` with a shadow candidate router (knn) deciding after
  the served decision and logging its own: what a shadow adds to the served request;
* ``routed_learned`` — ``routed_miss``'s requests through a policy serving a trained
  router artifact (``--artifact DIR``, e.g. the ``stack`` that ``train --router auto``
  chose): the learned decision's share of a routed miss;
* ``routed_hit``   — the same policy with one repeated prompt (decision-cache hit);
* ``litellm``      — through the LiteLLM proxy 1.106.2 (1 worker, no database).

Load comes from wrk (closed loop, one thread; see :mod:`expertgate.bench.load` for why not
h2load) at each concurrency, a bounded number of requests per run. Paths are interleaved in
rounds (their order rotating each round) so machine noise hits all alike; every figure is
taken per round as "path minus direct, same round" and the median over rounds is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import operator
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertgate.bench.load import LoadError, distinct_prompt, run_wrk, stream_ttfb
from expertgate.bench.proc import (
    FDS_BESIDE,
    cpu_seconds,
    machine_info,
    open_files_limit,
    rss_bytes,
)
from expertgate.bench.servers import (
    EXPLORE_POLICY,
    LEARNED_POLICY,
    ROUTED_POLICY,
    SHADOW_POLICY,
    Server,
    ServerError,
    expertgate_config,
    gateway_available,
    shadow_artifact,
    start_expertgate,
    start_floor,
    start_litellm,
)
from expertgate.bench.upstream_stub import StubError, UpstreamStub
from routers.embed import EMBEDDER_KINDS

__all__ = ["PATHS", "cmd_overhead", "format_ratio_lines", "register_overhead"]

PATHS = ["direct", "floor", "passthrough", "routed_miss", "routed_explore", "routed_shadow",
         "routed_learned", "routed_hit", "litellm"]
_EXPERTGATE_PATHS = {"passthrough", "routed_miss", "routed_explore", "routed_shadow",
                     "routed_learned", "routed_hit"}
# a floor for ratio denominators: "added" can be ~0 (or slightly negative) under noise
_MIN_ADDED_MS = 0.01


@dataclass
class _Target:
    path: str
    url: str
    body: bytes | None
    model: str
    pids: Callable[[], list[int]]
    requests: int
    headers: dict[str, str] = field(default_factory=dict)
    #: appended to every distinct routed prompt (``--prompt-tokens``)
    suffix: str = ""


@dataclass
class _Rows:
    """Per path, per concurrency: one dict per round."""

    runs: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)
    streams: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def add(self, path: str, c: int, row: dict[str, float]) -> None:
        self.runs.setdefault(path, {}).setdefault(c, []).append(row)


def register_overhead(sub: Any) -> None:
    p = sub.add_parser("overhead", help="added latency of expertgate vs a bare pass-through "
                       "and the LiteLLM proxy, against a fast local upstream")
    p.add_argument("--json", type=Path, help="write all figures to this JSON file")
    p.add_argument("--plot", type=Path, help="write a PNG of added latency and throughput")
    p.add_argument("--requests", type=int, default=2000,
                   help="requests per run for the fast paths (default 2000)")
    p.add_argument("--miss-requests", type=int, default=400,
                   help="requests per run for routed_miss (each one embeds; default 400)")
    p.add_argument("--litellm-requests", type=int, default=400,
                   help="requests per run for litellm (~100 req/s; default 400)")
    p.add_argument("--stream-requests", type=int, default=100,
                   help="streamed requests per path and round for time to first byte "
                   "(default 100)")
    p.add_argument("--concurrency", default="1,16,64",
                   help="comma-separated concurrency levels (default 1,16,64)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--skip-litellm", action="store_true", help="leave out the LiteLLM proxy")
    p.add_argument("--artifact", type=Path, default=None,
                   help="a trained router artifact (expertgate train --out; trained with "
                   "--embedder): path routed_learned times routed_miss's requests through a "
                   "policy that serves it")
    p.add_argument("--paths", default=None,
                   help="comma-separated paths to measure (default all: "
                   f"{','.join(PATHS)}); direct, the baseline, is always measured")
    p.add_argument("--embedder", default="onnx", choices=EMBEDDER_KINDS,
                   help="the gateway's embedder for the routed paths (default onnx; "
                   "distilled needs 'expertgate embedder distill' once)")
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="make every distinct routed prompt this many MiniLM tokens long (a "
                   "fixed text follows the short question; >= 32); default 0: the short "
                   "questions alone (15-30 tokens)")
    p.set_defaults(func=cmd_overhead)


def prompt_suffix(n_tokens: int) -> tuple[str, int]:
    """A fixed text that brings :func:`distinct_prompt` to about ``n_tokens`` MiniLM
    WordPiece tokens, and the token count of a sample prompt with it (the sequence number in
    a prompt varies in length, so counts differ by a token or two)."""
    from expertgate.bench.load import distinct_prompt
    from expertgate.bench.router import length_prompts, minilm_tokenizer

    tok = minilm_tokenizer()
    sample = distinct_prompt("run0000-r0-c1", 100)

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    suffix = length_prompts(max(n_tokens - count(sample), 1), 1)[0]
    return suffix, count(distinct_prompt("run0000-r0-c1", 100, suffix))


def _fixed_body(model: str, text: str = "Say hello.", stream: bool = False) -> bytes:
    d: dict[str, Any] = {"model": model, "max_tokens": 16,
                         "messages": [{"role": "user", "content": text}]}
    if stream:
        d["stream"] = True
    return json.dumps(d, separators=(",", ":")).encode()


def _probe_embedder(embedder: str) -> Any:
    from routers.embed import make_embedder

    return make_embedder(embedder, **({"threads": 1} if embedder in ("onnx", "minilm") else {}))


def _single_embed_probe(embedder: str) -> Callable[[], dict[str, float]] | None:
    """A function timing one-at-a-time embedding (the rate it allows: 1 / p50)."""
    if embedder not in ("onnx", "distilled"):
        return None
    import numpy as np

    from expertgate.bench.load import distinct_prompt

    e = _probe_embedder(embedder)
    calls = iter(range(10**9))

    def probe() -> dict[str, float]:
        ts = []
        for _ in range(120):
            text = distinct_prompt("single", next(calls))
            t = time.perf_counter()
            e.embed([text])
            ts.append((time.perf_counter() - t) * 1e3)
        p50 = float(np.percentile(ts[20:], 50))
        return {"p50_ms": p50, "p99_ms": float(np.percentile(ts[20:], 99)), "rps": 1000.0 / p50}

    return probe


def embed_by_length(embedder: str, repeats: int = 100) -> dict[str, Any]:
    """The gateway embedder's one-query latency per prompt length (8/40/128/512 tokens) and
    a whole decision with it (embed + the ``irt`` router), as ``bench router`` measures."""
    from expertgate.bench.router import bench_lengths

    return bench_lengths({embedder: _probe_embedder(embedder)}, repeats)[embedder]


_ERROR_SAMPLES: dict[str, list[str]] = {}


def learnloop_costs(config: dict[str, Any], embedder: str, n: int = 300) -> dict[str, float]:
    """In-process time (µs per request, median) of what exploration and a shadow add, beside
    the decision they follow: ``Pipeline.explore`` on a decision of the exploring policy, and
    the shadow's work (its cache lookup and router decision on the served request's
    embedding, and its log record) — the same code the gateway runs, without the network
    noise that dominates the end-to-end paths on a shared machine."""
    import asyncio

    import orjson

    from expertgate.bench.load import distinct_prompt
    from gateway.cache import MemoryDecisionCache
    from gateway.config import parse_config
    from gateway.metrics import Metrics
    from gateway.pipeline import Pipeline, build_policy_set
    from routers.embed import make_embedder

    emb = make_embedder(embedder, **({"threads": 1} if embedder in ("onnx", "minilm") else {}))
    pset = build_policy_set(parse_config(config, "bench"), emb)
    pipe = Pipeline(pset, emb, MemoryDecisionCache(), Metrics())
    ex, sh = pset.policies[EXPLORE_POLICY], pset.policies[SHADOW_POLICY]
    assert sh.candidate is not None
    crt = sh.candidate.runtime

    async def run() -> dict[str, list[float]]:
        t: dict[str, list[float]] = {"decide_miss": [], "explore": [], "shadow": []}
        for i in range(n):
            text = distinct_prompt("learnloop", i)
            got: list[Any] = []
            t0 = time.perf_counter()
            d = await pipe.decide(ex, text, [], emb_out=got)
            t1 = time.perf_counter()
            pipe.explore(ex, d)
            t2 = time.perf_counter()
            sd = await pipe.decide(crt, text, [], embedding=got[0])
            orjson.dumps({"endpoint": "shadow", "expert": sd.expert, "served_expert": d.expert,
                          "reason": sd.reason, "targets": [x.expert for x in sd.targets]})
            t3 = time.perf_counter()
            for k, v in (("decide_miss", t1 - t0), ("explore", t2 - t1), ("shadow", t3 - t2)):
                t[k].append(v * 1e6)
        return t

    t = asyncio.run(run())
    pipe.close()
    return {f"{k}_us_p50": round(statistics.median(v[20:]), 2) for k, v in t.items()}


def _measure(t: _Target, c: int, prefix: str) -> dict[str, float]:
    pids = t.pids()
    cpu0 = cpu_seconds(pids)
    r = run_wrk(t.url, n=t.requests, concurrency=c, body=t.body, model=t.model, prefix=prefix,
                headers=t.headers, suffix=t.suffix)
    cpu1 = cpu_seconds(pids)
    if r.error_samples:
        kept = _ERROR_SAMPLES.setdefault(t.path, [])
        kept.extend(f"c{c}: {e[:300]}" for e in r.error_samples[: max(0, 5 - len(kept))])
        print(f"  {t.path} c{c}: {r.errors} error(s), e.g. {r.error_samples[0][:300]}",
              file=sys.stderr)
    row = r.to_dict()
    row["cpu_ms_per_req"] = (cpu1 - cpu0) * 1e3 / max(r.requests, 1)
    row["rss_mib"] = rss_bytes(t.pids()) / 2**20
    return row


def _median(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return float(statistics.median(vals)) if vals else float("nan")


def _aggregate(rows: _Rows) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, by_c in rows.runs.items():
        out[path] = {}
        for c, rs in sorted(by_c.items()):
            agg: dict[str, float] = {k: round(_median(rs, k), 4) for k in (
                "p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "rps", "cpu_ms_per_req",
                "rss_mib", "added_p50_ms", "added_p90_ms", "added_p99_ms")}
            agg["errors"] = int(sum(r["errors"] for r in rs))
            agg["requests"] = int(sum(r["requests"] for r in rs))
            agg["rounds"] = len(rs)
            out[path][f"c{c}"] = agg
    return out


def _ratio(num: float, den: float) -> float:
    return num / max(den, _MIN_ADDED_MS)


def format_ratio_lines(paths: dict[str, Any], concs: list[int]) -> list[str]:
    """The two summary lines: expertgate/floor and litellm/expertgate added-p99 ratios."""

    def line(label: str, num: str, den: str) -> str:
        parts = []
        for c in concs:
            a = paths.get(num, {}).get(f"c{c}", {}).get("added_p99_ms")
            b = paths.get(den, {}).get(f"c{c}", {}).get("added_p99_ms")
            parts.append(f"c{c}=" + ("n/a" if a is None or b is None else f"{_ratio(a, b):.2f}"))
        return f"p99 added latency, {label}: " + " ".join(parts)

    return [line("expertgate/floor", "passthrough", "floor"),
            line("litellm/expertgate", "litellm", "passthrough")]


def _per_round(rows: _Rows, concs: list[int]) -> dict[str, dict[str, list[float]]]:
    """Issue 16's ratios round by round (its p99 targets hold "in three runs out of three";
    the paths' figures are medians over rounds): added p99 passthrough/floor and
    litellm/passthrough per concurrency, and req/s passthrough/floor."""

    def ratios(num: str, den: str, key: str, c: int) -> list[float]:
        a, b = rows.runs.get(num, {}).get(c, []), rows.runs.get(den, {}).get(c, [])
        return [round(_ratio(x[key], y[key]), 3) for x, y in zip(a, b, strict=False)]

    out: dict[str, dict[str, list[float]]] = {
        "passthrough_floor_added_p99": {}, "litellm_passthrough_added_p99": {},
        "passthrough_floor_rps": {}}
    for c in concs:
        out["passthrough_floor_added_p99"][f"c{c}"] = ratios("passthrough", "floor",
                                                             "added_p99_ms", c)
        out["litellm_passthrough_added_p99"][f"c{c}"] = ratios("litellm", "passthrough",
                                                               "added_p99_ms", c)
        out["passthrough_floor_rps"][f"c{c}"] = ratios("passthrough", "floor", "rps", c)
    return out


def _targets(paths: dict[str, Any], concs: list[int], single: dict[str, float] | None,
             streams: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    t: list[dict[str, Any]] = []

    def get(path: str, c: int, key: str) -> float | None:
        v = paths.get(path, {}).get(f"c{c}", {}).get(key)
        return None if v is None else float(v)

    def add(name: str, value: float | None, ok: Callable[[float], bool], goal: str) -> None:
        t.append({"target": name, "goal": goal,
                  "value": None if value is None else round(value, 3),
                  "met": None if value is None else bool(ok(value))})

    for c in concs:
        a, b = get("passthrough", c, "added_p99_ms"), get("floor", c, "added_p99_ms")
        add(f"passthrough added p99 / floor added p99 at c{c}",
            None if a is None or b is None else _ratio(a, b), lambda v: v <= 2.0, "<= 2")
    if 1 in concs:
        add("passthrough added p50 at c1 (ms)", get("passthrough", 1, "added_p50_ms"),
            lambda v: v < 0.5, "< 0.5")
    for c in concs:
        a, b = get("litellm", c, "added_p99_ms"), get("passthrough", c, "added_p99_ms")
        need = 5.0 if c == 1 else 20.0
        add(f"litellm added p99 / passthrough added p99 at c{c}",
            None if a is None or b is None else _ratio(a, b),
            functools.partial(operator.le, need), f">= {need:g}")
    rps = [v for c in concs if (v := get("passthrough", c, "rps")) is not None]
    add("passthrough req/s (best concurrency, 1 worker)", max(rps) if rps else None,
        lambda v: v >= 2000, ">= 2000")
    floor_rps = [v for c in concs if (v := get("floor", c, "rps")) is not None]
    # issue 16: one worker's throughput against the aiohttp floor's, in the same run
    add("passthrough req/s / floor req/s (best concurrency each)",
        _ratio(max(rps), max(floor_rps)) if rps and floor_rps else None,
        lambda v: v >= 0.8, ">= 0.8")
    if 1 in concs:
        add("routed_miss added p50 at c1 (ms)", get("routed_miss", 1, "added_p50_ms"),
            lambda v: v <= 4.0, "<= 4")
        add("routed_miss added p99 at c1 (ms)", get("routed_miss", 1, "added_p99_ms"),
            lambda v: v <= 10.0, "<= 10")
        add("routed_hit added p50 at c1 (ms)", get("routed_hit", 1, "added_p50_ms"),
            lambda v: v < 0.5, "< 0.5")
    for c in concs:
        base = get("routed_miss", c, "added_p50_ms")
        for path in ("routed_explore", "routed_shadow"):
            a = get(path, c, "added_p50_ms")
            add(f"{path} added p50 / routed_miss added p50 at c{c}",
                None if a is None or base is None else _ratio(a, base),
                lambda v: v <= 1.1, "<= 1.1")
    if 16 in concs and single is not None:
        r = get("routed_miss", 16, "rps")
        add("routed_miss req/s at c16 / one-at-a-time embedding req/s",
            None if r is None else r / single["rps"], lambda v: v >= 3.0, ">= 3")
    errs = sum(int(v.get("errors", 0)) for p in paths.values() for v in p.values())
    errs += sum(int(v.get("errors", 0)) for v in (streams or {}).values())
    add("errors (all paths and streams, all runs)", float(errs), lambda v: v == 0, "== 0")
    return t


def _plot(paths: dict[str, Any], concs: list[int], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    # one fixed colour per path in every panel (direct has no "added" curve)
    colour = {p: f"C{i}" for i, p in enumerate(PATHS)}
    for path in PATHS:
        if path not in paths:
            continue
        cs = [c for c in concs if f"c{c}" in paths[path]]
        if path != "direct":
            for ax, key in zip(axes[:2], ("added_p50_ms", "added_p99_ms"), strict=True):
                ax.plot(cs, [max(paths[path][f"c{c}"][key], _MIN_ADDED_MS) for c in cs],
                        "o-", color=colour[path], label=path)
        axes[2].plot(cs, [paths[path][f"c{c}"]["rps"] for c in cs], "o-",
                     color=colour[path], label=path)
    for ax, ttl in zip(axes, ("added latency p50 (ms)", "added latency p99 (ms)",
                              "throughput (req/s)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(concs, [str(c) for c in concs])
        ax.set_xlabel("concurrency")
        ax.set_title(ttl)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _print_table(paths: dict[str, Any], streams: dict[str, Any]) -> None:
    print(f"{'path':<14} {'conc':>4} {'p50':>8} {'p99':>8} {'+p50':>8} {'+p90':>8} "
          f"{'+p99':>8} {'req/s':>8} {'err':>4} {'cpu/req':>8} {'rss':>7}")
    for path in PATHS:
        for ck, v in paths.get(path, {}).items():
            print(f"{path:<14} {ck[1:]:>4} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} "
                  f"{v['added_p50_ms']:8.3f} {v['added_p90_ms']:8.3f} {v['added_p99_ms']:8.3f} "
                  f"{v['rps']:8.0f} {v['errors']:4d} {v['cpu_ms_per_req']:7.3f}m "
                  f"{v['rss_mib']:6.0f}M")
    if streams:
        print("streams at c1 (ms): time to first byte p50/p99, added p50/p99")
        for path, v in streams.items():
            print(f"  {path:<12} ttfb {v['ttfb_p50_ms']:.3f}/{v['ttfb_p99_ms']:.3f}  "
                  f"added {v['added_ttfb_p50_ms']:.3f}/{v['added_ttfb_p99_ms']:.3f}  "
                  f"errors {v['errors']}")


def _gateway_body_limit() -> int:
    """The body limit of the gateway under test: it starts with this environment."""
    from pydantic import ValidationError

    from gateway.config import Settings

    try:
        return int(Settings().max_body_bytes)
    except ValidationError:  # another setting refused: the gateway says so when it starts
        return int(Settings.model_fields["max_body_bytes"].default)


def _embedder_problem(kind: str) -> str | None:
    """Why the gateway under test could not build the ``kind`` embedder (said after the
    upstream and the floor started, exit 1, before); None when it can."""
    if kind == "static":
        return ("--embedder static needs a model2vec folder, which bench overhead has no "
                "flag for; use --embedder distilled (the project's static vectors)")
    if kind == "distilled":
        from routers.embed import EmbedderError
        from routers.embed_static import DistilledEmbedder

        try:
            DistilledEmbedder()
        except EmbedderError as e:
            return str(e)
    return None


def _artifact_problem(artifact: Path, embedder: str) -> str | None:
    """Why the gateway under test could not serve ``artifact`` with the ``embedder`` kind
    (it would fail its start, after the upstream and the floor started); None when it
    may. The kind is compared where the artifact records how to build its embedder."""
    from routers.artifacts import read_manifest
    from routers.base import RouterError

    try:
        m = read_manifest(artifact)
    except RouterError as e:
        return str(e)
    spec = m.get("embedder_spec")
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind and kind != embedder:
        return (f"{artifact} was trained with the {kind} embedder and the gateway under test "
                f"embeds with {embedder}: give --embedder {kind}")
    return None


def cmd_overhead(args: argparse.Namespace) -> int:
    try:
        concs = sorted({int(x) for x in str(args.concurrency).split(",") if x.strip()})
    except ValueError:
        concs = []
    if args.artifact is not None:
        # the gateway under test runs in a scratch folder: a relative path is the caller's
        args.artifact = args.artifact.expanduser().absolute()
        if not args.artifact.is_dir():
            print(f"bench overhead: --artifact {args.artifact} is not a folder",
                  file=sys.stderr)
            return 2
        bad = _artifact_problem(args.artifact, args.embedder)
        if bad:
            print(f"bench overhead: --artifact {bad}", file=sys.stderr)
            return 2
    if not concs or min(concs) < 1:
        print("bench overhead: --concurrency needs positive integers", file=sys.stderr)
        return 2
    bad = _embedder_problem(args.embedder)
    if bad:
        print(f"bench overhead: {bad}", file=sys.stderr)
        return 2
    if args.plot is not None and args.plot.suffix:
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        if args.plot.suffix[1:].lower() not in kinds:  # else savefig fails after the run
            print(f"bench overhead: --plot {args.plot}: matplotlib writes no "
                  f"{args.plot.suffix} files; name a .png (or {', '.join(sorted(kinds))})",
                  file=sys.stderr)
            return 2
    import shutil

    if shutil.which("wrk") is None:  # else said by the first warm-up, the servers started
        print("bench overhead: wrk is not installed (Debian: apt-get install wrk): it "
              "generates the load", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.requests < max(concs):
        print("bench overhead: need --rounds >= 1 and --requests >= the largest concurrency",
              file=sys.stderr)
        return 2
    if args.stream_requests < 1:  # its percentiles come last: a run of minutes, then lost
        print(f"bench overhead: --stream-requests must be at least 1, not "
              f"{args.stream_requests}", file=sys.stderr)
        return 2
    for flag, n in (("--miss-requests", args.miss_requests),
                    ("--litellm-requests", args.litellm_requests)):
        if n < 1:  # was replaced by the largest concurrency, and recorded as given
            print(f"bench overhead: {flag} must be at least 1, not {n}", file=sys.stderr)
            return 2
    fds = open_files_limit()
    if fds is not None and max(concs) + FDS_BESIDE > fds:
        print(f"bench overhead: --concurrency {max(concs)} needs as many connections open in "
              f"the load generator and in the server under test, and this shell allows "
              f"{fds} open files (ulimit -n): raise it or give at most "
              f"{max(fds - FDS_BESIDE, 1)}", file=sys.stderr)
        return 2
    if args.prompt_tokens and args.prompt_tokens < 32:
        print("bench overhead: --prompt-tokens needs 0 (short questions) or at least 32",
              file=sys.stderr)
        return 2
    limit = _gateway_body_limit()
    if args.prompt_tokens > limit:  # a token is at least a byte: no need to build it
        print(f"bench overhead: --prompt-tokens {args.prompt_tokens} makes requests over the "
              f"gateway's body limit (max_body_bytes {limit}): every routed request would "
              "be refused", file=sys.stderr)
        return 2
    keep = None if not args.paths else {x.strip() for x in str(args.paths).split(",")
                                        if x.strip()}
    if keep is not None and not keep <= set(PATHS):
        print(f"bench overhead: unknown path(s) {', '.join(sorted(keep - set(PATHS)))}; "
              f"use {', '.join(PATHS)}", file=sys.stderr)
        return 2
    suffix, sample_tokens = prompt_suffix(args.prompt_tokens) if args.prompt_tokens else ("", 0)
    size = len(_fixed_body(ROUTED_POLICY, distinct_prompt("run0000-r0-c1", 10**6, suffix)))
    if size > limit:
        print(f"bench overhead: --prompt-tokens {args.prompt_tokens} makes request bodies of "
              f"{size} bytes, over the gateway's body limit (max_body_bytes {limit}): every "
              "routed request would be refused; give fewer tokens or raise "
              "EXPERTGATE_MAX_BODY_BYTES", file=sys.stderr)
        return 2
    machine = machine_info()
    skipped: dict[str, str] = {}
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="expertgate-bench-") as tmpd, \
            contextlib.ExitStack() as stack:
        tmp = Path(tmpd)
        try:
            stub = stack.enter_context(UpstreamStub())
        except StubError as e:
            print(f"bench overhead: {e}", file=sys.stderr)
            return 2
        targets: dict[str, _Target] = {}
        stream_targets: dict[str, tuple[str, bytes, dict[str, str]]] = {}
        n, miss_n = args.requests, max(args.miss_requests, max(concs))
        targets["direct"] = _Target("direct", stub.base_url + "/chat/completions",
                                    _fixed_body("stub"), "stub", stub.pids, n)
        stream_targets["direct"] = (stub.sse_base_url + "/chat/completions",
                                    _fixed_body("stub", stream=True), {})
        servers: list[Server] = []
        try:
            floor = stack.enter_context(start_floor(stub, tmp))
            servers.append(floor)
            targets["floor"] = _Target("floor", floor.url + "/v1/chat/completions",
                                       _fixed_body("stub"), "stub", floor.pids, n)
            stream_targets["floor"] = (floor.url + "/sse/v1/chat/completions",
                                       _fixed_body("stub", stream=True), {})
            why = gateway_available()
            if why is None:
                shadow = shadow_artifact(tmp, args.embedder)
                gw = stack.enter_context(start_expertgate(stub, tmp, embedder=args.embedder,
                                                          shadow=shadow,
                                                          learned=args.artifact))
                servers.append(gw)
                url = gw.url + "/v1/chat/completions"
                targets["passthrough"] = _Target("passthrough", url, _fixed_body("stub"),
                                                  "stub", gw.pids, n)
                targets["routed_miss"] = _Target("routed_miss", url, None, ROUTED_POLICY,
                                                  gw.pids, miss_n, suffix=suffix)
                targets["routed_explore"] = _Target("routed_explore", url, None,
                                                     EXPLORE_POLICY, gw.pids, miss_n,
                                                     suffix=suffix)
                targets["routed_shadow"] = _Target("routed_shadow", url, None, SHADOW_POLICY,
                                                    gw.pids, miss_n, suffix=suffix)
                if args.artifact is not None:
                    targets["routed_learned"] = _Target("routed_learned", url, None,
                                                         LEARNED_POLICY, gw.pids, miss_n,
                                                         suffix=suffix)
                else:
                    skipped["routed_learned"] = "no --artifact"
                targets["routed_hit"] = _Target(
                    "routed_hit", url, _fixed_body(ROUTED_POLICY, "Explain the French "
                                                   "Revolution in two sentences."),
                    ROUTED_POLICY, gw.pids, n)
                stream_targets["passthrough"] = (url, _fixed_body("stub-sse", stream=True), {})
            else:
                for p in _EXPERTGATE_PATHS:
                    skipped[p] = why
                print(f"bench overhead: skipping expertgate paths: {why}", file=sys.stderr)
            if args.skip_litellm or (keep is not None and "litellm" not in keep):
                skipped["litellm"] = "--skip-litellm" if args.skip_litellm else "--paths"
            else:
                lt = stack.enter_context(start_litellm(stub, tmp))
                servers.append(lt)
                url = lt.url + "/v1/chat/completions"
                targets["litellm"] = _Target("litellm", url, _fixed_body("stub"), "stub",
                                             lt.pids, max(args.litellm_requests, max(concs)),
                                             lt.headers)
                stream_targets["litellm"] = (url, _fixed_body("stub-sse", stream=True),
                                             lt.headers)
        except ServerError as e:
            print(f"bench overhead: {e}", file=sys.stderr)
            return 1
        if keep is not None:  # a shorter run over the paths in question, in the same rounds
            for p in set(targets) - keep - {"direct"}:
                del targets[p]
                stream_targets.pop(p, None)
                skipped[p] = "--paths"

        print(f"bench overhead: stub {stub.base_url}; paths {', '.join(targets)}; "
              f"concurrency {concs}; {args.rounds} round(s)", file=sys.stderr)
        # warm-up: first requests pay lazy imports, connection set-up, first-use allocations;
        # at the largest concurrency, so every path's connection pools already hold what the
        # measured runs use (warmed at 16 only, the first c=64 run of each path opened its
        # other 48 connections inside its measured window)
        c_warm = max(concs)
        for name, t in targets.items():
            warm = _Target(t.path, t.url, t.body, t.model, t.pids,
                           min(t.requests, max(200, 4 * c_warm)), t.headers, t.suffix)
            try:
                _measure(warm, c_warm, f"warm-{run_id}")
            except LoadError as e:
                print(f"bench overhead: warm-up of {name} failed: {e}", file=sys.stderr)
                return 1

        rows = _Rows()
        singles: list[dict[str, float]] = []
        order = list(targets)
        probe = _single_embed_probe(args.embedder) if "routed_miss" in targets else None
        by_length = embed_by_length(args.embedder) if "routed_miss" in targets else None
        try:
            for rnd in range(args.rounds):
                if probe is not None:
                    singles.append(probe())
                for c in concs:
                    k = (rnd + concs.index(c)) % len(order)
                    rotated = order[k:] + order[:k]
                    for name in rotated:
                        row = _measure(targets[name], c, f"{run_id}-r{rnd}-c{c}")
                        rows.add(name, c, row)
                        print(f"  round {rnd + 1} c{c:<3} {name:<12} p50 {row['p50_ms']:8.3f} "
                              f"p99 {row['p99_ms']:8.3f} ms  {row['rps']:8.0f} req/s  "
                              f"errors {row['errors']}", file=sys.stderr)
                    base = rows.runs["direct"][c][-1]
                    for name in rotated:
                        r = rows.runs[name][c][-1]
                        for q in ("p50", "p90", "p99"):
                            r[f"added_{q}_ms"] = r[f"{q}_ms"] - base[f"{q}_ms"]
                for name, (url, body, hdrs) in stream_targets.items():
                    rows.streams.setdefault(name, []).append(
                        stream_ttfb(url, body, args.stream_requests, headers=hdrs))
        except LoadError as e:
            print(f"bench overhead: {e}", file=sys.stderr)
            for s in servers:
                print(f"--- {s.name} log tail ---\n{s.log_tail(1500)}", file=sys.stderr)
            return 1
        rss = {s.name: round(rss_bytes(s.pids()) / 2**20, 1) for s in servers}
        rss["stub"] = round(rss_bytes(stub.pids()) / 2**20, 1)
        costs = None
        if "routed_shadow" in targets:  # while the shadow artifact still exists
            costs = learnloop_costs(expertgate_config(stub, embedder=args.embedder,
                                                      shadow=shadow), args.embedder)

    paths = _aggregate(rows)
    streams: dict[str, Any] = {}
    direct_streams = rows.streams["direct"]
    for name, rs in rows.streams.items():
        added50 = [r["ttfb_p50_ms"] - b["ttfb_p50_ms"]
                   for r, b in zip(rs, direct_streams, strict=True)]
        added99 = [r["ttfb_p99_ms"] - b["ttfb_p99_ms"]
                   for r, b in zip(rs, direct_streams, strict=True)]
        streams[name] = {"ttfb_p50_ms": round(_median(rs, "ttfb_p50_ms"), 4),
                         "ttfb_p99_ms": round(_median(rs, "ttfb_p99_ms"), 4),
                         "added_ttfb_p50_ms": round(statistics.median(added50), 4),
                         "added_ttfb_p99_ms": round(statistics.median(added99), 4),
                         "errors": int(sum(r["errors"] for r in rs))}
    single = None
    if singles:
        single = {k: round(statistics.median(s[k] for s in singles), 4) for k in singles[0]}
    machine["loadavg_end"] = list(os.getloadavg())
    targets_out = _targets(paths, concs, single, streams)
    ratio_lines = format_ratio_lines(paths, concs)
    per_round = _per_round(rows, concs)
    from evals.provenance import git_state

    result = {"benchmark": "overhead", "machine": machine, "git": git_state(),
              "command": " ".join(["expertgate", *sys.argv[1:]]),
              "params": {"concurrency": concs, "rounds": args.rounds, "requests": args.requests,
                         "miss_requests": args.miss_requests,
                         "litellm_requests": args.litellm_requests,
                         "stream_requests": args.stream_requests, "embedder": args.embedder,
                         "paths": sorted(keep | {"direct"}) if keep is not None else None,
                         "prompt_tokens": args.prompt_tokens or None,
                         "prompt_tokens_sample": sample_tokens or None,
                         "load_generator": "wrk -t1 (closed loop), one Lua-built body per "
                                           "request"},
              "paths": paths, "streams": streams, "rss_mib": rss,
              "single_embed": single, "embed_by_length": by_length,
              "learnloop_costs": costs,
              "targets": targets_out, "per_round": per_round, "skipped": skipped,
              "error_samples": dict(_ERROR_SAMPLES),
              "summary": ratio_lines}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        _plot(paths, concs, args.plot,
              f"expertgate overhead vs direct upstream — {machine['cores']} cores, "
              f"{machine['date_utc']} (shared machine: noisy; ratios within a run)")
    _print_table(paths, streams)
    print("RSS after the run (MiB): " + ", ".join(f"{k} {v:g}" for k, v in rss.items()))
    if costs is not None:
        print(f"in process, per request (µs, p50): decision on a cache miss "
              f"{costs['decide_miss_us_p50']:.0f}, exploration {costs['explore_us_p50']:.1f}, "
              f"shadow decision + record {costs['shadow_us_p50']:.1f}")
    if single is not None:
        print(f"one-at-a-time embedding: p50 {single['p50_ms']:.2f} ms -> "
              f"{single['rps']:.0f} req/s")
    for n_tok, row in (by_length or {}).items():
        print(f"{args.embedder} at {n_tok:>3} tokens: embed p50 {row['embed']['p50_ms']:.3f} / "
              f"p99 {row['embed']['p99_ms']:.3f} ms; decision (embed + irt) p50 "
              f"{row['decision']['p50_ms']:.3f} / p99 {row['decision']['p99_ms']:.3f} ms")
    for path, why in skipped.items():
        print(f"skipped {path}: {why}")
    for tgt in targets_out:
        mark = {True: "MET", False: "NOT MET", None: "n/a"}[tgt["met"]]
        print(f"target {tgt['target']}: {tgt['value']} (goal {tgt['goal']}) {mark}")
    for line in ratio_lines:
        print(line)
    return 0
