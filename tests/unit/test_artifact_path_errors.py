"""A policy's artifact path that is wrong says which way, in one line: a path that does not
exist, a file where the artifact folder is expected, a folder without router.json. The same
at start-up (load_config + build_policy_set, what ``serve`` runs before any worker) and at
a reload (POST /admin/reload: 400 config_invalid, the running configuration kept)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, load_config
from gateway.pipeline import build_policy_set
from routers.artifacts import load_router, read_manifest
from routers.base import RouterError
from routers.embed import HashingEmbedder
from tests.unit.gateway_helpers import base_config, gateway_client


def _layout(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not an artifact\n")
    (tmp_path / "emptydir").mkdir()


@pytest.mark.parametrize("fn", [read_manifest, load_router])
def test_each_wrong_path_says_what_is_wrong(tmp_path: Path, fn: object) -> None:
    _layout(tmp_path)
    cases = {"missing": "does not exist", "afile": "is a file, not a folder",
             "emptydir": "has no router.json"}
    for name, says in cases.items():
        with pytest.raises(RouterError) as e:
            fn(tmp_path / name)  # type: ignore[operator]
        msg = str(e.value)
        assert says in msg and str(tmp_path / name) in msg, msg
        assert "\n" not in msg
        others = [s for n, s in cases.items() if n != name]
        assert not any(s in msg for s in others), msg


def _policy_cfg(artifact: str) -> dict[str, object]:
    return {"embedder": {"kind": "hashing"},
            "experts": [{"name": "a", "api_base": "http://127.0.0.1:9/v1"}],
            "policies": [{"name": "learned", "router": "knn", "artifact": artifact}]}


@pytest.mark.parametrize(("given", "says"), [
    ("missing", "does not exist"), ("sub/missing", "does not exist"),
    ("ABS/missing", "does not exist"), ("afile", "is a file, not a folder"),
    ("ABS/afile", "is a file, not a folder"), ("emptydir", "has no router.json"),
    ("ABS/emptydir", "has no router.json")])
def test_a_policy_artifact_error_at_start_up(tmp_path: Path, given: str, says: str) -> None:
    cfg_dir = tmp_path / "conf"
    cfg_dir.mkdir()
    if given.startswith("ABS/"):
        _layout(tmp_path)
        artifact, resolved = str(tmp_path / given[4:]), tmp_path / given[4:]
    else:  # relative: against the config file's folder, not the working directory
        _layout(cfg_dir)
        artifact, resolved = given, cfg_dir / given
    path = cfg_dir / "gw.yaml"
    path.write_text(yaml.safe_dump(_policy_cfg(artifact)))
    cfg = load_config(path)
    with pytest.raises(ConfigError) as e:
        build_policy_set(cfg, HashingEmbedder())
    msg = str(e.value)
    assert says in msg and str(resolved) in msg and "\n" not in msg, msg


async def test_a_reload_naming_a_missing_artifact_is_400_config_invalid(
        ups: Any, tmp_path: Path) -> None:
    a, b = ups
    cfg = copy.deepcopy(base_config(a.base, b.base))
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    async with gateway_client(cfg, tmp_path, config=path) as (c, gw):
        before = gw.policy_set
        bad = copy.deepcopy(cfg)
        bad["policies"].append({"name": "learned", "router": "knn",
                                "artifact": "no/such/artifact"})
        path.write_text(yaml.safe_dump(bad))
        r = await c.post("/admin/reload")
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "config_invalid"
        assert "does not exist" in err["message"], err
        assert str(tmp_path / "no/such/artifact") in err["message"], err
        assert gw.policy_set is before
