"""``expertgate policy promote|revert --config PATH`` read PATH with ``read_text``: a FIFO
(a process substitution, ``--config <(...)``) never returned and ``/dev/zero`` read until
memory ran out, where the gateway's own loader (``load_config``) refuses both at once. The
command reads the file as the gateway does: one line naming it, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_that_is_no_regular_file_is_refused_at_once(tmp_path: Path,
                                                              kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "gw.yaml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from expertgate.cli import main; sys.exit(main())",
         "policy", "revert", "auto", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "EXPERTGATE_REDIS_URL"})
    assert p.returncode == 2, p.stderr
    assert f"expertgate policy revert: {path}: not a regular file" in p.stderr, p.stderr
