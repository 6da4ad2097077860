"""``expertgate bench startup``: what the first requests after a start cost, with and
without the start-up warm-up (``Settings.warm_up``, :meth:`gateway.pipeline.Pipeline.warm`).

First-use costs are per process (lazy imports and loads, the embedding thread's start, a
router's or an onnxruntime session's first run), so each variant runs in a fresh Python
process: it builds the gateway from ``--config`` in-process (no HTTP, no upstream calls),
times its start-up, then ``--first`` routed decisions of distinct prompts (decision-cache
misses, the whole decision: cache lookup, embedding, guard, router) one after the other,
then ``--steady`` more of other prompts. The variants run in turn ``--rounds`` times (a
burst of load from other processes hits both alike). Printed and written as JSON: start-up
seconds, the first decision, the worst of the first ``--first`` and the steady p50, per
variant and round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["cli_register_startup", "run_variant"]

#: prompts of the timed decisions: distinct, so every one misses the decision cache
_TOPICS = ["sort a list in python", "the capital of mongolia", "a haiku about autumn",
           "solve 3x + 5 = 20", "explain photosynthesis", "fix a null pointer exception",
           "a good pasta recipe", "the causes of the first world war",
           "compound interest on 1000 dollars", "translate good morning to french"]


def _prompt(i: int) -> str:
    return f"Question {i}: {_TOPICS[i % len(_TOPICS)]}, please, in a few sentences."


def cli_register_startup(sub: Any) -> None:
    p = sub.add_parser("startup", help="the first decisions after a start, with and without "
                       "the start-up warm-up (each in a fresh process)")
    p.add_argument("--config", type=Path, required=True, help="gateway config (YAML)")
    p.add_argument("--policy", help="policy to route with (default: the config's first)")
    p.add_argument("--first", type=int, default=5, help="first decisions timed (default 5)")
    p.add_argument("--steady", type=int, default=200,
                   help="decisions after them, for the steady p50 (default 200)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each variant (default 3)")
    p.add_argument("--json", type=Path, help="write the figures to this JSON file")
    p.add_argument("--variant", choices=("warm", "cold"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_startup)


async def _measure(config: Path, policy: str | None, warm: bool, first: int, steady: int
                   ) -> dict[str, Any]:
    from gateway.app import create_app
    from gateway.config import Settings, load_config

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(log_path=Path(tmp) / "log.jsonl", ready_check_upstreams=False,
                     warm_up=warm, redis_url=None)
        t0 = time.perf_counter()
        app = create_app(s, load_config(config))
        gw = app.gateway
        await gw.start()
        start_s = time.perf_counter() - t0
        try:
            pols = gw.policy_set.policies
            name = policy or next(iter(pols))
            if name not in pols:
                raise SystemExit(f"expertgate bench startup: no policy {name!r} in {config} "
                                 f"(it has {', '.join(pols)})")
            rt = pols[name]
            times = []
            for i in range(first + steady):
                t = time.perf_counter()
                await gw.pipeline.decide(rt, _prompt(i), [])
                times.append((time.perf_counter() - t) * 1000.0)
        finally:
            await gw.close()
    # no steady decisions (--steady 0): no steady p50 (null in the JSON, not NaN)
    steady_p50 = round(float(np.percentile(times[first:], 50)), 3) if steady else None
    return {"start_s": round(start_s, 4), "first_ms": [round(x, 3) for x in times[:first]],
            "first_decision_ms": round(times[0], 3),
            "worst_of_first_ms": round(max(times[:first]), 3),
            "steady_p50_ms": steady_p50}


def run_variant(config: Path, policy: str | None, warm: bool, first: int, steady: int
                ) -> dict[str, Any]:
    """One variant in this process (the subprocess side of :func:`cmd_startup`)."""
    return asyncio.run(_measure(config, policy, warm, first, steady))


def cmd_startup(args: argparse.Namespace) -> int:
    if args.first < 1 or args.steady < 0 or args.rounds < 1:
        print("expertgate bench startup: --first and --rounds must be at least 1, --steady "
              "at least 0", file=sys.stderr)
        return 2
    if args.variant is not None:  # a child: one variant, figures to --out
        res = run_variant(args.config, args.policy, args.variant == "warm", args.first,
                          args.steady)
        args.out.write_text(json.dumps(res))
        return 0
    bad = _config_problem(args.config, args.policy)
    if bad:
        print(f"expertgate bench startup: {bad}", file=sys.stderr)
        return 2
    from expertgate.bench.proc import machine_info

    machine = machine_info()
    rounds: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for variant in ("warm", "cold"):
                out = Path(tmp) / f"{variant}-{r}.json"
                cmd = [sys.executable, "-m", "expertgate", "bench", "startup", "--config",
                       str(args.config), "--first", str(args.first), "--steady",
                       str(args.steady), "--variant", variant, "--out", str(out)]
                if args.policy:
                    cmd += ["--policy", args.policy]
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      env={**os.environ, "EXPERTGATE_LOG_LEVEL": "warning"})
                if proc.returncode != 0 or not out.is_file():
                    print(f"expertgate bench startup: the {variant} run failed:\n"
                          f"{proc.stderr[-2000:]}", file=sys.stderr)
                    return 1
                rounds[variant].append(json.loads(out.read_text()))
    machine["loadavg_end"] = list(os.getloadavg())
    from evals.provenance import git_state, package_versions

    summary = {v: {k: _median([r[k] for r in rs])
                   for k in ("start_s", "first_decision_ms", "worst_of_first_ms",
                             "steady_p50_ms")} for v, rs in rounds.items()}
    result = {"benchmark": "startup", "machine": machine, "git": git_state(),
              "packages": package_versions(), "python": platform.python_version(),
              "command": " ".join(["expertgate", *sys.argv[1:]]),
              "config": str(args.config), "policy": args.policy, "first": args.first,
              "steady": args.steady, "rounds": rounds, "median": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"start-up and first decisions, median of {args.rounds} fresh processes each "
          f"({machine.get('cpu', '')}):")
    print("| variant | start-up s | first decision ms | worst of first "
          f"{args.first} ms | steady p50 ms |")
    print("|---|---|---|---|---|")
    for v, label in (("warm", "warm-up (default)"), ("cold", "no warm-up")):
        m = summary[v]
        print(f"| {label} | {m['start_s']:.3f} | {m['first_decision_ms']:.2f} | "
              f"{m['worst_of_first_ms']:.2f} | {_ms(m['steady_p50_ms'])} |")
    return 0


def _config_problem(config: Path, policy: str | None) -> str | None:
    """Why the measured processes could not run ``config`` (each would fail alike, after
    starting): not a file, not a config, no such policy; None when they can."""
    from gateway.config import ConfigError, load_config

    if config.is_dir():
        return f"{config} is a folder; --config names the gateway's YAML file"
    if not config.is_file():
        return f"no config file {config}"
    try:
        cfg = load_config(config)
    except ConfigError as e:
        return (str(e).strip().splitlines() or [type(e).__name__])[0]
    names = [p.name for p in cfg.policies]
    if not names:
        return f"{config} has no policy to route with (policies: is empty)"
    if policy is not None and policy not in names:
        return f"no policy {policy!r} in {config} (it has {', '.join(names)})"
    return None


def _median(values: list[float | None]) -> float | None:
    """Median over the rounds; None where a figure was not measured (``--steady 0``)."""
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return None
    return round(float(np.median(known)), 3)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
