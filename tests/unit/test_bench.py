"""The benchmark machinery: CLI, stub upstream, floor, load generator, summaries.

No test here asserts a speed: figures are printed by ``expertgate bench``; these tests check
that the machinery measures what it claims (distinct bodies, right paths, right formats).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from expertgate.bench import cli_register
from expertgate.bench.load import distinct_prompt, run_wrk
from expertgate.bench.overhead import _targets, format_ratio_lines
from expertgate.bench.proc import cpu_seconds, process_tree, rss_bytes
from expertgate.bench.router import _interleaved, bench_batching, synthetic_table, time_calls
from expertgate.bench.upstream_stub import CHAT_BODY, SSE_BODY, UpstreamStub

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None
                                 and not Path("/usr/sbin/nginx").exists(),
                                 reason="nginx (the benchmark's upstream stub) is not installed")
needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="expertgate bench")
    cli_register(p)
    return p


def test_cli_registers_overhead_router_and_soak() -> None:
    p = _parser()
    a = p.parse_args(["overhead", "--json", "o.json", "--plot", "o.png", "--requests", "50",
                      "--concurrency", "1,16,64", "--rounds", "2", "--skip-litellm"])
    assert callable(a.func)
    assert (a.json, a.plot, a.requests, a.concurrency, a.rounds, a.skip_litellm) == (
        Path("o.json"), Path("o.png"), 50, "1,16,64", 2, True)
    assert a.paths is None  # every path
    sub = p.parse_args(["overhead", "--paths", "routed_miss,routed_explore"])
    assert sub.paths == "routed_miss,routed_explore"
    # an unknown path is refused before anything starts
    assert sub.func(p.parse_args(["overhead", "--paths", "routed_miss,nope"])) == 2
    r = p.parse_args(["router", "--json", "r.json"])
    assert callable(r.func) and r.func is not a.func
    s = p.parse_args(["soak"])
    assert callable(s.func) and s.func not in (a.func, r.func)
    with pytest.raises(SystemExit):
        p.parse_args(["no-such-benchmark"])


def test_ratio_lines_format() -> None:
    paths = {"floor": {"c1": {"added_p99_ms": 0.5}, "c16": {"added_p99_ms": 4.0}},
             "passthrough": {"c1": {"added_p99_ms": 0.75}, "c16": {"added_p99_ms": 6.0}},
             "litellm": {"c1": {"added_p99_ms": 15.0}, "c16": {"added_p99_ms": 300.0}}}
    assert format_ratio_lines(paths, [1, 16]) == [
        "p99 added latency, expertgate/floor: c1=1.50 c16=1.50",
        "p99 added latency, litellm/expertgate: c1=20.00 c16=50.00",
    ]
    # a skipped path prints n/a instead of a made-up number
    del paths["litellm"]
    assert format_ratio_lines(paths, [1, 16])[1] == (
        "p99 added latency, litellm/expertgate: c1=n/a c16=n/a")


def test_targets_are_judged() -> None:
    paths = {
        "floor": {"c1": {"added_p99_ms": 1.0, "errors": 0}},
        "passthrough": {"c1": {"added_p50_ms": 0.3, "added_p99_ms": 3.0, "rps": 2500.0,
                               "errors": 0}},
        "litellm": {"c1": {"added_p99_ms": 30.0, "errors": 0}},
        "routed_miss": {"c1": {"added_p50_ms": 3.0, "added_p99_ms": 12.0, "errors": 1}},
    }
    got = {t["target"]: t["met"] for t in _targets(paths, [1], None, {"direct": {"errors": 0}})}
    assert got["passthrough added p99 / floor added p99 at c1"] is False  # 3x > 2x
    assert got["passthrough added p50 at c1 (ms)"] is True
    assert got["litellm added p99 / passthrough added p99 at c1"] is True  # 10x >= 5x
    assert got["passthrough req/s (best concurrency, 1 worker)"] is True
    assert got["routed_miss added p50 at c1 (ms)"] is True
    assert got["routed_miss added p99 at c1 (ms)"] is False
    assert got["routed_hit added p50 at c1 (ms)"] is None  # not measured -> n/a, not "met"
    assert got["errors (all paths and streams, all runs)"] is False


def test_distinct_prompts_differ() -> None:
    prompts = {distinct_prompt("run1", i) for i in range(5000)}
    assert len(prompts) == 5000
    assert distinct_prompt("a", 7) != distinct_prompt("b", 7)


def test_prompt_suffix_reaches_the_asked_length() -> None:
    from expertgate.bench.overhead import prompt_suffix
    from expertgate.bench.router import minilm_tokenizer

    suffix, n = prompt_suffix(128)
    assert abs(n - 128) <= 2
    tok = minilm_tokenizer()
    for i in (0, 7, 999):
        ids = tok.encode(distinct_prompt("run1-r0-c1", i, suffix), add_special_tokens=False).ids
        assert abs(len(ids) - 128) <= 4


def test_proc_accounting_sees_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import os

        tree = process_tree(os.getpid())
        assert os.getpid() in tree and child.pid in tree
        assert rss_bytes([os.getpid()]) > 10 * 2**20
        before = cpu_seconds([os.getpid()])
        sum(i * i for i in range(2_000_000))
        assert cpu_seconds([os.getpid()]) >= before
    finally:
        child.kill()
        child.wait()


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the benchmarked servers
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length", "0"))
        _Recorder.bodies.append(self.rfile.read(n))
        out = CHAT_BODY.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: object) -> None:  # silence the test output
        return


@needs_wrk
def test_wrk_sends_distinct_bodies_and_counts_requests() -> None:
    _Recorder.bodies = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1/chat/completions"
        r = run_wrk(url, n=40, concurrency=4, body=None, model="auto", prefix="t")
        assert r.requests >= 40 and r.errors == 0
        assert r.p50_ms > 0 and r.p99_ms >= r.p50_ms and r.rps > 0
        docs = [json.loads(b) for b in _Recorder.bodies]
        texts = [d["messages"][0]["content"] for d in docs]
        assert len(set(texts)) == len(texts) >= 40
        assert all(d["model"] == "auto" for d in docs)
        # the Lua script builds prompts with the same formula as distinct_prompt
        assert set(texts) <= {distinct_prompt("t", i) for i in range(200)}
        fixed = b'{"model":"stub","messages":[{"role":"user","content":"hi"}]}'
        _Recorder.bodies = []
        r2 = run_wrk(url, n=10, concurrency=2, body=fixed)
        assert r2.requests >= 10 and set(_Recorder.bodies) == {fixed}
        # a long-prompt suffix (quotes and a newline included) reaches the server intact
        _Recorder.bodies = []
        suffix = 'a "quoted" word,\nthen a second line'
        run_wrk(url, n=8, concurrency=2, body=None, model="auto", prefix="s", suffix=suffix)
        texts = [json.loads(b)["messages"][0]["content"] for b in _Recorder.bodies]
        assert len(texts) >= 8
        assert set(texts) <= {distinct_prompt("s", i, suffix) for i in range(100)}
    finally:
        srv.shutdown()
        srv.server_close()


@needs_nginx
def test_stub_serves_chat_sse_and_models() -> None:
    with UpstreamStub() as stub:
        req = urllib.request.Request(stub.base_url + "/chat/completions", data=b"{}",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            assert r.headers["content-type"].startswith("application/json")
            doc = json.loads(r.read())
        assert doc["object"] == "chat.completion" and doc["choices"][0]["message"]["content"]
        req = urllib.request.Request(stub.sse_base_url + "/chat/completions", data=b"{}")
        with urllib.request.urlopen(req) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.read().decode() == SSE_BODY
        with urllib.request.urlopen(stub.base_url + "/models") as r:
            assert json.loads(r.read())["data"][0]["id"] == "stub"
        pids = stub.pids()
        assert len(pids) >= 2  # master and one worker
    assert stub.proc is None
    assert not any(Path(f"/proc/{p}").exists() and p in process_tree(p) for p in pids[:1])


@needs_nginx
def test_floor_passes_bytes_through(tmp_path: Path) -> None:
    from expertgate.bench.servers import start_floor

    with UpstreamStub() as stub, start_floor(stub, tmp_path) as floor:
        req = urllib.request.Request(floor.url + "/v1/chat/completions", data=b"{}",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            assert r.read().decode() == CHAT_BODY
        req = urllib.request.Request(floor.url + "/sse/v1/chat/completions", data=b"{}")
        with urllib.request.urlopen(req) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.read().decode() == SSE_BODY


def test_time_calls_and_synthetic_table() -> None:
    calls = []
    t = time_calls(lambda: calls.append(1), repeats=30, warmup=3)
    assert len(calls) == 33 and t["calls"] == 30 and t["p99_ms"] >= t["p50_ms"] >= 0
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 8)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    table = synthetic_table(X, [f"q{i}" for i in range(50)])
    assert table.scores.shape == (50, 4) and table.categories is not None
    assert set(np.unique(table.scores)) <= {0.0, 1.0}


def test_interleaved_gives_fast_functions_enough_calls_for_their_p99() -> None:
    import time

    calls = {"fast": 0, "slow": 0}

    def fast() -> None:
        calls["fast"] += 1

    def slow() -> None:
        calls["slow"] += 1
        time.sleep(0.0025)  # above FAST_MS: one call per repeat

    res = _interleaved({"fast": fast, "slow": slow}, repeats=10, warmup=2, min_fast_calls=95)
    # 10 calls per repeat for the fast one (ceil(95 / 10)), warm-up calls never timed
    assert (res["fast"]["calls"], res["slow"]["calls"]) == (100, 10)
    assert calls == {"fast": 102, "slow": 12}
    assert res["slow"]["p50_ms"] >= 2.5 > res["fast"]["p99_ms"]


def test_batching_bench_batches_concurrent_callers() -> None:
    class Slow:
        dim = 2

        def embed(self, texts: list[str]) -> np.ndarray:
            threading.Event().wait(0.002)  # a pass takes time, so callers queue up
            return np.ones((len(texts), 2), np.float32)

    out = bench_batching(Slow(), ["a", "b"], concurrency=8, total=64)
    assert out["one_per_pass"]["mean_batch"] == 1.0
    assert out["one_per_pass"]["passes"] == 64
    assert out["micro_batched"]["mean_batch"] > 1.0
    assert out["micro_batched"]["passes"] < 64
    assert set(out["c1_dispatch"]) == {"executor_p50_us", "batcher_p50_us", "executor_p99_us",
                                       "batcher_p99_us"}


@needs_nginx
@needs_wrk
def test_a_learned_policy_maps_its_tables_models_onto_the_stub_upstreams(
        tmp_path: Path) -> None:
    from expertgate.bench.servers import LEARNED_POLICY, learned_policy
    from gateway.config import parse_config
    from gateway.pipeline import build_policy_set
    from routers.base import RoutingTable, make_router
    from routers.embed import HashingEmbedder

    e = HashingEmbedder()
    texts = ["fix this bug", "tell me a joke", "write a poem", "sum these numbers"]
    S = np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.5], [0.3, 0.4, 1.0], [1.0, 0.0, 0.0]])
    t = RoutingTable(["a", "b", "c", "d"], texts, ["gpt-x", "mix-y", "small-z"], S,
                     np.ones_like(S))
    art = make_router("knn", k=1).fit(e.embed(texts), t).save(tmp_path / "art",
                                                              embedder=e.name)
    pol = learned_policy(art)
    assert pol["name"] == LEARNED_POLICY and pol["router"] == "knn"
    assert pol["models"] == {"gpt-x": "stub", "mix-y": "stub-b", "small-z": "stub"}
    cfg = parse_config({"experts": [{"name": "stub", "api_base": "http://127.0.0.1:9/v1"},
                                    {"name": "stub-b", "api_base": "http://127.0.0.1:9/v1"}],
                        "policies": [pol]}, "bench.yaml")
    ps = build_policy_set(cfg, e)  # the gateway serves it: the artifact and its mapping load
    assert LEARNED_POLICY in ps.policies


def test_overhead_end_to_end_small(tmp_path: Path) -> None:
    from expertgate.bench.servers import shadow_artifact

    out = tmp_path / "o.json"
    png = tmp_path / "o.png"
    art = shadow_artifact(tmp_path, "hashing")  # a trained knn: the routed_learned path
    cmd = [sys.executable, "-m", "expertgate", "bench", "overhead", "--requests", "40",
           "--miss-requests", "8", "--stream-requests", "3", "--concurrency", "1,4",
           "--rounds", "1", "--skip-litellm", "--embedder", "hashing", "--json", str(out),
           "--plot", str(png), "--artifact", str(art)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert re.fullmatch(r"p99 added latency, expertgate/floor: c1=\S+ c4=\S+", lines[-2])
    assert re.fullmatch(r"p99 added latency, litellm/expertgate: c1=n/a c4=n/a", lines[-1])
    doc = json.loads(out.read_text())
    for path in ("direct", "floor"):
        for c in ("c1", "c4"):
            row = doc["paths"][path][c]
            assert row["errors"] == 0 and row["requests"] >= 40
            assert {"p50_ms", "p99_ms", "added_p50_ms", "added_p99_ms", "rps"} <= set(row)
    assert doc["paths"]["direct"]["c1"]["added_p99_ms"] == 0
    if "routed_miss" in doc["paths"]:  # the gateway ran: the learned policy served too
        row = doc["paths"]["routed_learned"]["c1"]
        assert row["errors"] == 0 and row["requests"] >= 8
    assert doc["skipped"]["litellm"] == "--skip-litellm"
    assert png.stat().st_size > 10_000
