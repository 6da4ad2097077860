"""``expertgate demo --port P`` (examples/README.md) with P already taken: the gateway it
started could not bind, but the demo polled P, found the other server's /healthz answering,
called its own gateway ready and sent the seven prompts to that other server. A port in use
is now said before anything starts, and no child server ever takes a port another process
holds for its own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from expertgate.procs import GatewayServer, LlamaServer, LocalExpertError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.fixture
def no_children(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr("subprocess.Popen", refuse)


def test_demo_on_a_port_in_use_starts_nothing_and_says_so(
        busy_port: int, no_children: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    rc = main(["demo", "--config", str(EXAMPLES / "demo-local.yaml"), "--port",
               str(busy_port), "--work-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"port {busy_port} is already in use" in err


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_demo_with_a_port_out_of_range_starts_nothing(
        port: str, no_children: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    rc = main(["demo", "--config", str(EXAMPLES / "demo-local.yaml"), "--port", port,
               "--work-dir", str(tmp_path)])
    assert rc == 2
    assert "--port must be between 0 (a free one) and 65535" in capsys.readouterr().err


@pytest.mark.parametrize("tokens", ["0", "-3"])
def test_demo_with_no_tokens_to_answer_with_starts_nothing(
        tokens: str, no_children: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--max-tokens 0 started both experts and the gateway, then every prompt failed."""
    from expertgate.cli import main

    rc = main(["demo", "--config", str(EXAMPLES / "demo-local.yaml"), "--max-tokens", tokens,
               "--work-dir", str(tmp_path)])
    assert rc == 2
    assert "--max-tokens must be at least 1" in capsys.readouterr().err


def test_a_child_server_refuses_a_port_another_process_listens_on(
        busy_port: int, no_children: None, tmp_path: Path) -> None:
    gw = GatewayServer(EXAMPLES / "demo-local.yaml", port=busy_port,
                       log_path=tmp_path / "gw.log")
    with pytest.raises(LocalExpertError, match=f"port {busy_port} is already in use"):
        gw.start(wait=False)
    assert gw.pid is None
    llama = LlamaServer.for_model("smollm2", port=busy_port, log_path=tmp_path / "s.log")
    with pytest.raises(LocalExpertError, match="already in use"):
        llama.start(wait=False)


def test_demo_with_a_work_dir_it_cannot_write_starts_nothing(
        no_children: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was "error: FileNotFoundError: [Errno 2] No such file or directory: ..."."""
    from expertgate.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = main(["demo", "--config", str(EXAMPLES / "demo-local.yaml"), "--work-dir",
               str(blocker / "demo")])
    assert rc == 2
    assert f"cannot use --work-dir {blocker / 'demo'}" in capsys.readouterr().err


def test_demo_outside_the_checkout_says_where_it_looked(
        no_children: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from expertgate.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert f"no config file examples/demo-local.yaml in {tmp_path}" in err
    assert "pass --config FILE" in err
