"""CLI commands given a Redis that does not answer: one line naming the Redis (its password
masked) and why, and the command's exit code for its environment, never a bare
``error: ConnectionError ...`` with exit 1."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from expertgate.cli import main
from tests.unit.gateway_helpers import knn_artifact


@pytest.fixture
def dead_redis_url() -> str:
    """A Redis URL with a password on a loopback port nothing listens on (bound, then freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://:s3cret-pw@127.0.0.1:{port}/0"


def _one_line_naming(err: str, url: str, command: str) -> str:
    line = err.strip().splitlines()[-1]
    masked = url.replace("s3cret-pw", "***")
    assert "s3cret-pw" not in err
    assert line.startswith(f"expertgate {command}: Redis redis://")
    assert url.rsplit("@", 1)[1] in line and "ConnectionError" in line
    assert "(EXPERTGATE_DEBUG" not in err and "error: ConnectionError" not in err
    assert masked.split("@")[1] in line
    return line


@pytest.mark.parametrize("command,consequence", [
    (["keys", "add", "--name", "t"], "the key is not stored"),
    (["keys", "revoke"], "the key is not revoked"),
])
def test_keys_name_an_unreachable_redis_and_exit_2(dead_redis_url: str, capsys,
                                                   command: list[str], consequence: str
                                                   ) -> None:
    assert main([*command, "--key", "sk-1", "--redis-url", dead_redis_url]) == 2
    line = _one_line_naming(capsys.readouterr().err, dead_redis_url, " ".join(command[:2]))
    assert line.endswith(consequence)


def test_logs_export_names_an_unreachable_redis_and_exits_2(dead_redis_url: str,
                                                            tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.parquet"
    assert main(["logs", "export", "--redis-url", dead_redis_url, "--out", str(out)]) == 2
    line = _one_line_naming(capsys.readouterr().err, dead_redis_url, "logs export")
    assert line.endswith(f"{out} not written") and not out.exists()


def test_policy_revert_names_an_unreachable_redis(dead_redis_url: str, tmp_path: Path,
                                                  capsys) -> None:
    """The file is written before Redis is asked: exit 1 (as a failed reload), the line
    saying the end is not recorded and what to do."""
    import yaml


    arts = {name: str(knn_artifact(tmp_path / name, ["coder", "chatter"],
                                   [[1.0, 0.0], [0.0, 1.0]], ("fix this bug", "tell me a joke")))
            for name in ("inc", "cand")}
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                       {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
           "policies": [{"name": "p", "router": "knn", "artifact": arts["inc"],
                         "fallback": ["coder"],
                         "candidate": {"router": "knn", "artifact": arts["cand"]}}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["policy", "revert", "p", "--config", str(path),
                 "--redis-url", dead_redis_url]) == 1
    line = _one_line_naming(capsys.readouterr().err, dead_redis_url, "policy revert")
    assert "the end is not recorded" in line and "reload every gateway" in line
    assert "candidate" not in yaml.safe_load(path.read_text())["policies"][0]
