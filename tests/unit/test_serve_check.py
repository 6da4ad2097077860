"""``expertgate serve --check``: the start-up checks (config, embedder, artifacts, guards,
one warm-up decision per policy) without serving: exit 0 for a configuration that would
start, 2 with one line per problem for one that would not; the experts' and Redis's
reachability is information, never a problem, and no server is started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from expertgate.procs import free_port
from tests.unit.gateway_helpers import base_config
from tests.unit.test_shadow_canary import _always_coder

SAY = "expertgate serve --check:"


@pytest.fixture(autouse=True)
def _no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """--check must never reach the server (it would bind the port)."""
    import expertgate.cli.serve as serve

    def refuse(*a: Any, **k: Any) -> int:
        raise AssertionError("serve --check started the server")

    monkeypatch.setattr(serve, "_run", refuse)
    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    monkeypatch.delenv("EXPERTGATE_CONFIG", raising=False)


def _write(tmp_path: Path, cfg: dict[str, Any], name: str = "gw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _check(path: Path, *extra: str) -> int:
    from expertgate.cli import main

    return main(["serve", "--check", "--config", str(path), *extra])


def test_a_good_config_checks_ok_and_shows_unreachable_experts_as_information(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = _always_coder(tmp_path / "cand")
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: information only
    path = _write(tmp_path, base_config(down, down, candidate={
        "router": "knn", "artifact": str(art), "mode": "canary"}))
    assert _check(path, "--redis-url", f"redis://:pw-s3cret@127.0.0.1:{free_port()}/0") == 0
    out = capsys.readouterr()
    assert "problem" not in out.err
    assert f"{SAY} policy 'auto': built and decided the warm-up query" in out.out
    assert "embedder hashing: loaded" in out.out
    assert "information: expert 'coder' is not reachable" in out.out
    assert "information: 0 of 2 expert replica(s) answer GET /models" in out.out
    assert "Redis redis://***@127.0.0.1" in out.out and "pw-s3cret" not in out.out
    assert out.out.rstrip().endswith(f"{SAY} ok: the gateway would start with this "
                                     "configuration")


def test_a_broken_config_exits_2_with_one_line_per_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    up = "http://127.0.0.1:9/v1"
    cfg = base_config(up, up, candidate={"router": "knn", "artifact": str(tmp_path / "gone"),
                                         "mode": "canary"})
    cfg["policies"].append({"name": "second", "router": "knn",
                            "artifact": str(tmp_path / "missing")})
    path = _write(tmp_path, cfg)
    assert _check(path) == 2
    err = capsys.readouterr().err.splitlines()
    problems = [ln for ln in err if ln.startswith(f"{SAY} problem: ")]
    assert len(problems) == 2, err
    assert "policy 'auto' candidate: cannot load artifact" in problems[0]
    assert "policy 'second': cannot load artifact" in problems[1]
    assert err[-1] == f"{SAY} 2 problem(s): the gateway would not start"


def test_an_invalid_file_names_each_error(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {"experts": [{"name": "coder"}], "policies": [{"name": "p",
                                                                          "rooter": "knn"}]})
    assert _check(path) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    problems = [ln for ln in err.splitlines() if ln.startswith(f"{SAY} problem: ")]
    # one whole line per invalid field, each saying where
    assert len(problems) == 2, err
    assert all(f"{path}: invalid configuration: " in ln for ln in problems)
    assert any("rooter" in ln for ln in problems) and any("api_base" in ln for ln in problems)
    assert err.splitlines()[-1] == f"{SAY} 2 problem(s): the gateway would not start"


def test_the_host_check_default_stays_a_setting_of_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve turns the DNS-rebinding guard on (docs/security.md) through the settings it
    builds, not by writing EXPERTGATE_HOST_CHECK into os.environ: a process that runs the
    command in-process (these tests, an embedding tool) kept it for every gateway it built
    afterwards, so every later in-process gateway answered its clients' Host 403."""
    import expertgate.cli.serve as serve

    monkeypatch.delenv("EXPERTGATE_HOST_CHECK", raising=False)
    seen: list[bool] = []
    real = serve.check
    monkeypatch.setattr(serve, "check", lambda s: seen.append(s.host_check) or real(s))
    assert _check(_write(tmp_path, base_config("http://127.0.0.1:9", "http://127.0.0.1:9"))) \
        == 0
    assert seen == [True]
    import os

    assert "EXPERTGATE_HOST_CHECK" not in os.environ
    monkeypatch.setenv("EXPERTGATE_HOST_CHECK", "false")  # the environment still decides
    assert _check(_write(tmp_path, base_config("http://127.0.0.1:9", "http://127.0.0.1:9"))) \
        == 0
    assert seen == [True, False]
