"""``expertgate route`` with a config whose ``embedder.options`` the embedder refuses: serve
says it as the config's error (file, key, exit 2); route built the embedder outside its
config checks and ended with the generic error line, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertgate.cli import main
from tests.unit.gateway_helpers import semantic_config_file


def test_route_names_a_bad_embedder_option_as_the_config_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = semantic_config_file(tmp_path)
    cfg = yaml.safe_load(p.read_text())
    cfg["embedder"] = {"kind": "hashing", "options": {"dim": 0}}
    p.write_text(yaml.safe_dump(cfg))
    assert main(["route", "--config", str(p), "write python code"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("expertgate route: ") and "embedder.options" in err
    assert "Traceback" not in err and err.count("\n") == 1
