"""``expertgate bench overhead`` with counts it cannot honour: one line naming the flag,
exit 2, before any server starts (a run takes minutes on the 2-core box), never a run whose
figures are not the ones asked for."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from expertgate.cli import main

BASE = ["bench", "overhead", "--skip-litellm", "--embedder", "hashing"]


@pytest.fixture(autouse=True)
def _nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    import expertgate.bench.overhead as overhead

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the benchmark started its upstream")

    monkeypatch.setattr(overhead, "UpstreamStub", refuse)


def _one_line(capsys: pytest.CaptureFixture[str], says: str) -> None:
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


@pytest.mark.parametrize("flag", ["--miss-requests", "--litellm-requests"])
@pytest.mark.parametrize("n", ["0", "-5"])
def test_request_counts_below_one_are_refused(flag: str, n: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # --miss-requests -5 ran the benchmark with the largest concurrency's count instead,
    # and its JSON recorded miss_requests: -5 beside figures of 64 requests
    assert main([*BASE, flag, n]) == 2
    _one_line(capsys, f"{flag} must be at least 1, not {n}")


def test_a_prompt_longer_than_the_gateways_body_limit_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # --prompt-tokens 1000000 built a 5 MB prompt: every routed request was the gateway's
    # 413, counted as the path's errors after minutes of load
    assert main([*BASE, "--prompt-tokens", "2000000"]) == 2
    _one_line(capsys, "--prompt-tokens 2000000")
    monkeypatch.setenv("EXPERTGATE_MAX_BODY_BYTES", "2000")  # the gateway's, inherited
    assert main([*BASE, "--prompt-tokens", "1000"]) == 2
    _one_line(capsys, "over the gateway's body limit (max_body_bytes 2000)")


def test_more_connections_than_open_files_are_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # --concurrency 5000 under 'ulimit -n 1024': wrk and the server under test ran out of
    # file descriptors mid-run; the figures were socket errors
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 4096))
    assert main([*BASE, "--concurrency", "1,5000", "--requests", "5000"]) == 2
    err = capsys.readouterr().err
    assert "--concurrency 5000" in err and "1024 open files" in err and err.count("\n") == 1


@pytest.mark.parametrize("flag, value", [("--minutes", "nan"), ("--minutes", "inf"),
                                         ("--sample-s", "nan"), ("--sample-s", "inf"),
                                         ("--warmup-frac", "nan"),
                                         ("--max-rss-growth", "nan"),
                                         ("--max-rss-growth", "inf")])
def test_soak_values_that_are_no_finite_number_are_refused(
        flag: str, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --minutes nan passed every check (nan <= 0 is false) and started the gateway; inf
    # soaked for ever; --max-rss-growth nan judged no growth too much
    import expertgate.bench.soak as soak

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the soak started")

    monkeypatch.setattr(soak, "run_soak", refuse)
    assert main(["bench", "soak", flag, value, "--out", "-"]) == 2
    _one_line(capsys, f"{flag} must be a finite number")


def test_soak_clients_beyond_the_open_files_limit_are_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import expertgate.bench.soak as soak

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the soak started")

    monkeypatch.setattr(soak, "run_soak", refuse)
    monkeypatch.setattr(resource, "getrlimit", lambda what: (1024, 4096))
    assert main(["bench", "soak", "--concurrency", "1000", "--out", "-"]) == 2
    _one_line(capsys, "--concurrency 1000")


def test_an_artifact_the_gateway_cannot_serve_is_refused_before_the_upstream(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --artifact FOLDER without router.json started the upstream stub and the floor, then
    # ended in 'error: RouterError: ...' (exit 1); one trained with --embedder hashing,
    # benchmarked with the default onnx gateway, failed the gateway's start
    import numpy as np

    from routers.artifacts import save_router
    from routers.base import RoutingTable, make_router
    from routers.embed import HashingEmbedder

    folder = tmp_path / "notart"
    folder.mkdir()
    assert main([*BASE, "--artifact", str(folder)]) == 2
    _one_line(capsys, "has no router.json")
    e = HashingEmbedder()
    texts = ["write python code", "tell me a joke", "fix this bug", "how are you"]
    S = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    r = make_router("knn", k=1).fit(e.embed(texts), RoutingTable(
        [f"p{i}" for i in range(4)], texts, ["a", "b"], S, np.zeros_like(S)))
    art = save_router(r, tmp_path / "art", embedder=e.name,
                      embedder_spec={"kind": "hashing", "options": {}})
    assert main(["bench", "overhead", "--skip-litellm", "--artifact", str(art)]) == 2
    _one_line(capsys, "--embedder hashing")


def test_no_load_generator_is_said_before_the_servers_start(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # without wrk the upstream, the floor and the gateway started, then the first warm-up
    # said 'wrk is not installed' (exit 1)
    import shutil

    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "wrk"
                        else real(name, *a, **k))
    assert main(BASE) == 2
    _one_line(capsys, "wrk is not installed")


def test_soak_out_naming_a_folder_is_refused_before_the_soak(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --out DIR soaked for the whole --minutes, printed PASS, then failed writing the JSON
    # (IsADirectoryError, exit 1): the run's figures lost
    import expertgate.bench.soak as soak

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the soak started")

    monkeypatch.setattr(soak, "run_soak", refuse)
    assert main(["bench", "soak", "--out", str(tmp_path)]) == 2
    _one_line(capsys, "it is a folder; name a file in it")


def test_a_plot_file_matplotlib_cannot_write_is_refused_before_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --plot figures.txt ran the benchmark, wrote the JSON, then failed in savefig ('Format
    # 'txt' is not supported', exit 1) before the table was printed
    assert main([*BASE, "--plot", str(tmp_path / "figures.txt")]) == 2
    _one_line(capsys, "--plot")
    assert main([*BASE, "--plot", str(tmp_path / "figures.txt")]) == 2
    assert "png" in capsys.readouterr().err


def test_an_embedder_the_gateway_under_test_cannot_build_is_refused_before_the_upstream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # --embedder distilled without the default build started the upstream stub and the
    # floor, then ended in 'error: EmbedderError: ... not built yet' (exit 1); --embedder
    # static, offered by --help, can never run (no flag names its model2vec folder)
    monkeypatch.setenv("EXPERTGATE_CACHE", str(tmp_path / "cache"))  # no default build
    assert main(["bench", "overhead", "--skip-litellm", "--embedder", "distilled"]) == 2
    _one_line(capsys, "expertgate embedder distill")
    assert main(["bench", "overhead", "--skip-litellm", "--embedder", "static"]) == 2
    _one_line(capsys, "--embedder static")
