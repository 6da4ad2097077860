"""``serve --workers N`` keeps prometheus_client's files in a directory of its supervisor's
own under ``$TMPDIR``; a supervisor killed with SIGKILL never removes it, so the next start
removes those whose supervisor is gone, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from expertgate.cli.serve import METRICS_DIR_PREFIX, remove_stale_metrics_dirs


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait(timeout=30)
    return p.pid


def test_only_metrics_dirs_of_gone_supervisors_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-a1b_c2"
    stale.mkdir(mode=0o700)
    (stale / "counter_123.db").write_bytes(b"x" * 16)
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-zz9"  # a running supervisor's
    live.mkdir()
    kept = [
        live,
        tmp_path / f"{METRICS_DIR_PREFIX}k3j_x9q2",  # the older naming: owner unknown
        tmp_path / f"{METRICS_DIR_PREFIX}0-abc",  # pid 0 is no supervisor
        tmp_path / f"{METRICS_DIR_PREFIX}99999999999-abc",  # no pid is that large
        tmp_path / f"other-{METRICS_DIR_PREFIX}{dead}-abc",  # not the gateway's naming
        tmp_path / f"{METRICS_DIR_PREFIX}{dead}-abc.bak",
    ]
    for d in kept[1:]:
        d.mkdir()
    not_a_dir = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-file"
    not_a_dir.write_text("keep")
    link = tmp_path / f"{METRICS_DIR_PREFIX}{dead}-link"
    target = tmp_path / "target"
    target.mkdir()
    (target / "data").write_text("keep")
    link.symlink_to(target)

    assert remove_stale_metrics_dirs(tmp_path) == [stale]
    assert not stale.exists()
    assert all(d.is_dir() for d in kept)
    assert not_a_dir.read_text() == "keep"
    assert link.is_symlink() and (target / "data").read_text() == "keep"
    assert remove_stale_metrics_dirs(tmp_path) == []  # nothing left to remove
    assert remove_stale_metrics_dirs(tmp_path / "missing") == []
