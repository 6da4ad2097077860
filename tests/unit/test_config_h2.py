"""Config defects of report h2: what used to load silently (or crash later) is refused at
load with the file, the key and why; settings name their variable."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from gateway.config import ConfigError, Settings, load_config, settings_errors

DIGEST_A = "a" * 64
BASE: dict[str, Any] = {
    "embedder": {"kind": "hashing"},
    "experts": [{"name": "a", "api_base": "http://127.0.0.1:1/v1"},
                {"name": "b", "api_base": "http://127.0.0.1:2/v1"}],
    "policies": [{"name": "auto", "routes": [
        {"name": "r1", "expert": "a", "examples": ["hello"]},
        {"name": "r2", "expert": "b", "examples": ["maths"]}]}],
    "api_keys": [{"name": "tenantA", "sha256": DIGEST_A, "policies": ["auto"]}],
}


def _cfg(**over: Any) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    d.update(over)
    return d


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "gw.yaml"
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _refused(tmp_path: Path, data: object) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(_write(tmp_path, data))
    msg = str(ei.value)
    assert str(tmp_path / "gw.yaml") in msg
    return msg


def test_base_config_loads(tmp_path: Path) -> None:
    load_config(_write(tmp_path, BASE))


# D2 ------------------------------------------------------------------------------------
def test_a_duplicate_key_digest_is_refused_naming_both_entries(tmp_path: Path) -> None:
    keys = [*BASE["api_keys"], {"name": "tenantD", "sha256": DIGEST_A, "admin": True}]
    msg = _refused(tmp_path, _cfg(api_keys=keys))
    assert "api_keys[1](tenantD).sha256: same key as api_keys[0](tenantA)" in msg


# D3 ------------------------------------------------------------------------------------
def test_duplicate_yaml_keys_are_refused_with_the_key_and_line(tmp_path: Path) -> None:
    text = ("experts:\n"
            "  - {name: a, api_base: 'http://127.0.0.1:1/v1'}\n"
            "  - {name: b, api_base: 'http://127.0.0.1:2/v1'}\n"
            "policies: []\n"
            "experts:\n"
            "  - {name: a, api_base: 'http://127.0.0.1:2/v1'}\n")
    msg = _refused(tmp_path, text)
    assert "duplicate key 'experts'" in msg and "line 5" in msg and "first at line 1" in msg
    text = ("experts:\n  - {name: a, api_base: 'http://127.0.0.1:1/v1'}\n"
            "api_keys:\n  - name: k\n    sha256: " + DIGEST_A + "\n"
            "    admin: false\n    admin: true\n")
    assert "duplicate key 'admin'" in _refused(tmp_path, text)


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    text = ("base: &b {name: a, api_base: 'http://127.0.0.1:1/v1', timeout_s: 5}\n"
            "experts:\n  - <<: *b\n    timeout_s: 9\n")
    with pytest.raises(ConfigError, match="base"):  # an unknown top-level key, not a dup
        load_config(_write(tmp_path, text))
    text = ("experts:\n  - &b {name: a, api_base: 'http://127.0.0.1:1/v1', timeout_s: 5}\n"
            "  - <<: *b\n    name: c\n    timeout_s: 9\n")
    cfg = load_config(_write(tmp_path, text))
    assert [(e.name, e.timeout_s) for e in cfg.experts] == [("a", 5), ("c", 9)]


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    text = ("experts:\n  - name: a\n    api_base: 'http://127.0.0.1:1/v1'\n"
            "policies:\n  - name: p\n    routes: [{name: r, expert: a, examples: [hi]}]\n"
            "    params:\n" + "".join(f"      {ln}\n" for ln in lines))
    t = time.perf_counter()
    msg = _refused(tmp_path, text)
    assert time.perf_counter() - t < 5
    assert "aliases" in msg and "expand" in msg


# D4 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("experts, why", [
    ([{"name": "c", "parent": "c"}], "its own parent"),
    ([{"name": "d", "parent": "e"}, {"name": "e", "parent": "d"}], "cycle"),
    ([{"name": "f", "parent": "g"}, {"name": "g", "parent": "a"}], "has no api_base"),
])
def test_an_adapter_parent_must_be_a_served_expert(tmp_path: Path, experts: list[Any],
                                                   why: str) -> None:
    msg = _refused(tmp_path, _cfg(experts=[*BASE["experts"], *experts]))
    assert f"({experts[0]['name']}).parent" in msg and why in msg


# D5 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:notaport/v1", "port 'notaport' is not a number"),
    ("http://127.0.0.1:99999/v1", "port '99999' is not a number in 1..65535"),
    ("http://127.0.0.1:0/v1", "1..65535"),
    ("http://", "no host"),
    ("ftp://127.0.0.1/v1", "must start with http:// or https://"),
    ("http://svc:12/s3cr3tz@127.0.0.1:18801/v1", "percent-encode"),
    ("http://svc:Pa55/s3cr3tz@127.0.0.1:18801/v1", "%2F"),
])
def test_expert_urls_are_validated_at_load(tmp_path: Path, url: str, why: str) -> None:
    experts = [{"name": "a", "api_base": url}, BASE["experts"][1]]
    msg = _refused(tmp_path, _cfg(experts=experts))
    assert "experts[0](a)" in msg and "api_base" in msg and why in msg
    assert "s3cr3tz" not in msg and "Pa55" not in msg  # never the password


def test_a_bad_replica_url_names_the_replica(tmp_path: Path) -> None:
    experts = [{"name": "a", "replicas": ["http://127.0.0.1:1/v1", "http://x:y/v1"]},
               BASE["experts"][1]]
    assert "replicas[1]" in _refused(tmp_path, _cfg(experts=experts))


def test_an_encoded_password_still_works(tmp_path: Path) -> None:
    experts = [{"name": "a", "api_base": "http://svc:12%2Fword@127.0.0.1:18801/v1"},
               BASE["experts"][1]]
    cfg = load_config(_write(tmp_path, _cfg(experts=experts)))
    e = cfg.experts[0]
    assert e.bases == ["http://127.0.0.1:18801/v1"]
    assert e.upstream_headers(e.bases[0])["authorization"].startswith("Basic ")


# D6 ------------------------------------------------------------------------------------
def test_a_non_utf8_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    msg = _refused(tmp_path, b"\xff\xfe\x00garbage\x80")
    assert "not UTF-8" in msg and "\n" not in msg


# D11 -----------------------------------------------------------------------------------
def test_key_allow_lists_must_name_existing_policies_and_experts(tmp_path: Path) -> None:
    keys = [{"name": "tenantB", "sha256": DIGEST_A, "policies": ["AUTO"]}]
    msg = _refused(tmp_path, _cfg(api_keys=keys))
    assert "api_keys[0](tenantB).policies: no policy named 'AUTO'" in msg
    keys = [{"name": "tenantB", "sha256": DIGEST_A, "experts": ["a", "nosuch"]}]
    msg = _refused(tmp_path, _cfg(api_keys=keys))
    assert "api_keys[0](tenantB).experts: no expert named 'nosuch'" in msg
    keys = [{"name": "t", "sha256": DIGEST_A, "policies": ["*"], "experts": ["*"]}]
    load_config(_write(tmp_path, _cfg(api_keys=keys)))


# D15 -----------------------------------------------------------------------------------
def test_an_unknown_router_family_is_reported_as_unknown(tmp_path: Path) -> None:
    pol = {"name": "p", "router": "nosuchfamily", "routes": BASE["policies"][0]["routes"]}
    msg = _refused(tmp_path, _cfg(policies=[pol]))
    assert "unknown router family 'nosuchfamily'" in msg and "knn" in msg
    assert "needs an artifact" not in msg
    pol = {"name": "p", "router": "knn", "artifact": "art",
           "candidate": {"router": "nosuch", "artifact": "art"}}
    assert "unknown router family 'nosuch'" in _refused(tmp_path, _cfg(policies=[pol]))


# D9 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("var, value", [
    ("MAX_BODY_BYTES", "-1"), ("REQUEST_DEADLINE_S", "-5"), ("MAX_CONNECTIONS", "0"),
    ("DECISION_CACHE_SIZE", "-1"), ("HEADER_TIMEOUT_S", "0"), ("WORKERS", "0"),
    ("LOG_LEVEL", "bogus"), ("METRICS_AUTH", "none"), ("PORT", "abc"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                        value: str) -> None:
    monkeypatch.setenv(f"EXPERTGATE_{var}", value)
    with pytest.raises(ValidationError) as ei:
        Settings()
    lines = settings_errors(ei.value)
    assert len(lines) == 1 and lines[0].startswith(f"EXPERTGATE_{var}: ")


# D8 ------------------------------------------------------------------------------------
def _knn_artifact(path: Path) -> Path:
    import numpy as np

    from routers.artifacts import save_router
    from routers.base import RoutingTable, make_router
    from routers.embed import HashingEmbedder

    emb = HashingEmbedder()
    prompts = [f"explain topic {i}" for i in range(12)]
    S = np.tile([0.9, 0.5], (12, 1))
    table = RoutingTable([f"p{i}" for i in range(12)], prompts, ["a", "b"], S,
                         np.tile([1.0, 0.1], (12, 1)), ["general"] * 12)
    r = make_router("knn", k=3).fit(emb.embed(prompts), table)
    return save_router(r, path, embedder=emb.name)


@pytest.fixture(scope="module")
def knn_art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _knn_artifact(tmp_path_factory.mktemp("knn") / "art")


def _build(tmp_path: Path, pol: dict[str, Any]) -> None:
    from gateway.pipeline import build_policy_set
    from routers.embed import HashingEmbedder

    cfg = load_config(_write(tmp_path, _cfg(policies=[pol], api_keys=[])))
    build_policy_set(cfg, HashingEmbedder())


@pytest.mark.parametrize("params, key", [
    ({"k": -3}, "k"), ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"k": "7"}, "k"),
    ({"temperature": -1}, "temperature"), ({"temperature": 0}, "temperature"),
    ({"threshold": 7}, "threshold"), ({"prior_strength": -1}, "prior_strength"),
    ({"cost_weight": -0.5}, "cost_weight"), ({"cost_model": "bogus"}, "cost_model"),
])
def test_router_params_on_an_artifact_are_range_checked(tmp_path: Path, knn_art: Path,
                                                        params: dict[str, Any],
                                                        key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _build(tmp_path, {"name": "p", "router": "knn", "artifact": str(knn_art),
                          "params": params})
    msg = str(ei.value)
    assert "policy 'p'" in msg and f"params: knn: {key}" in msg


def test_good_params_on_an_artifact_apply(tmp_path: Path, knn_art: Path) -> None:
    _build(tmp_path, {"name": "p", "router": "knn", "artifact": str(knn_art),
                      "params": {"k": 5, "temperature": 0.1, "threshold": 0.05}})


@pytest.mark.parametrize("params, key", [
    ({"threshold": 5}, "threshold"), ({"threshold": -3}, "threshold"),
    ({"threshold": "abc"}, "threshold"), ({"top_k": 0}, "top_k"),
])
def test_semantic_params_are_range_checked_before_warm_up(tmp_path: Path,
                                                          params: dict[str, Any],
                                                          key: str) -> None:
    pol = {**BASE["policies"][0], "name": "p", "params": params}
    with pytest.raises(ConfigError) as ei:
        _build(tmp_path, pol)
    assert "policy 'p'" in str(ei.value) and f"params: semantic: {key}" in str(ei.value)


def test_a_failed_set_params_keeps_the_old_values(knn_art: Path) -> None:
    from routers.artifacts import load_router
    from routers.base import RouterError

    r = load_router(knn_art)
    with pytest.raises(RouterError):
        r.set_params(k=7, temperature=-1)
    assert r.get_params()["k"] == 3
