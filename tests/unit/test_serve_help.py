"""``expertgate serve --help`` says what the command does: each option that an
``EXPERTGATE_*`` variable also sets names it (the Docker image sets EXPERTGATE_HOST=0.0.0.0,
so "default 127.0.0.1" alone misled), and every option has a line."""

from __future__ import annotations

import re

import pytest

from expertgate.cli import main as cli


@pytest.fixture
def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli(["serve", "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("option, variable", [
    ("--config", "EXPERTGATE_CONFIG"), ("--host", "EXPERTGATE_HOST"),
    ("--port", "EXPERTGATE_PORT"), ("--redis-url", "EXPERTGATE_REDIS_URL"),
    ("--workers", "EXPERTGATE_WORKERS"), ("--log-level", "EXPERTGATE_LOG_LEVEL"),
])
def test_serve_help_names_the_variable_of_each_option(help_text: str, option: str,
                                                       variable: str) -> None:
    m = re.search(re.escape(option) + r" [A-Z_]+ (.*?)(?= --[a-z]|$)", help_text)
    assert m is not None, help_text
    assert variable in m.group(1), m.group(1)
