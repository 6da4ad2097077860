"""A forked worker does not outlive a parent killed without a chance to shut its pool down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from routers.workers import die_with_parent
    init = {"with": dict(initializer=die_with_parent, initargs=(os.getpid(),)),
            "without": {}}[sys.argv[1]]
    ex = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), **init)
    print(ex.submit(os.getpid).result(), flush=True)
    time.sleep(60)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
@pytest.mark.parametrize("mode", ["with", "without"])
def test_a_worker_dies_with_its_killed_parent(mode: str, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                            text=True, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    worker = 0
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        assert _alive(worker)
        proc.send_signal(signal.SIGKILL)  # no pool shutdown, no atexit
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if mode == "with":
            assert not _alive(worker)
        else:  # what the initializer is for: without it the worker stays
            assert _alive(worker)
    finally:
        if proc.poll() is None:
            proc.kill()
        if worker and _alive(worker):
            os.kill(worker, signal.SIGKILL)  # the worker this test started
