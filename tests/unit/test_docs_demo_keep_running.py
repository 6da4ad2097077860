"""``expertgate demo --keep-running``: when an expert or the gateway died under it, the demo
left its wait silently, printed "stopped: ..." and exited 0 as after a Ctrl-C."""

from __future__ import annotations

import subprocess
from typing import Any

from expertgate.cli.demo import _keep_running


class _Server:
    def __init__(self, name: str, proc: Any) -> None:
        self.name, self.proc = name, proc

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


def test_a_server_that_exits_by_itself_is_said_and_ends_the_wait_false() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    said: list[str] = []
    assert _keep_running([_Server("gemma3", dead)], said.append, poll_s=0.0) is False
    assert said and f"gemma3 (pid {dead.pid}) exited by itself (code 0)" in said[0]


def test_ctrl_c_ends_the_wait_true(monkeypatch: Any) -> None:
    class _Up:
        name, pid, proc = "smollm2", 1, None
        running = True

    def interrupt(_s: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("expertgate.cli.demo.time.sleep", interrupt)
    said: list[str] = []
    assert _keep_running([_Up()], said.append) is True
    assert said == []
