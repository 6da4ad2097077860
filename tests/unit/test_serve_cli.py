"""`expertgate serve` start-up: it names every expert it cannot reach, and --start-experts
refuses experts that are not the project's local models (before starting anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expertgate.cli import main as cli
from expertgate.cli.serve import unreachable_experts
from expertgate.procs import free_port
from gateway.config import parse_config


async def test_unreachable_experts_are_named(ups) -> None:
    import asyncio

    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = parse_config({"experts": [{"name": "coder", "api_base": ups[0].base},
                                    {"name": "ghost", "api_base": dead},
                                    {"name": "ghost-lora", "parent": "ghost"}]})
    lines = await asyncio.to_thread(unreachable_experts, cfg)
    assert len(lines) == 1
    assert lines[0].startswith(f"expert 'ghost' is not reachable at {dead} (")


def test_start_experts_refuses_an_expert_it_cannot_start(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    cfg = {"embedder": {"kind": "hashing"},
           "experts": [{"name": "smollm2", "api_base": f"http://127.0.0.1:{free_port()}/v1"},
                       {"name": "gpt-4o", "api_base": "https://api.example.invalid/v1"}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the flag does not fit the file: a usage error, said first (test_s20_start_experts_mismatch)
    assert cli(["serve", "--config", str(path), "--start-experts"]) == 2
    err = capsys.readouterr().err
    assert "expert 'gpt-4o'" in err and "start it yourself" in err
    assert "starting expert" not in err  # refused before anything was started
