"""Bounded soak: steady load through a real gateway process; RSS and open fds must not grow.

``expertgate bench soak --minutes 3`` (or ``python -m expertgate.bench.soak --minutes 3``) starts an
OpenAI-compatible upstream (aiohttp, in this process), a real ``expertgate serve`` subprocess
in front of it (optionally with its own ``redis-server``), and drives a steady closed-loop
load (``--concurrency`` clients, routed and explicit requests, streaming and not, a few with
errors) for the given minutes. Every ``--sample-s`` seconds it reads the gateway's RSS
(``VmRSS`` in ``/proc/PID/status``) and its open file descriptors (``/proc/PID/fd``).

Each sample also sorts the fds by kind (:func:`proc_fd_kinds`): client connections, the
upstream and Redis pools' connections, everything else. After the warm-up (the first
``--warmup-frac`` of the run, where caches, pools and allocator arenas fill), the verdict
compares the median of the last three samples with the median of the first three: RSS growth
must stay under ``--max-rss-growth`` (10%), the fds that are not pooled connections must not
grow, and no pool may ever hold more connections than the load can keep busy at once
(:func:`pool_bounds`; a pool opening one more connection when requests coincide is not a
leak, a pool that outgrows the load is).
It prints the figures and writes them as JSON (``--out``) with the commit, dirty flag, package
versions and command of the run.

The processes come from :mod:`expertgate.procs` and the upstream is the tests' double
(:mod:`expertgate.bench.upstream_double`); each is stopped by the PID this run started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "cli_register_soak",
    "main",
    "pool_bounds",
    "proc_fd_kinds",
    "proc_fds",
    "proc_rss_kib",
    "run_soak",
    "soak_config",
]


def proc_rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` (from /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _tcp_ports(pid: int) -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port) for the TCP sockets in ``pid``'s namespace."""
    out: dict[str, tuple[int, int]] = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                f = line.split()
                out[f[9]] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16))
    return out


def proc_fd_kinds(pid: int, *, own_port: int, pools: dict[str, int]) -> dict[str, int]:
    """``pid``'s open fds by kind: ``clients`` (TCP connections to ``own_port``), one count per
    pool in ``pools`` (name -> the remote port its connections go to: upstream, Redis),
    ``listen`` (sockets listening on ``own_port``), ``other`` (everything else: files, pipes,
    epoll, other sockets). Pools and client connections are bounded by the load's concurrency;
    ``other`` must not grow at all."""
    ports = _tcp_ports(pid)
    by_remote = {port: name for name, port in pools.items()}
    kinds = dict.fromkeys(["clients", *pools, "listen", "other"], 0)
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed between listdir and readlink
            continue
        local, remote = ports.get(target[8:-1], (0, -1)) if target.startswith("socket:") \
            else (0, -1)
        if local == own_port:
            kinds["listen" if remote == 0 else "clients"] += 1
        elif remote in by_remote:
            kinds[by_remote[remote]] += 1
        else:
            kinds["other"] += 1
    return kinds


def pool_bounds(concurrency: int, *, with_redis: bool) -> dict[str, int]:
    """The most connections each pool may hold under ``concurrency`` closed-loop clients:
    one client connection and one upstream call per client; on Redis, a request's commands
    and the rate limiter's reconciliation of the request before it (run after the response)
    per client, plus the gateway's two background users (the API-key refresh and the
    routing-log writer)."""
    bounds = {"clients": concurrency, "upstream": concurrency}
    if with_redis:
        bounds["redis"] = 2 * concurrency + 2
    return bounds


# --------------------------------------------------------------------------- upstream


def soak_config(upstream: str, *, rpm: int | None = None) -> dict[str, Any]:
    """Two experts on ``upstream`` and one routed policy (hashing embedder: no model files)."""
    cfg: dict[str, Any] = {
        "embedder": {"kind": "hashing", "micro_batch": False},
        "experts": [{"name": "coder", "api_base": upstream, "timeout_s": 10},
                    {"name": "chatter", "api_base": upstream, "timeout_s": 10}],
        "policies": [{"name": "auto", "params": {"threshold": 0.05}, "fallback": ["chatter"],
                      "routes": [
                          {"name": "code", "expert": "coder",
                           "examples": ["write a python function", "fix this bug"]},
                          {"name": "chat", "expert": "chatter",
                           "examples": ["tell me a joke", "how are you today"]}]}],
    }
    if rpm is not None:
        from gateway.auth import hash_key

        # every expert by name ("*"), so the unknown model of the load is a 404, not a 403
        cfg["api_keys"] = [{"name": "soak", "sha256": hash_key("sk-soak"), "experts": ["*"],
                            "requests_per_minute": rpm}]
    return cfg


_TEXTS = ["fix this bug in my code", "tell me a joke", "write a python function for sorting",
          "how are you today", "refactor this class"]


async def _load(url: str, concurrency: int, end: float, counts: dict[str, int]) -> None:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                # distinct texts now and then: the decision cache sees misses, not only hits
                text = f"{_TEXTS[i % len(_TEXTS)]} {i % 50 if i % 7 == 0 else ''}".strip()
                model = "auto" if i % 4 else "coder"
                body: dict[str, Any] = {"model": model,
                                        "messages": [{"role": "user", "content": text}],
                                        "stream": i % 5 == 0, "max_tokens": 16}
                if i % 97 == 0:
                    body = {"model": "no-such-model", "messages": body["messages"]}
                try:
                    async with s.post(url + "/v1/chat/completions", json=body,
                                      headers={"authorization": "Bearer sk-soak"}) as r:
                        await r.read()
                        key = "ok" if r.status == 200 else f"http_{r.status}"
                except (aiohttp.ClientError, TimeoutError) as e:
                    key = type(e).__name__
                counts[key] = counts.get(key, 0) + 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))


async def run_soak(minutes: float = 3.0, *, concurrency: int = 8, sample_s: float = 5.0,
                   warmup_frac: float = 0.25, with_redis: bool = False,
                   max_rss_growth: float = 0.10, workdir: Path | None = None
                   ) -> dict[str, Any]:
    """Run the soak; returns the samples, the counts and the verdict."""
    import yaml

    from expertgate.bench.upstream_double import OpenAIUpstreamDouble
    from expertgate.procs import GatewayServer, RedisServer

    tmp = Path(workdir or tempfile.mkdtemp(prefix="expertgate-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    up = await OpenAIUpstreamDouble("soak", record=False).start()
    cfg_path = tmp / "soak.yaml"
    # the limit is far above the load: the soak exercises the rate limiter, never trips it
    cfg_path.write_text(yaml.safe_dump(soak_config(up.base, rpm=10_000_000)))
    redis = RedisServer(log_path=tmp / "redis.log").start() if with_redis else None
    gw = GatewayServer(cfg_path, redis_url=redis.url if redis else None,
                       routing_log=tmp / "routing-log.jsonl", log_path=tmp / "gateway.out",
                       check_upstreams=False)
    samples: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    t_start = time.monotonic()
    duration = minutes * 60
    try:
        gw.start()
        assert gw.pid is not None
        pid = gw.pid
        end = t_start + duration
        pools = {"upstream": up.port, **({"redis": redis.port} if redis else {})}

        def sample() -> dict[str, Any]:
            return {"t_s": round(time.monotonic() - t_start, 1), "rss_kib": proc_rss_kib(pid),
                    "fds": proc_fds(pid), "requests": sum(counts.values()),
                    "fd_kinds": proc_fd_kinds(pid, own_port=gw.port, pools=pools)}

        load = asyncio.ensure_future(_load(gw.url, concurrency, end, counts))
        while not load.done():
            samples.append(sample())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(load), sample_s)
        await load
        samples.append(sample())
    finally:
        gw.stop()
        if redis is not None:
            redis.stop()
        await up.stop()
    after = [s for s in samples if s["t_s"] >= warmup_frac * duration]
    if len(after) < MIN_SAMPLES:
        raise RuntimeError(f"too few samples after warm-up ({len(after)}): run longer or "
                           "sample more often")
    rss0 = statistics.median(s["rss_kib"] for s in after[:3])
    rss1 = statistics.median(s["rss_kib"] for s in after[-3:])
    fd0 = statistics.median(s["fds"] for s in after[:3])
    fd1 = statistics.median(s["fds"] for s in after[-3:])
    # a pool that opens one more connection when requests happen to coincide is not a leak; a
    # leak is an fd that is not a pooled connection, or a pool outgrowing the load's concurrency
    other0 = statistics.median(s["fd_kinds"]["other"] for s in after[:3])
    other1 = statistics.median(s["fd_kinds"]["other"] for s in after[-3:])
    pool_bound = pool_bounds(concurrency, with_redis=with_redis)
    pool_max = {k: max(s["fd_kinds"][k] for s in samples) for k in pool_bound}
    pools_bounded = all(pool_max[k] <= pool_bound[k] for k in pool_bound)
    growth = (rss1 - rss0) / rss0
    total = sum(counts.values())
    expected_errors = counts.get("http_404", 0)
    out = {
        "minutes": minutes, "concurrency": concurrency, "with_redis": with_redis,
        "requests": total, "req_per_s": round(total / duration, 1), "counts": counts,
        "rss_kib_after_warmup": rss0, "rss_kib_end": rss1,
        "rss_growth": round(growth, 4), "fds_after_warmup": fd0, "fds_end": fd1,
        "other_fds_after_warmup": other0, "other_fds_end": other1,
        "pooled_connections_max": pool_max, "pooled_connections_bound": pool_bound,
        "pools_bounded": pools_bounded,
        "ok": bool(growth < max_rss_growth and other1 <= other0 and pools_bounded and
                   counts.get("ok", 0) + expected_errors == total),
        "max_rss_growth": max_rss_growth, "samples": samples,
        "machine": f"{os.cpu_count()} CPU(s), {sys.platform}",
    }
    return out


#: samples after the warm-up that the verdict compares (the medians of the first and last 3)
MIN_SAMPLES = 6


def bad_options(args: argparse.Namespace) -> str | None:
    """Why these options cannot give a verdict, or None: said before the soak starts, not
    after minutes of load."""
    for flag, v in (("--minutes", args.minutes), ("--sample-s", args.sample_s),
                    ("--warmup-frac", args.warmup_frac),
                    ("--max-rss-growth", args.max_rss_growth)):
        if not math.isfinite(v):  # nan passed every comparison below; inf never ended
            return f"{flag} must be a finite number, not {v:g}"
    if args.minutes <= 0:
        return f"--minutes must be more than 0, not {args.minutes:g}"
    if args.concurrency < 1:
        return f"--concurrency must be at least 1, not {args.concurrency}"
    from expertgate.bench.proc import FDS_BESIDE, open_files_limit

    fds = open_files_limit()
    # each client's connection is open in this process and in the gateway, which holds as
    # many to the upstream
    if fds is not None and 2 * args.concurrency + FDS_BESIDE > fds:
        return (f"--concurrency {args.concurrency} needs about {2 * args.concurrency} open "
                f"connections, and this shell allows {fds} open files (ulimit -n): raise it "
                f"or give at most {max((fds - FDS_BESIDE) // 2, 1)}")
    if args.sample_s <= 0:
        return f"--sample-s must be more than 0, not {args.sample_s:g}"
    if not 0.0 <= args.warmup_frac < 1.0:
        return f"--warmup-frac must lie in [0, 1), not {args.warmup_frac:g}"
    if args.max_rss_growth < 0:
        return f"--max-rss-growth must be at least 0, not {args.max_rss_growth:g}"
    kept_s = args.minutes * 60 * (1 - args.warmup_frac)
    if kept_s / args.sample_s < MIN_SAMPLES:
        shortest = math.ceil(MIN_SAMPLES * args.sample_s / (60 * (1 - args.warmup_frac)) * 100)
        return (f"the verdict takes {MIN_SAMPLES} samples after the warm-up: with --sample-s "
                f"{args.sample_s:g} and --warmup-frac {args.warmup_frac:g} that needs at least "
                f"--minutes {shortest / 100:g} (or a shorter --sample-s)")
    return None


def main(args: argparse.Namespace) -> int:
    from evals.provenance import git_state, package_versions

    bad = bad_options(args)
    if bad:
        print(f"bench soak: {bad}", file=sys.stderr)
        return 2

    # the code that ran: the tree's state when the run starts, not when it ends
    argv = sys.argv[1:]
    argv = argv[argv.index("soak") + 1:] if "soak" in argv else argv
    started = {"git": git_state(), "packages": package_versions(),
               "command": shlex.join(["expertgate", "bench", "soak", *argv]),
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    res = asyncio.run(run_soak(args.minutes, concurrency=args.concurrency,
                               sample_s=args.sample_s, warmup_frac=args.warmup_frac,
                               with_redis=args.redis, max_rss_growth=args.max_rss_growth))
    res = {**started, **res}
    print(f"soak {res['minutes']:g} min, concurrency {res['concurrency']}, "
          f"redis={'yes' if res['with_redis'] else 'no'}: {res['requests']} requests "
          f"({res['req_per_s']} req/s), outcomes {res['counts']}")
    print(f"RSS after warm-up {res['rss_kib_after_warmup'] / 1024:.1f} MiB -> end "
          f"{res['rss_kib_end'] / 1024:.1f} MiB: growth {res['rss_growth'] * 100:+.2f}% "
          f"(limit {res['max_rss_growth'] * 100:.0f}%)")
    print(f"open fds after warm-up {res['fds_after_warmup']:g} -> end {res['fds_end']:g}; "
          f"not pooled connections {res['other_fds_after_warmup']:g} -> "
          f"{res['other_fds_end']:g} (must not grow); most pooled connections "
          f"{res['pooled_connections_max']} (bounds {res['pooled_connections_bound']})")
    print("PASS" if res["ok"] else "FAIL")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
        print(f"wrote {args.out}")
    return 0 if res["ok"] else 1


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=3.0, help="duration (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="closed-loop clients (default 8)")
    p.add_argument("--sample-s", type=float, default=5.0, help="sampling period (default 5 s)")
    p.add_argument("--warmup-frac", type=float, default=0.25,
                   help="share of the run ignored as warm-up (default 0.25)")
    p.add_argument("--max-rss-growth", type=float, default=0.10,
                   help="largest accepted RSS growth after warm-up (default 0.10)")
    p.add_argument("--redis", action="store_true",
                   help="start a redis-server and run the gateway with --redis-url")
    p.add_argument("--out", type=Path, default=Path("runs/soak.json"),
                   help="JSON result (default runs/soak.json)")
    p.set_defaults(func=main, out_is_file=True)  # the JSON file: a folder fails at the end


def cli_register_soak(subparsers: Any) -> None:
    """Add ``soak`` to a bench CLI's subparsers."""
    p = subparsers.add_parser("soak", help="bounded soak: steady load through a real gateway; "
                              "RSS and fds must not grow")
    _add_args(p)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m expertgate.bench.soak",
                                     description=__doc__.splitlines()[0])
    _add_args(parser)
    raise SystemExit(main(parser.parse_args()))
