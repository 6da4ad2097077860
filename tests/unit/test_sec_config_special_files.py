"""A configuration path that reaches a device or a pipe (a symlink to ``/dev/zero`` left by
a deploy script, a FIFO): ``POST /admin/reload`` read ``/dev/zero`` without end (the
gateway's memory grew by ~100 MB/s until it was killed) and a FIFO never returned, holding
the reload lock so every later reload waited. Such a file, or one far larger than any
configuration, is refused at once; the running configuration keeps serving."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from gateway import config as gconfig
from gateway.config import ConfigError, load_config
from tests.unit.gateway_helpers import base_config, gateway_client


def test_a_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "gw.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(link)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "gw.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)


def test_a_huge_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gconfig, "MAX_CONFIG_BYTES", 1024)
    big = tmp_path / "gw.yaml"
    big.write_text("# " + "x" * 2000 + "\nexperts: []\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_a_directory_still_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration file: Is a directory"):
        load_config(tmp_path)


async def test_reload_of_a_config_turned_into_a_device_is_a_400(ups, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    cfg = base_config(ups[0].base, ups[1].base)
    path.write_text(yaml.safe_dump(cfg))
    async with gateway_client(cfg, tmp_path, config=path) as (c, _):
        path.unlink()
        path.symlink_to("/dev/zero")
        r = await c.post("/admin/reload")
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "config_invalid" and "not a regular file" in err["message"]
