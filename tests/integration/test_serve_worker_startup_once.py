"""``expertgate serve --workers N``: a worker's start-up failure (a policy naming a missing
artifact) is said once, in one line: uvicorn's echo of it is filtered in every worker
process, not only in a single-process server. Real ``serve`` processes on 127.0.0.1. (The
same on a SIGHUP reload: ``test_serve_operator.py::
test_sighup_to_the_supervisor_with_a_bad_config_keeps_the_workers``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.integration.test_serve_operator import _serve

pytestmark = pytest.mark.integration


def _missing_artifact_config(base: str) -> dict[str, object]:
    return {"embedder": {"kind": "hashing"},
            "experts": [{"name": "a", "api_base": base}],
            "policies": [{"name": "learned", "router": "knn",
                          "artifact": "no/such/artifact"}]}


def test_workers_2_with_a_missing_artifact_is_one_line_once_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(_missing_artifact_config("http://127.0.0.1:9/v1")))
    p = _serve(path, "--port", "0", "--workers", "2")
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "does not exist" in ln]
    assert len(lines) == 1, p.stderr
    assert str(tmp_path / "no/such/artifact") in lines[0], p.stderr
