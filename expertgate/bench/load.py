"""Load generation for the overhead benchmark: wrk with a generated Lua script.

Why wrk and not h2load: h2load sends one fixed body (``-d FILE``), and a routed cache-miss
figure needs a distinct prompt in every request. wrk's Lua ``request()`` hook builds each
body, so every path is driven by the same tool and the "path minus direct" subtraction
compares like with like. The script

* sends exactly ``n`` requests (closed loop, ``c`` connections, one wrk thread), then stops
  the thread and prints a marker; the caller then interrupts wrk's fixed-duration sleep;
* times the run inside wrk with ``clock_gettime`` through LuaJIT's FFI (first request to the
  n-th response), so throughput does not include process start-up;
* counts non-2xx answers itself;
* prints one JSON line with wrk's HdrHistogram percentiles (microseconds).

:func:`stream_ttfb` measures time to the first body byte of streamed answers with one
aiohttp connection (concurrency 1: the client's own cost is the same for every path and
cancels in the subtraction).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoadError", "LoadResult", "distinct_prompt", "run_wrk", "stream_ttfb"]


class LoadError(RuntimeError):
    """The load generator could not run or produced no result."""


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    #: the first few non-2xx answers ("status N: body...") or socket errors, for diagnosis
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("error_samples")
        return d


# Prompt shapes for distinct routed prompts: realistic lengths (15-30 tokens) so the embedding
# cost is that of a real question, made unique by a run prefix and a sequence number.
_TOPICS = ["python list comprehension", "the french revolution", "a sourdough starter",
           "kubernetes liveness probes", "the krebs cycle", "contract indemnity clauses",
           "quarterly tax estimates", "a rust borrow checker error", "photosynthesis",
           "a sql left join", "marathon training", "the fourier transform",
           "a react useEffect loop", "mortgage refinancing", "the byzantine empire",
           "a git merge conflict", "vitamin d deficiency", "black-scholes pricing",
           "tcp congestion control", "impressionist painting"]
_TEMPLATES = ["Can you explain %s to me in simple terms? (ticket %s-%d)",
              "What is the most common mistake people make with %s? ref %s/%d",
              "Give me three practical tips about %s, case %s number %d please.",
              "I am confused about %s; what should I read first? id %s.%d"]


def distinct_prompt(prefix: str, seq: int, suffix: str = "") -> str:
    """The prompt the Lua script generates for ``seq`` (same formula, for tests and docs);
    ``suffix`` (a fixed text making the prompt longer) follows it after a space."""
    head = _TEMPLATES[seq % len(_TEMPLATES)] % (_TOPICS[seq % len(_TOPICS)], prefix, seq)
    return f"{head} {suffix}" if suffix else head


def _lua_str(s: str) -> str:
    return "[==[" + s + "]==]"


def _script(n: int, body: bytes | None, model: str, prefix: str, extra_headers: dict[str, str],
            suffix: str = "") -> str:
    hdrs = {"content-type": "application/json", **extra_headers}
    hdr_lua = ", ".join(f"[ {_lua_str(k)} ]={_lua_str(v)}" for k, v in hdrs.items())
    if body is not None:
        make_body = (f"local fixed = {_lua_str(body.decode())}\n"
                     "local function body() return fixed end")
    else:
        topics = ", ".join(_lua_str(t) for t in _TOPICS)
        templates = ", ".join(_lua_str(t) for t in _TEMPLATES)
        head = json.dumps({"model": model, "max_tokens": 16,
                           "messages": [{"role": "user", "content": "@@"}]}).split('"@@"')
        # the suffix goes into the JSON string as it is escaped there
        tail = (json.dumps(" " + suffix)[1:-1] if suffix else "") + '"' + head[1]
        if "]==]" in tail:
            raise LoadError("the prompt suffix may not contain ']==]'")
        make_body = f"""
local topics = {{{topics}}}
local templates = {{{templates}}}
local head, tail = {_lua_str(head[0] + '"')}, {_lua_str(tail)}
local function body()
  local i = seq
  local t = string.format(templates[(i % #templates) + 1], topics[(i % #topics) + 1],
                          {_lua_str(prefix)}, i)
  return head .. t .. tail
end"""
    return f"""
local ffi = require("ffi")
ffi.cdef[[ typedef struct {{ long tv_sec; long tv_nsec; }} eg_ts;
           int clock_gettime(int, eg_ts *); ]]
local ts = ffi.new("eg_ts")
local function now()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local n_target = {int(n)}
seq = 0
count = 0
bad = 0
elapsed = -1
local t0 = nil
local headers = {{{hdr_lua}}}
{make_body}
request = function()
  if t0 == nil then t0 = now() end
  local b = body()
  seq = seq + 1
  return wrk.format("POST", nil, headers, b)
end
response = function(status, hdrs, b)
  count = count + 1
  if status < 200 or status > 299 then
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write("status " .. status .. ": " .. string.sub(b or "", 1, 300) .. "\\n")
    end
  end
  if count == n_target then
    elapsed = now() - t0
    io.write("EG_DONE\\n")
    io.flush()
    wrk.thread:stop()
  end
end
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local th = threads[1]
  local e = summary.errors
  io.write(string.format('EG_RESULT {{"count":%d,"bad":%d,"elapsed":%.9f,"socket_errors":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.3f}}\\n',
    th:get("count"), th:get("bad"), th:get("elapsed"),
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def run_wrk(url: str, *, n: int, concurrency: int, body: bytes | None = None,
            model: str = "auto", prefix: str = "p", timeout_s: float = 120.0,
            headers: dict[str, str] | None = None, suffix: str = "") -> LoadResult:
    """POST ``n`` requests to ``url`` over ``concurrency`` connections (closed loop).

    ``body`` None means a distinct routed prompt per request (``model`` names the policy),
    :func:`distinct_prompt` with ``suffix``.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk is not installed (Debian: apt-get install wrk)")
    if n < concurrency:
        raise LoadError(f"need at least as many requests ({n}) as connections ({concurrency})")
    with tempfile.TemporaryDirectory(prefix="expertgate-wrk-") as d:
        script = Path(d) / "load.lua"
        script.write_text(_script(n, body, model, prefix, headers or {}, suffix))
        cmd = [wrk, "-t1", f"-c{concurrency}", f"-d{int(timeout_s)}s",
               f"--timeout={max(int(timeout_s), 1)}s", "-s", str(script), url]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        done = False
        for line in proc.stdout:
            if line.strip() == "EG_DONE":
                done = True
                break
        if done:
            # wrk sleeps for the whole -d duration; SIGINT ends that sleep and runs done()
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    result = next((ln[len("EG_RESULT "):] for ln in out.splitlines()
                   if ln.startswith("EG_RESULT ")), None)
    if result is None:
        raise LoadError(f"wrk produced no result (exit {proc.returncode}): {err[-500:]}")
    r = json.loads(result)
    if not done or r["elapsed"] <= 0:
        raise LoadError(f"wrk did not complete {n} requests within {timeout_s:g}s "
                        f"({r['count']} done): {err[-300:]}")
    count = int(r["count"])
    samples = [ln for ln in err.splitlines() if ln.startswith("status ")][:3]
    if r["socket_errors"]:
        samples.append(f"{r['socket_errors']} socket error(s) (connect/read/write/timeout)")
    return LoadResult(requests=count, errors=int(r["bad"]) + int(r["socket_errors"]),
                      elapsed_s=float(r["elapsed"]), rps=count / float(r["elapsed"]),
                      p50_ms=r["p50"] / 1e3, p90_ms=r["p90"] / 1e3, p99_ms=r["p99"] / 1e3,
                      mean_ms=r["mean"] / 1e3, max_ms=r["max"] / 1e3, error_samples=samples)


def stream_ttfb(url: str, body: bytes, n: int, timeout_s: float = 60.0,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Time to the first body byte (and to the end) of ``n`` streamed answers, one at a time."""
    import asyncio

    import aiohttp
    import numpy as np

    hdrs = {"content-type": "application/json", **(headers or {})}

    async def run() -> tuple[list[float], list[float], int]:
        first: list[float] = []
        total: list[float] = []
        errors = 0
        conn = aiohttp.TCPConnector(limit=1, keepalive_timeout=300)
        to = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=to) as s:
            for _ in range(n):
                t0 = time.perf_counter()
                async with s.post(url, data=body, headers=hdrs) as r:
                    chunk = await r.content.readany()
                    t1 = time.perf_counter()
                    rest = await r.read()
                    t2 = time.perf_counter()
                if r.status != 200 or b"data:" not in chunk + rest:
                    errors += 1
                first.append((t1 - t0) * 1e3)
                total.append((t2 - t0) * 1e3)
        return first, total, errors

    first, total, errors = asyncio.run(run())
    f, t = np.asarray(first), np.asarray(total)
    return {"requests": n, "errors": errors,
            "ttfb_p50_ms": float(np.percentile(f, 50)),
            "ttfb_p99_ms": float(np.percentile(f, 99)),
            "total_p50_ms": float(np.percentile(t, 50)),
            "total_p99_ms": float(np.percentile(t, 99))}

