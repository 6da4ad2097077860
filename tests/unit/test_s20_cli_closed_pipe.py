"""``expertgate routers list | head -3`` (any command's output cut short by a reader that has
read enough) ended in ``expertgate routers list: error: BrokenPipeError: [Errno 32] Broken
pipe (EXPERTGATE_DEBUG=1 shows the traceback)`` and exit 1: the crash path, for what every
Unix tool takes quietly. The command stops without a word, with the status of a process a
closed pipe ends (141, 128 + SIGPIPE)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    env = {**os.environ}
    env.pop("EXPERTGATE_DEBUG", None)
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the command writes a line
    try:
        p = subprocess.run(
            [sys.executable, "-c",
             "import sys; from expertgate.cli import main; sys.exit(main())",
             "routers", "list"],
            cwd=ROOT, env=env, stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 141, p.stderr
    assert p.stderr == "", p.stderr


def test_a_broken_pipe_elsewhere_is_still_an_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # a socket's EPIPE (a benchmark's upstream went away) is no reader leaving: said
    import routers.base
    from expertgate.cli import main as cli

    def broken() -> list[str]:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(routers.base, "registered_names", broken)
    assert cli(["routers", "list"]) == 1
    assert "error: BrokenPipeError" in capsys.readouterr().err
