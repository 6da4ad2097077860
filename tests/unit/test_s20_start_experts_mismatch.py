"""``serve --start-experts`` with a configuration whose experts are not the local models it
can start (smollm2, gemma3 on 127.0.0.1) is a flag that does not fit the file: it was said
only after the embedder and every policy had loaded, with exit 1 (a failure to start an
expert). It is said first, exit 2, as every other problem of the settings or the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from expertgate.cli import main as cli
from tests.unit.gateway_helpers import semantic_config_file


def test_a_config_start_experts_cannot_serve_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    p = semantic_config_file(tmp_path)
    monkeypatch.setenv("EXPERTGATE_LOG_PATH", str(tmp_path / "log.jsonl"))
    monkeypatch.delenv("EXPERTGATE_REDIS_URL", raising=False)
    rc = cli(["serve", "--config", str(p), "--start-experts", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert ("--start-experts starts only the local models smollm2, gemma3 on 127.0.0.1; "
            "expert 'coder'") in err, err
    assert "not reachable" not in err and "serving" not in err, err  # said first
