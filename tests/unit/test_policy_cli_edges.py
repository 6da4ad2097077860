"""``expertgate policy promote|revert`` on configuration files it cannot rewrite: a clear
message naming what is wrong and exit 2, the file untouched (never a Python exception)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
