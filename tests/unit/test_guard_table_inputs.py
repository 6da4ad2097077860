"""Guard tables as people have them: the errors name the file and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_guard_table_that_is_not_utf8_is_named_with_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    # a Latin-1 file (Excel's CSV export) gave "error: 'utf-8' codec can't decode byte 0xe9 in
    # position 2605": no file, no line
    rows = [("solve the equation", "math"), ("tell me a joke", "chat")] * 10
    if suffix == ".csv":
        body = "text,label,split\n" + "".join(f"{t},{lab},train\n" for t, lab in rows)
        bad = "caf\xe9 cr\xe8me,chat,train\n"
    else:
        body = "".join(f'{{"text": "{t}", "label": "{lab}"}}\n' for t, lab in rows)
        bad = '{"text": "caf\xe9", "label": "chat"}\n'
    f = tmp_path / f"g{suffix}"
    f.write_bytes(body.encode() + bad.encode("latin-1"))
    for argv in (["eval", "guard", "--data", str(f), "--embedder", "hashing"],
                 ["embedder", "tune", "--data", str(f), "--out", str(tmp_path / "t")],
                 ["train", "--router", "guard", "--format", "guard", "--data", str(f),
                  "--embedder", "hashing", "--out", str(tmp_path / "a")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        line = 22 if suffix == ".csv" else 21
        assert f"{f}: line {line} is not UTF-8" in err and err.count("\n") == 1, err


def test_test_rows_that_repeat_a_training_text_are_said(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a test row that repeats a training text (after case and spaces) is a query the guard
    # has seen: the test figures counted it as unseen without a word
    from evals.datasets.guard import load_guard_data

    lines = ["text,label,split"]
    for i in range(30):
        lines += [f"solve equation {i},math,train", f"tell joke {i},chat,train"]
    lines += ["Solve  equation 3,math,test", "tell joke 4,chat,test", "a new sum,math,test",
              "TELL JOKE 5,oos,test", "volcanoes,oos,test"]
    f = tmp_path / "g.csv"
    f.write_text("\n".join(lines) + "\n")
    data = load_guard_data(f)
    err = capsys.readouterr().err
    assert ("2 of 3 in-domain test rows and 1 of 2 OOD test rows repeat a training text"
            in err)
    assert len(data.test_texts) == 3  # said, not dropped: the file is the user's


@pytest.mark.parametrize("argv,message", [
    (["--typos", "2"], "--typos must lie in (0, 1] (a share of words), not 2.0"),
    (["--typos", "0"], "--typos must lie in (0, 1] (a share of words), not 0.0"),
    (["--augment-typos", "-1"],
     "--augment-typos must lie in [0, 1] (0: no augmentation), not -1.0"),
    (["--target-frr", "0.05,2"],
     "--target-frr takes rates in [0, 1), comma-separated, not '0.05,2'"),
    (["--layers", "0", "--embedder", "onnx"], "--layers must be at least 1, not 0"),
])
def test_eval_guard_rates_out_of_range_name_their_flag_before_the_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], message: str) -> None:
    # the table was read (and embedded) first, then 'the typo rate must lie in (0, 1]',
    # 'the typo augmentation rate ...' (though 0 is documented and taken: no augmentation),
    # 'target FRRs must lie in [0, 1)', 'layers must be an integer from 1 to 6': no flag named
    from evals import guard_eval

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(guard_eval, "load_guard_data", no_work)
    capsys.readouterr()
    assert main(["eval", "guard", "--data", str(tmp_path / "g.csv"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_eval_routing_typos_out_of_range_name_the_flag_before_the_table(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from evals import routing_eval

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(routing_eval, "load_routing_table", no_work)
    assert main(["eval", "routing", "--data", "synthetic:300x3", "--typos", "-1"]) == 2
    assert "--typos must lie in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("value", [",", "", " , "])
def test_eval_routing_routers_naming_none_is_refused(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        value: str) -> None:
    # --routers "" (an empty shell variable) or "," evaluated every family: the full run
    # (minutes on MMLU) instead of the few routers asked for
    from evals import routing_eval

    def no_work(*a: object, **k: object) -> None:
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(routing_eval, "load_routing_table", no_work)
    assert main(["eval", "routing", "--data", "synthetic:300x3", "--routers", value]) == 2
    assert "--routers names no router" in capsys.readouterr().err
