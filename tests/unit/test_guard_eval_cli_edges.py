"""``expertgate eval guard`` flags a user gets slightly wrong: one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_guard_eval import _run_cli, _write_csv


@pytest.mark.parametrize("spec", [",", " , ,"])
def test_a_methods_list_naming_no_method_is_refused(
        spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "--methods ," ended in "no method can run on g: " (an empty reason), after loading
    # the data
    data = _write_csv(tmp_path / "g.csv")
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods", spec,
                     "--quiet"]) == 2
    assert "--methods names no method" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--save-selected", "--save-cascade"])
def test_a_save_folder_of_the_users_is_refused_before_the_run(
        flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a folder that is not a guard artifact was found out only after the whole evaluation
    # (and a two-stage guard's save removed it)
    data = _write_csv(tmp_path / "g.csv")
    mine = tmp_path / "models"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods",
                     "guard-knn,guard-cascade", flag, str(mine), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not a guard artifact" in err and "choose another output folder" in err
    assert "embedding" not in err.lower()
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_seed_outside_the_report_seeds_is_not_called_a_report_seed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --seed-set report --seed 0 ran on the development seed and wrote a JSON whose
    # provenance said kind "report" (a report renders it "Seed 0 (report)")
    from evals.provenance import REPORT_SEEDS

    data = _write_csv(tmp_path / "g.csv")
    common = ["--data", str(data), "--embedder", "hashing", "--methods", "guard-knn",
              "--latency-sample", "0", "--quiet", "--seed-set", "report"]
    assert _run_cli([*common, "--seed", "0"]) == 2
    assert "--seed 0 is not a report seed" in capsys.readouterr().err
    assert _run_cli([*common, "--seed", str(REPORT_SEEDS[1])]) == 0


def test_a_method_or_operating_point_named_twice_runs_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # "--methods guard-knn,guard-knn --target-frr 0.05,0.05" fitted the method twice and
    # wrote target_frr [0.05, 0.05] with the rows named guard-knn@0.05
    import json

    data = _write_csv(tmp_path / "g.csv")
    out = tmp_path / "r.json"
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods",
                     "guard-knn,guard-knn", "--target-frr", "0.05,0.05", "--latency-sample",
                     "0", "--quiet", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["methods"]) == ["guard-knn"] and res["target_frr"] == 0.05
    assert res["selected"]["criterion"] == "the only candidate"


def test_the_recorded_command_runs_as_it_is_written(tmp_path: Path) -> None:
    # the result's command wrote "--select in_domain_accuracy@ood_accuracy>=0.5" unquoted:
    # pasted into a shell, '>' redirected and the rerun selected with another criterion
    # (or failed); a path with a space split in two
    import json
    import shlex

    folder = tmp_path / "my data"
    folder.mkdir()
    data = _write_csv(folder / "g.csv")
    out = tmp_path / "r.json"
    crit = "in_domain_accuracy@ood_accuracy>=0.5"
    assert _run_cli(["--data", str(data), "--embedder", "hashing", "--methods", "guard-knn",
                     "--latency-sample", "0", "--quiet", "--select", crit,
                     "--json", str(out)]) == 0
    argv = shlex.split(json.loads(out.read_text())["command"])
    assert argv[argv.index("--select") + 1] == crit
    assert argv[argv.index("--data") + 1] == str(data)
