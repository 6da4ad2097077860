"""``expertgate eval guard``'s flag errors: one line, named, before any work; flags read only in
one setting were accepted elsewhere and the run went on without them (exit 0, no word)."""

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


def test_finetune_epochs_without_finetune_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --finetune-epochs is read only with --finetune: without it the run was a frozen one
    # that exited 0 without a word (a user asking for 3 epochs got none)
    f = _table(tmp_path)
    out = tmp_path / "r.json"
    assert main(["eval", "guard", "--data", str(f), "--embedder", "hashing",
                 "--finetune-epochs", "3", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "expertgate eval guard: --finetune-epochs needs --finetune\n"
    assert not out.exists()


@pytest.mark.parametrize("argv, says", [
    ([], "give exactly one of --suite NAME or --data PATH"),
    (["--data", "MISSING"], "guard table not found"),
    (["--data", "TABLE", "--quantize"], "--quantize needs --embedder onnx"),
    (["--data", "TABLE", "--layers", "2"], "--layers needs --embedder onnx"),
    (["--data", "TABLE", "--finetune"], "--embedder-path and --finetune need"),
])
def test_every_flag_error_names_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str], says: str) -> None:
    # some said "error: ..." and some nothing at all, unlike eval routing's
    # "expertgate eval routing: ..."
    f = _table(tmp_path)
    argv = [str(f) if a == "TABLE" else str(tmp_path / "nope.csv") if a == "MISSING" else a
            for a in argv]
    assert main(["eval", "guard", "--embedder", "hashing", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expertgate eval guard: ") and says in err, err
    assert err.count("\n") == 1, err


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
