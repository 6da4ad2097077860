"""``expertgate policy promote|revert`` on a configuration reached through a symlink (a
deploy folder's link to the file in a checkout): the rewrite renamed its new file over the
link, so the link became a private copy and the real file, which other gateways and the
checkout read, kept the candidate. The real file is rewritten now, the link kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from expertgate.cli import main
from tests.unit.gateway_helpers import knn_artifact


@pytest.mark.parametrize("action", ["promote", "revert"])
def test_a_symlinked_config_is_rewritten_at_its_target(tmp_path: Path, capsys,
                                                       action: str) -> None:
    for name in ("inc", "cand"):
        knn_artifact(tmp_path / name, ["coder", "chatter"], [[1.0, 0.0], [0.0, 1.0]],
                     ("fix this bug", "tell me a joke"))
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                       {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
           "policies": [{"name": "p", "router": "knn", "artifact": str(tmp_path / "inc"),
                         "fallback": ["coder"],
                         "candidate": {"router": "knn", "artifact": str(tmp_path / "cand")}}]}
    (tmp_path / "deploy").mkdir()
    real = tmp_path / "deploy" / "prod.yaml"
    real.write_text(yaml.safe_dump(cfg))
    real.chmod(0o640)
    link = tmp_path / "gw.yaml"
    link.symlink_to(os.path.join("deploy", "prod.yaml"))
    assert main(["policy", action, "p", "--config", str(link)]) == 0, capsys.readouterr().err
    assert link.is_symlink() and link.resolve() == real.resolve()
    pol = yaml.safe_load(real.read_text())["policies"][0]
    assert "candidate" not in pol
    assert pol["artifact"] == str(tmp_path / ("cand" if action == "promote" else "inc"))
    assert real.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in real.parent.iterdir()) == ["prod.yaml"]  # no temp file left
