"""``--data synthetic:NxM`` with a size no table has: synthetic:0x0 ended in 'IndexError:
index 0 is out of bounds' (exit 1) and synthetic:-5x2 in 'ValueError: negative dimensions',
and a mistyped size (synthetic:100000000x50, five billion cells) ran until the shared machine
ran out of memory. Each is now one line naming the spec (exit 2), before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.routing_eval import MAX_SYNTHETIC_CELLS, EvalError, load_routing_table
from expertgate.cli import main


@pytest.mark.parametrize("spec", ["synthetic:0x0", "synthetic:0x3", "synthetic:10x0",
                                  "synthetic:-5x2", "synthetic:100000000x50"])
def test_a_size_no_table_has_is_refused(spec: str) -> None:
    with pytest.raises(EvalError, match=spec):
        load_routing_table(spec)


def test_the_scale_tests_sizes_are_kept() -> None:
    assert MAX_SYNTHETIC_CELLS >= 36000 * 11
    t = load_routing_table("synthetic:40x3")
    assert len(t) == 40 and len(t.models) == 3


@pytest.mark.parametrize("command", ["train", "eval", "offpolicy"])
def test_train_and_eval_routing_exit_2(tmp_path: Path, capsys, command: str) -> None:
    args = {"train": ["train", "--router", "knn", "--out", str(tmp_path / "a"), "--data"],
            "eval": ["eval", "routing", "--quiet", "--data"],
            "offpolicy": ["eval", "offpolicy", "--simulate"]}[command]
    rc = main([*args, "synthetic:0x0", "--embedder", "hashing"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "synthetic:0x0" in err and "IndexError" not in err
