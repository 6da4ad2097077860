"""``expertgate eval report --check`` reads the documents' generated blocks and the run files
each names; flags it does not read are refused rather than dropped."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from evals import report as R


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    R.cli_register(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.mark.parametrize("flag", ["--runs", "--out"])
def test_check_refuses_runs_and_out(tmp_path: Path, capsys, flag: str) -> None:
    """`eval report --check --runs MYRUNS` exited 0 having read neither MYRUNS nor --out: a
    user checking their own runs was told everything was up to date."""
    assert _run(["--check", flag, str(tmp_path), "--docs"]) == 2
    assert "--runs and --out are not read with it" in capsys.readouterr().err


def test_check_alone_still_checks() -> None:
    assert _run(["--check", "--docs"]) == 0
