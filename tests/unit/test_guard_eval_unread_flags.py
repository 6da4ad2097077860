"""``expertgate eval guard`` flags read only in one setting: elsewhere they were accepted and
the run went on without them (exit 0, no word). Now a usage error, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


def _table(tmp_path: Path) -> Path:
    rows = [("solve the equation", "math"), ("tell me a joke", "chat")] * 10
    f = tmp_path / "g.csv"
    f.write_text("text,label,split\n" + "".join(f"{t},{lab},train\n" for t, lab in rows)
                 + "what is two plus two,math,test\n")
    return f


@pytest.mark.parametrize(("argv", "says"), [
    (["--static-model", "DIR"], "--static-model needs --embedder static"),
    (["--methods", "guard-knn", "--cascade-back-layers", "3"],
     "--cascade-back-layers needs guard-cascade among the methods"),
])
def test_a_flag_the_run_would_not_read_is_refused(tmp_path: Path, capsys, argv: list[str],
                                                  says: str) -> None:
    out = tmp_path / "r.json"
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    assert main(["eval", "guard", "--data", str(_table(tmp_path)), "--embedder", "hashing",
                 *argv, "--json", str(out)]) == 2
    assert capsys.readouterr().err == f"expertgate eval guard: {says}\n"
    assert not out.exists()


def test_unseen_labels_with_a_suite_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    from evals import guard_eval as GE
    from evals.datasets.guard import load_guard_data

    # a suite built from a small table (no shared data read): --unseen-labels is a --data flag
    monkeypatch.setattr(GE, "load_suite", lambda name: load_guard_data(_table(tmp_path)))
    assert main(["eval", "guard", "--suite", "banking77", "--embedder", "hashing",
                 "--unseen-labels", "drop"]) == 2
    assert "--unseen-labels applies to --data only" in capsys.readouterr().err
