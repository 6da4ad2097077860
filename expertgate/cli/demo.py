"""``expertgate demo``: two real local experts on llama.cpp, the gateway, a few prompts.

Starts SmolLM2-135M-Instruct and Gemma-3-270M as llama.cpp servers and ``expertgate serve``
(embedded defaults: no Redis) on free loopback ports, sends prompts through the OpenAI SDK
and prints, for each, the policy, the chosen expert, cache hit/miss, the decision time and
the start of the answer. Everything it started is stopped by PID at the end (unless
``--keep-running``). Exit code 0 only when both experts answered and the repeated prompt
was a decision-cache hit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["DEMO_PROMPTS", "DemoPrompt", "DemoRow", "demo_prompts", "format_table", "register",
           "run_demo"]

LOCAL_MODELS = ("smollm2", "gemma3")


@dataclass(frozen=True)
class DemoPrompt:
    policy: str
    text: str
    stream: bool = False
    note: str = ""


#: chosen to show both experts, a decision-cache hit, streaming and a refusal
DEMO_PROMPTS: tuple[DemoPrompt, ...] = (
    DemoPrompt("auto", "Hi! How are you doing today?"),
    DemoPrompt("auto", "Complete this sentence: The moon rose over the quiet harbour and"),
    DemoPrompt("auto", "Give me two tips for staying focused while studying."),
    DemoPrompt("auto", "What does a thermometer measure?"),
    DemoPrompt("auto", "Hi! How are you doing today?", note="repeat"),
    DemoPrompt("auto", "Write the opening line of a fairy tale about a brave mouse.",
               stream=True, note="stream"),
    DemoPrompt("guarded", "What's the best graphics card for gaming?", note="off-topic"),
)


def demo_prompts(config: Path) -> tuple[list[str], tuple[DemoPrompt, ...]]:
    """The config's policies, and the demo's prompts sent to them: a prompt keeps its policy
    when the config has it (demo-local.yaml has both), else goes to the config's first one
    (learned-local.yaml serves one policy, ``learned``): never to a policy the gateway would
    answer with a 404."""
    from dataclasses import replace

    from gateway.config import load_yaml

    data = load_yaml(config.read_text(encoding="utf-8"))
    pols = data.get("policies") if isinstance(data, dict) else None
    names = [p["name"] for p in pols or []
             if isinstance(p, dict) and isinstance(p.get("name"), str)]
    if not names:
        from expertgate.procs import LocalExpertError

        raise LocalExpertError(f"{config}: no policies: the demo's prompts are routed by one")
    return names, tuple(p if p.policy in names else replace(p, policy=names[0])
                        for p in DEMO_PROMPTS)


@dataclass
class DemoRow:
    prompt: DemoPrompt
    status: int = 0
    expert: str = ""
    cache: str = ""
    decision_ms: float | None = None
    degraded: str = ""
    answer: str = ""
    seconds: float = 0.0
    error: str = ""


def register(sub: Any, name: str) -> None:
    p = sub.add_parser("demo", help="start two local llama.cpp experts and the gateway, "
                       "send a few prompts and show how each was routed")
    p.add_argument("--config", type=Path, default=Path("examples/demo-local.yaml"),
                   help="gateway config with experts named smollm2 and gemma3 "
                   "(default examples/demo-local.yaml)")
    p.add_argument("--port", type=int, default=None,
                   help="gateway port (default: a free one)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the experts and the gateway running until Ctrl-C")
    p.add_argument("--threads", type=int, default=1,
                   help="llama.cpp threads per expert (default 1)")
    p.add_argument("--max-tokens", type=int, default=24,
                   help="max tokens per answer (default 24)")
    p.add_argument("--work-dir", type=Path, default=Path("runs/demo"),
                   help="where the config copy, the servers' logs and the routing log go "
                   "(default runs/demo)")
    p.set_defaults(func=cmd_demo)


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[:n - 1] + "…"


def format_table(rows: list[DemoRow]) -> str:
    """A plain-text table, one line per prompt."""
    head = ("#", "policy", "prompt", "expert", "cache", "decision", "answer (start)")
    lines = []
    for i, r in enumerate(rows, 1):
        dm = "-" if r.decision_ms is None else f"{r.decision_ms:.1f} ms"
        expert = r.expert or ("(refusal)" if r.status == 200 else f"HTTP {r.status}")
        tag = f" [{r.prompt.note}]" if r.prompt.note else ""
        answer = r.error or r.answer
        if r.degraded:
            answer = f"<{r.degraded}> {answer}"
        lines.append((str(i), r.prompt.policy, _clip(r.prompt.text, 44) + tag, expert,
                      r.cache or "-", dm, _clip(answer, 48)))
    widths = [max(len(h), *(len(ln[k]) for ln in lines)) if lines else len(h)
              for k, h in enumerate(head)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(ln, widths, strict=True)) for ln in lines]
    return "\n".join(ln.rstrip() for ln in out)


def _expert(headers: Any) -> str:
    """The answering expert, or "" when none did (the header then says ``none``)."""
    name = str(headers.get("x-expertgate-expert", ""))
    return "" if name == "none" else name


def _send(client: Any, p: DemoPrompt, max_tokens: int) -> DemoRow:
    import openai

    row = DemoRow(p)
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"model": p.policy, "max_tokens": max_tokens, "temperature": 0.0,
                          "messages": [{"role": "user", "content": p.text}]}
    try:
        raw = client.chat.completions.with_raw_response.create(stream=p.stream, **kw)
    except openai.APIStatusError as e:
        row.status = e.status_code
        # the gateway's OpenAI-shaped message (the SDK's own starts with the body's repr)
        body = e.body.get("message") if isinstance(e.body, dict) else None
        row.error = f"error {e.status_code}: {body if isinstance(body, str) else e.message}"
        h = e.response.headers
        row.expert, row.cache = _expert(h), h.get("x-expertgate-cache", "")
        return row
    except openai.APIError as e:
        row.error = f"{type(e).__name__}: {e}"
        return row
    h = raw.headers
    row.status = raw.status_code
    row.expert = _expert(h)
    row.cache = h.get("x-expertgate-cache", "")
    row.degraded = h.get("x-expertgate-degraded", "")
    ms = h.get("x-expertgate-decision-ms")
    row.decision_ms = float(ms) if ms else None
    out = raw.parse()
    if p.stream:
        parts = []
        for chunk in out:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        row.answer = "".join(parts)
    else:
        row.answer = out.choices[0].message.content or ""
    row.seconds = time.perf_counter() - t0
    return row


def run_demo(config: Path, *, port: int | None = None, keep_running: bool = False,
             threads: int = 1, max_tokens: int = 24, work_dir: Path = Path("runs/demo"),
             out: Any = None) -> int:
    """Start everything, send the demo prompts, print the table; returns the exit code."""
    import openai

    from expertgate.procs import GatewayServer, LlamaServer, free_port, local_config

    out = out or sys.stdout

    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    t_start = time.perf_counter()
    policies, prompts = demo_prompts(config)
    work = work_dir
    work.mkdir(parents=True, exist_ok=True)
    for old in ("smollm2.log", "gemma3.log", "gateway.log", "routing-log.jsonl"):
        (work / old).unlink(missing_ok=True)  # each run's logs are that run's only
    experts = {m: LlamaServer.for_model(m, n_threads=threads, log_path=work / f"{m}.log")
               for m in LOCAL_MODELS}
    cfg = local_config(config, work / "config.yaml", {m: s.port for m, s in experts.items()})
    gw = GatewayServer(cfg, port=port or free_port(), log_path=work / "gateway.log",
                       routing_log=work / "routing-log.jsonl")
    started: list[Any] = []
    try:
        say(f"expertgate demo: config {config} (copy with free ports: {cfg})")
        moved = sorted({p.policy for p in DEMO_PROMPTS} - set(policies))
        if moved:
            say(f"  no polic{'ies' if len(moved) > 1 else 'y'} {', '.join(moved)} in {config}: "
                f"those prompts go to {policies[0]!r}")
        for m, s in experts.items():
            s.start(wait=False)  # both load at once; readiness is awaited below
            started.append(s)
            say(f"  starting {m:8s} llama.cpp on {s.base} (pid {s.pid}, log {s.log_path})")
        for s in experts.values():
            s.wait_ready()
        say(f"  experts ready after {time.perf_counter() - t_start:.1f}s")
        gw.start(wait=False)
        started.append(gw)
        say(f"  starting gateway on {gw.url} (pid {gw.pid}, log {gw.log_path})")
        gw.wait_ready()
        t_ready = time.perf_counter() - t_start
        say(f"  gateway ready after {t_ready:.1f}s; sending {len(prompts)} prompts "
            f"(max_tokens {max_tokens})\n")
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", timeout=180.0,
                               max_retries=0)
        rows = [_send(client, p, max_tokens) for p in prompts]
        say(format_table(rows))
        answered = {r.expert for r in rows if r.expert and r.status == 200 and r.answer.strip()}
        repeat = [r for r in rows if r.prompt.note == "repeat"]
        ok_experts = set(LOCAL_MODELS) <= answered
        ok_cache = bool(repeat) and all(r.cache == "hit" for r in repeat)
        say("")
        say(f"both experts answered: {'yes' if ok_experts else 'NO'} "
            f"({', '.join(sorted(answered)) or 'none'}); repeated prompt was a cache hit: "
            f"{'yes' if ok_cache else 'NO'}")
        say(f"routing log (JSONL, with cost_usd per request): {gw.routing_log}")
        say(f"total {time.perf_counter() - t_start:.1f}s (start-up {t_ready:.1f}s)")
        if keep_running:
            say(f"\nkeep running: gateway {gw.url}/v1 (policies {', '.join(policies)}; "
                f"experts smollm2, gemma3). Ctrl-C stops everything.")
            if not _keep_running(started, say):
                return 1
        return 0 if ok_experts and ok_cache else 1
    finally:
        names = [f"{s.name} (pid {s.pid})" for s in started]
        for s in reversed(started):
            s.stop()
        if names:
            say("stopped: " + ", ".join(names))


def _keep_running(started: list[Any], say: Any, poll_s: float = 1.0) -> bool:
    """Wait for Ctrl-C (True) or for one of the servers to exit by itself (False, said: the
    demo then stops the others and exits 1, not 0 as after a Ctrl-C)."""
    with contextlib.suppress(KeyboardInterrupt):
        while all(s.running for s in started):
            time.sleep(poll_s)
        gone = [s for s in started if not s.running]
        code = gone[0].proc.returncode if gone[0].proc is not None else None
        say(f"\n{gone[0].name} (pid {gone[0].pid}) exited by itself (code {code}); stopping "
            f"the rest")
        return False
    return True


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # a SIGTERM to the demo must still run the clean-up that stops its children
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _bad_option(args: argparse.Namespace) -> str | None:
    """What makes the demo fail whatever the experts do. A port in use was the worst: the
    gateway could not bind it, and the other process there answered the demo's prompts."""
    from expertgate.procs import port_in_use

    if args.max_tokens < 1:
        return f"--max-tokens must be at least 1, not {args.max_tokens}"
    if args.port is not None and not 0 <= args.port <= 65535:
        return f"--port must be between 0 (a free one) and 65535, not {args.port}"
    if args.port and port_in_use(args.port):
        return (f"--port {args.port}: port {args.port} is already in use by another process "
                "(leave out --port for a free one)")
    try:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot use --work-dir {args.work_dir}: {e.strerror or e}"
    if not os.access(args.work_dir, os.W_OK):
        return f"cannot use --work-dir {args.work_dir}: permission denied"
    return None


def cmd_demo(args: argparse.Namespace) -> int:
    from expertgate.procs import LocalExpertError

    if not args.config.is_file():
        print(f"expertgate demo: no config file {args.config}"
              + ("" if args.config.is_absolute() else f" in {Path.cwd()} (run it from the "
                 "checkout, or pass --config FILE)"), file=sys.stderr)
        return 2
    bad = _bad_option(args)
    if bad:  # said before the experts load, not after
        print(f"expertgate demo: {bad}", file=sys.stderr)
        return 2
    try:
        with _sigterm_as_exit():
            return run_demo(args.config, port=args.port, keep_running=args.keep_running,
                            threads=args.threads, max_tokens=args.max_tokens,
                            work_dir=args.work_dir)
    except LocalExpertError as e:
        print(f"expertgate demo: {e}", file=sys.stderr)
        return 1
