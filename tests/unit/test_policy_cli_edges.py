"""``expertgate policy promote|revert`` on configuration files it cannot rewrite: a clear
message naming what is wrong and exit 2, the file untouched (never a Python exception)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.gateway_helpers import knn_artifact

TEXTS = {
    # a candidate with no artifact (hand-edited): was "error: KeyError: 'artifact'", exit 1
    "no artifact": ("policies:\n- name: p\n  router: semantic\n  candidate: {router: knn}\n",
                    "candidate of policy 'p' has no artifact"),
    "no router": ("policies:\n- name: p\n  router: semantic\n  candidate: {artifact: a}\n",
                  "candidate of policy 'p' has no router"),
    # was "error: TypeError: string indices must be integers", exit 1
    "candidate not a mapping": ("policies:\n- name: p\n  router: semantic\n  candidate: knn\n",
                                "candidate of policy 'p' is not a mapping"),
    # was "error: AttributeError: 'list' object has no attribute 'get'", exit 1
    "file not a mapping": ("- a\n- b\n", "not a mapping of experts and policies"),
}


@pytest.mark.parametrize("case", sorted(TEXTS))
def test_promote_of_a_config_it_cannot_rewrite_says_why(tmp_path: Path, capsys,
                                                        case: str) -> None:
    from expertgate.cli import main

    text, message = TEXTS[case]
    path = tmp_path / "gw.yaml"
    path.write_text(text)
    assert main(["policy", "promote", "p", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Error" not in err
    assert path.read_text() == text


def _knn(tmp_path: Path, name: str, models: list[str]) -> Path:
    return knn_artifact(tmp_path / name, models, [[1.0, 0.0], [0.0, 1.0]],
                        ("fix this bug", "tell me a joke"))


def test_promote_refuses_a_models_map_the_candidate_does_not_read(tmp_path: Path,
                                                                   capsys) -> None:
    """The incumbent's models: {m-a: coder, m-b: chatter} stayed on the policy when a
    candidate trained on the experts' own names was promoted: the file was written and every
    gateway then refused it ('models maps m-a, m-b, which the router does not know')."""
    import yaml

    from expertgate.cli import main

    inc = _knn(tmp_path, "inc", ["m-a", "m-b"])
    cand = _knn(tmp_path, "cand", ["coder", "chatter"])
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                       {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
           "policies": [{"name": "p", "router": "knn", "artifact": str(inc),
                         "models": {"m-a": "coder", "m-b": "chatter"}, "fallback": ["coder"],
                         "candidate": {"router": "knn", "artifact": str(cand)}}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = path.read_text()
    assert main(["policy", "promote", "p", "--config", str(path)]) == 2
    assert "models: maps m-a, m-b, which it does not know" in capsys.readouterr().err
    assert path.read_text() == before
    # with the map written for the candidate (none needed here) the promotion goes ahead
    del cfg["policies"][0]["models"]
    path.write_text(yaml.safe_dump(cfg))
    assert main(["policy", "promote", "p", "--config", str(path)]) == 0


def test_promote_reads_a_relative_artifact_from_the_configs_folder(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """The gateway resolves a relative artifact path against the config file's folder; the
    promotion's check of the candidate's models read it against the working directory, so a
    promote run from elsewhere said 'cannot load the candidate's artifact'."""
    import yaml

    from expertgate.cli import main

    _knn(tmp_path, "inc", ["coder", "chatter"])
    _knn(tmp_path, "cand", ["coder", "chatter"])
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "coder", "api_base": "http://127.0.0.1:9/v1"},
                       {"name": "chatter", "api_base": "http://127.0.0.1:9/v1"}],
           "policies": [{"name": "p", "router": "knn", "artifact": "inc",
                         "fallback": ["coder"],
                         "candidate": {"router": "knn", "artifact": "cand"}}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["policy", "promote", "p", "--config", str(path)]) == 0, \
        capsys.readouterr().err
    assert yaml.safe_load(path.read_text())["policies"][0]["artifact"] == "cand"
