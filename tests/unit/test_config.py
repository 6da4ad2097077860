"""A bad config fails at start-up naming the file, the field and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, Settings, load_config

GOOD = {
    "experts": [{"name": "a", "api_base": "http://127.0.0.1:1/v1"},
                {"name": "b", "replicas": ["http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1"]},
                {"name": "a-lora", "parent": "a"}],
    "policies": [{"name": "auto", "routes": [
        {"name": "r1", "expert": "a", "examples": ["hello"]},
        {"name": "r2", "expert": "b", "description": "anything about maths"}]}],
}


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert [e.name for e in cfg.experts] == ["a", "b", "a-lora"]
    assert cfg.expert("b").bases == ["http://127.0.0.1:2/v1", "http://127.0.0.1:3/v1"]
    assert cfg.expert("a").upstream_model == "a"
    pol = cfg.policies[0]
    assert pol.router == "semantic" and pol.cache_ttl_s == 3600
    assert pol.on_reject.action == "error"
    assert len(cfg.digest) == 16


@pytest.mark.parametrize("mutate,where,why", [
    (lambda d: d["experts"][0].pop("api_base"), "experts[0](a)", "api_base or replicas"),
    (lambda d: d["experts"][0].update(timeout_s=-1), "experts[0](a).timeout_s",
     "greater than 0"),
    (lambda d: d["experts"][0].update(api_base="ftp://x"), "experts[0](a)", "http://"),
    (lambda d: d["experts"].append({"name": "a", "api_base": "http://x"}),
     "experts[3](a).name", "the same name as experts[0]"),
    (lambda d: d["policies"][0]["routes"][0].update(expert="zzz"),
     "policies[0](auto).routes[0](r1).expert", "no expert named 'zzz'"),
    (lambda d: d["policies"][0].update(fallback=["nope"]), "policies[0](auto).fallback[0]",
     "no expert named 'nope'"),
    (lambda d: d["policies"][0].update(router="knn"), "policies[0](auto)", "needs an artifact"),
    (lambda d: d["policies"][0].update(on_reject={"action": "fallback"}),
     "policies[0](auto).on_reject", "needs on_reject.expert"),
    (lambda d: d["policies"][0].update(colour="blue"), "policies[0](auto).colour",
     "Extra inputs"),
    (lambda d: d["experts"][2].update(parent="ghost"), "experts[2](a-lora).parent",
     "no expert named 'ghost'"),
    # Redis refuses an expiry past its range (read as Redis down); NaN rejects everything
    (lambda d: d["policies"][0].update(cache_ttl_s=1e16), "policies[0](auto).cache_ttl_s",
     "less than or equal"),
    (lambda d: d["policies"][0].update(params={"threshold": float("nan")}),
     "policies[0](auto).params", "must be finite"),
    (lambda d: d["policies"].append({"name": "a", "routes": GOOD["policies"][0]["routes"]}),
     "policies[1](a).name", "the name of experts[0] too"),
])
def test_bad_config_names_file_field_and_reason(tmp_path: Path, mutate, where: str, why: str
                                                ) -> None:
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msg = str(ei.value)
    assert str(p) in msg and where in msg and why in msg, msg


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3, column 1"):
        load_config(_write(tmp_path, "experts:\n  - {name: a\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- 1\n- 2\n"))


def test_relative_artifact_paths_resolve_against_the_config(tmp_path: Path) -> None:
    data = {"experts": GOOD["experts"],
            "policies": [{"name": "k", "router": "knn", "artifact": "arts/knn"}]}
    cfg = load_config(_write(tmp_path, data))
    assert cfg.policies[0].artifact == tmp_path.resolve() / "arts/knn"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPERTGATE_REDIS_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("EXPERTGATE_MAX_BODY_BYTES", "1234")
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6390/0" and s.max_body_bytes == 1234


def test_a_config_without_embedder_embeds_with_the_one_its_artifacts_were_trained_with(
        tmp_path: Path) -> None:
    """`expertgate train` records how to build its embedder; a config that names none serves
    the artifact with it instead of refusing it against the default. A config that names one
    keeps it, and artifacts that disagree leave the default (the start-up error names both)."""
    import pandas as pd

    from expertgate.cli import main
    from gateway.pipeline import build_policy_set
    from routers.embed import make_embedder
    from tests.unit.test_router_contract import synthetic_table

    _, table = synthetic_table(80, models=["cheap", "dear"], missing=False)
    csv = tmp_path / "t.csv"
    pd.DataFrame(table.to_long()).to_csv(csv, index=False)
    for name, emb in (("h", "hashing"), ("d", "hashing")):
        assert main(["train", "--data", str(csv), "--router", "knn", "--out",
                     str(tmp_path / name), "--embedder", emb,
                     "--cache-dir", str(tmp_path / "c")]) == 0
    experts = [{"name": m, "api_base": "http://127.0.0.1:9/v1"} for m in table.models]
    pol = {"name": "p", "router": "knn", "artifact": "h"}
    cfg = load_config(_write(tmp_path, {"experts": experts, "policies": [pol]}))
    assert cfg.embedder.kind == "hashing" and cfg.embedder_from == str(tmp_path.resolve() / "h")
    build_policy_set(cfg, make_embedder(cfg.embedder.kind, **cfg.embedder.options))
    # said in the config: kept, and the artifact is refused with both names
    cfg = load_config(_write(tmp_path, {"experts": experts, "policies": [pol],
                                        "embedder": {"kind": "distilled"}}))
    assert cfg.embedder.kind == "distilled" and cfg.embedder_from == ""
    # two artifacts with different records: the default stays
    manifest = tmp_path / "d" / "router.json"
    doc = json.loads(manifest.read_text())
    doc["embedder_spec"] = {"kind": "static", "options": {}}
    manifest.write_text(json.dumps(doc))
    cfg = load_config(_write(tmp_path, {"experts": experts, "policies": [
        pol, {"name": "q", "router": "knn", "artifact": "d"}]}))
    assert cfg.embedder.kind == "minilm" and cfg.embedder_from == ""
    with pytest.raises(ConfigError, match="trained with embedder"):
        build_policy_set(cfg, make_embedder("hashing", dim=7))


def test_the_embedder_record_is_read_from_the_artifact_the_config_names(
        tmp_path: Path, monkeypatch) -> None:
    """A relative artifact path is the config file's folder's, also for the embedder record:
    a folder of the same name under the working directory is not read."""
    for where, kind in ((tmp_path / "conf", "hashing"), (tmp_path / "cwd", "static")):
        (where / "art").mkdir(parents=True)
        (where / "art" / "router.json").write_text(json.dumps(
            {"embedder_spec": {"kind": kind, "options": {}}}))
    monkeypatch.chdir(tmp_path / "cwd")
    data = {"experts": GOOD["experts"],
            "policies": [{"name": "k", "router": "knn", "artifact": "art"}]}
    cfg = load_config(_write(tmp_path / "conf", data))
    assert cfg.embedder.kind == "hashing"
    assert cfg.embedder_from == str((tmp_path / "conf" / "art").resolve())
