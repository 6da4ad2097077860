"""``expertgate eval offpolicy`` refuses a flag of the mode it is not running (a flag
accepted and never read is a setting the user believes in)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(("extra", "message"), [
    (["--logs", "x.jsonl", "--router", "art", "--train", "knn", "--repeats", "5"],
     "--train, --repeats apply to --simulate only, not --logs"),
    (["--logs", "x.jsonl", "--router", "art", "--rate", "0.5"],
     "--rate applies to --simulate only, not --logs"),
    (["--simulate", "synthetic:40x2", "--policy", "auto"],
     "--policy applies to --logs only, not --simulate"),
    (["--simulate", "synthetic:40x2", "--router", "art", "--config", "gw.yaml"],
     "--router, --config apply to --logs only, not --simulate"),
    (["--simulate", "synthetic:40x2", "--out", "x.md"], "--out is the Markdown file of"),
])
def test_offpolicy_refuses_the_other_modes_flags(tmp_path: Path, capsys, extra: list[str],
                                                 message: str) -> None:
    """--logs with --train knn --repeats 5 --rate 0.5 ran and ignored all three (and
    --simulate ignored --policy, --router, --config): a flag accepted but never read."""
    from expertgate.cli import main

    assert main(["eval", "offpolicy", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--n", "0"], "--n must be at least 4 logged requests"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_simulate_refuses_no_requests_or_no_repeats(capsys, extra: list[str],
                                                     message: str) -> None:
    """--n 0 ended in 'error: ValueError: zero-size array to reduction operation maximum',
    --repeats 0 in 'error: TypeError: unsupported format string passed to NoneType'."""
    from expertgate.cli import main

    assert main(["eval", "offpolicy", "--simulate", "synthetic:100x2", *extra]) == 2
    assert message in capsys.readouterr().err
